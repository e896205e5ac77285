package pgtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"mellium.im/omemo/internal/pgtest"
)

func TestStart(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	dsn := srv.CreateDatabase(t)
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var version int
	if err := c.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 150000 {
		t.Errorf("server version %d, want PostgreSQL 15 or later", version)
	}
	var fsync, addr string
	if err := c.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('listen_addresses')").Scan(&fsync, &addr); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" || addr != "127.0.0.1" {
		t.Errorf("fsync=%s listen_addresses=%s, want on and 127.0.0.1", fsync, addr)
	}
	// Databases are separate.
	other := srv.CreateDatabase(t)
	if other == dsn {
		t.Fatalf("CreateDatabase returned %s twice", dsn)
	}
}
