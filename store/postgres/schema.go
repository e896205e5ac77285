package postgres

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"mellium.im/omemo/store"
)

// SchemaVersion is the version of the database schema written by this
// package. Open refuses a database with a larger version (store.ErrVersion)
// and migrates one with a smaller version.
const SchemaVersion = 1

// migrations[v] upgrades the schema from version v to v+1; version 0 is an
// empty database. Each runs in the transaction that records the new version,
// under the migration lock, so an interrupted upgrade leaves the old version
// in place and two processes starting together run it once. To change the
// schema, append a migration (never edit a released one) and increment
// SchemaVersion.
var migrations = []string{
	0: `
CREATE TABLE omemo_schema_version (
	version    integer NOT NULL,
	-- The class (first key) of the accounts' advisory locks, random per
	-- schema so that several OMEMO schemas in one database, or another
	-- application's two-key advisory locks, do not get in each other's way.
	lock_class integer NOT NULL DEFAULT floor(random() * 2147483647)::integer
);
INSERT INTO omemo_schema_version (version) VALUES (0);

CREATE TABLE omemo_accounts (
	id    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name  text COLLATE "C" NOT NULL UNIQUE,
	-- Incremented by every holder that takes the account's lease; a commit
	-- checks it under a row lock (fencing, see omemo_fence).
	epoch bigint NOT NULL DEFAULT 0
);

-- The key-value pairs of every account. There is no foreign key to
-- omemo_accounts: only this package writes the table, and the check would
-- cost a lookup per written row.
CREATE TABLE omemo_kv (
	account_id integer NOT NULL,
	key        bytea NOT NULL,
	value      bytea NOT NULL
);
-- Values are mostly key material and ciphertext: do not try to compress
-- them when they are moved out of line.
ALTER TABLE omemo_kv ALTER COLUMN value SET STORAGE EXTERNAL;
-- A B-tree entry must fit in a third of a page, and keys may be 32 KiB: the
-- index holds the first 1024 bytes of a key (bytea compares bytewise, so
-- its order is the keys' lexicographic byte order) and, for longer keys, a
-- SHA-256 of the whole key that makes the entry unique.
CREATE UNIQUE INDEX omemo_kv_key ON omemo_kv (account_id, ` + paren(headKey) + `, ` + paren(tailKey) + `);

-- omemo_fence aborts the transaction that calls it unless the caller still
-- holds the account's lease: the epoch it took the lease with is current
-- (FOR SHARE blocks a new holder's epoch increment until this transaction
-- ends, so no write can land after a new holder has read the state) and
-- the connection holding the advisory lock is still alive.
CREATE FUNCTION omemo_fence(acct integer, ep bigint, lease_pid integer, lease_start timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM 1 FROM omemo_accounts WHERE id = acct AND epoch = ep FOR SHARE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'omemo: the account lease was taken over' USING ERRCODE = '` + codeTakenOver + `';
	END IF;
	PERFORM 1 FROM pg_stat_get_activity(lease_pid) AS a WHERE a.backend_start = lease_start;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'omemo: the connection holding the account lease is gone' USING ERRCODE = '` + codeLeaseGone + `';
	END IF;
END
$$;
`,
}

// SQLSTATE codes raised by omemo_fence.
const (
	codeTakenOver = "OML01"
	codeLeaseGone = "OML02"
)

// headLen is the length of the key prefix held in the index.
const headLen = 1024

// head and tail are the SQL expressions of the index columns for a key
// expression x; queries must spell them exactly like this for the planner
// to match the index.
func head(x string) string { return "substring(" + x + " FROM 1 FOR 1024)" }
func tail(x string) string {
	return "(CASE WHEN octet_length(" + x + ") > 1024 THEN sha256(" + x + ") ELSE ''::bytea END)"
}

func paren(s string) string { return "(" + s + ")" }

var (
	headKey = head("key")
	tailKey = tail("key")
)

// tailOf is tail computed in Go.
func tailOf(key string) []byte {
	if len(key) <= headLen {
		return []byte{}
	}
	h := sha256.Sum256([]byte(key))
	return h[:]
}

func headOf(key string) []byte {
	return bytesOf(key[:min(len(key), headLen)])
}

// bytesOf converts s for a bytea parameter: never nil, which pgx would send
// as NULL.
func bytesOf(s string) []byte {
	if s == "" {
		return []byte{}
	}
	return []byte(s)
}

// Queries. $1 is always the account id.
var (
	sqlGet = `SELECT value FROM omemo_kv WHERE account_id = $1 AND ` +
		headKey + ` = ` + head("$2::bytea") + ` AND ` + tailKey + ` = ` + tail("$2::bytea") + ` AND key = $2`

	// A page of a scan: the keys from the index position ($2, $3) on
	// that are >= $4 (and < $5), in index order. Within one head, index
	// order is by hash, not by key: Scan sorts such runs itself.
	scanFrom = `SELECT key, value FROM omemo_kv WHERE account_id = $1 AND (` +
		headKey + `, ` + tailKey + `) >= ($2::bytea, $3::bytea) AND key >= $4::bytea`
	scanOrder = ` ORDER BY ` + headKey + `, ` + tailKey
	sqlScan   = scanFrom + scanOrder + ` LIMIT $5`
	sqlScanTo = scanFrom + ` AND ` + headKey + ` <= ` + head("$5::bytea") + ` AND key < $5` + scanOrder + ` LIMIT $6`

	sqlDeleteAll   = `DELETE FROM omemo_kv WHERE account_id = $1`
	sqlDeleteFrom  = `DELETE FROM omemo_kv WHERE account_id = $1 AND ` + headKey + ` >= ` + head("$2::bytea") + ` AND key >= $2`
	sqlDeleteRange = sqlDeleteFrom + ` AND ` + headKey + ` <= ` + head("$3::bytea") + ` AND key < $3`
	sqlDeleteKeys  = `DELETE FROM omemo_kv AS t USING unnest($2::bytea[]) AS d(k) WHERE t.account_id = $1 AND ` +
		head("t.key") + ` = ` + head("d.k") + ` AND ` + tail("t.key") + ` = ` + tail("d.k") + ` AND t.key = d.k`
	sqlUpsert = `INSERT INTO omemo_kv (account_id, key, value) SELECT $1, u.k, u.v FROM unnest($2::bytea[], $3::bytea[]) AS u(k, v) ` +
		`ON CONFLICT (account_id, ` + paren(headKey) + `, ` + paren(tailKey) + `) DO UPDATE SET value = EXCLUDED.value`

	sqlFence = `SELECT omemo_fence($1, $2, $3, $4)`

	// The id of an account, created if needed. The INSERT only runs (and
	// only draws from the identity sequence) for a new name.
	sqlAccountID = `WITH sel AS (SELECT id FROM omemo_accounts WHERE name = $1),
ins AS (INSERT INTO omemo_accounts (name) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM sel)
	ON CONFLICT (name) DO NOTHING RETURNING id)
SELECT id FROM sel UNION ALL SELECT id FROM ins`
	sqlBumpEpoch = `UPDATE omemo_accounts SET epoch = epoch + 1 WHERE id = $1 RETURNING epoch`

	sqlTryLock = `SELECT pg_try_advisory_lock($1::integer, $2::integer)`
	sqlUnlock  = `SELECT pg_advisory_unlock($1::integer, $2::integer)`
	sqlWhoAmI  = `SELECT pg_backend_pid(), (SELECT backend_start FROM pg_stat_get_activity(pg_backend_pid()))`

	// The migration lock: one 64-bit advisory key ("OMEMOSQL"), taken for
	// the migration transaction only.
	sqlMigrationLock = `SELECT pg_advisory_xact_lock(5714299700548686156)`
)

// migrate brings the schema to SchemaVersion (creating it in an empty
// database) and returns the schema's lock class. It runs in one
// transaction under an advisory lock, so that processes starting together
// do not race; a schema that is already current is only read.
func migrate(ctx context.Context, conn *pgx.Conn) (lockClass int32, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := tx.Exec(ctx, sqlMigrationLock); err != nil {
		return 0, err
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('omemo_schema_version') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, err
	}
	version := 0
	if exists {
		if err := tx.QueryRow(ctx, `SELECT version FROM omemo_schema_version`).Scan(&version); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return 0, fmt.Errorf("%w: omemo_schema_version is empty", store.ErrCorrupt)
			}
			return 0, err
		}
	}
	switch {
	case version > SchemaVersion:
		return 0, fmt.Errorf("%w: database schema has version %d, this package supports up to %d", store.ErrVersion, version, SchemaVersion)
	case version < 0:
		return 0, fmt.Errorf("%w: schema version %d", store.ErrCorrupt, version)
	}
	for v := version; v < SchemaVersion; v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return 0, fmt.Errorf("migration from version %d to %d: %w", v, v+1, err)
		}
	}
	if version < SchemaVersion {
		if _, err := tx.Exec(ctx, `UPDATE omemo_schema_version SET version = $1`, SchemaVersion); err != nil {
			return 0, err
		}
	}
	if err := tx.QueryRow(ctx, `SELECT lock_class FROM omemo_schema_version`).Scan(&lockClass); err != nil {
		return 0, err
	}
	return lockClass, tx.Commit(ctx)
}
