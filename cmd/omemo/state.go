package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
)

// storeEnv is the environment variable read when -store is not given.
const storeEnv = "OMEMO_STORE"

// pgLockTimeout is how long a command waits for an account of a PostgreSQL
// store that another process holds (postgres.Options.LockTimeout) before
// it fails with "in use". A holder that ends cleanly releases the account
// at once, and so does one that crashes (its connections close), so a
// short wait is enough to cover a listener that is being restarted.
const pgLockTimeout = 3 * time.Second

// state is the OMEMO state of the account (the private keys of this device,
// its sessions and inbox): a bbolt file (-store FILE, or the default file),
// or the account's rows in a PostgreSQL database (-store postgres://…).
type state struct {
	// st is the open store; nil for a state file that does not exist
	// yet, which create makes after the login.
	st store.Store

	// path is the state file ("" for PostgreSQL).
	path string

	// db is the PostgreSQL database (nil for a file); where names it
	// without its password, for messages, and secrets are the passwords
	// that the DSN holds or implies, which no message may show.
	db      *postgres.DB
	where   string
	secrets []string
	// fresh is set when the account had no state in the database: this
	// is a new device.
	fresh bool
}

// isPostgres reports whether the -store value s is a PostgreSQL URL
// (postgres:// or postgresql://, in any case).
func isPostgres(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	return ok && (strings.EqualFold(scheme, "postgres") || strings.EqualFold(scheme, "postgresql"))
}

// openExisting opens the account's state before connecting: an existing
// state file, or the account in the PostgreSQL database (whose lease it
// takes, so that an account in use fails at once, without a login). A
// state file that does not exist is only checked to be creatable: create
// makes it once the login succeeded.
func openExisting(ctx context.Context, g *globals) (*state, error) {
	if g.password == "" {
		return nil, fmt.Errorf("no password: use -password or the environment variable %s", passwordEnv)
	}
	if isPostgres(g.store) {
		return openPostgres(ctx, g)
	}
	var err error
	path := g.store
	if path == "" {
		path, err = store.DefaultPath(g.account.Bare().String())
		if err != nil {
			return nil, fmt.Errorf("state file: %w", err)
		}
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := checkCreatable(path); err != nil {
			return nil, err
		}
		return &state{path: path}, nil
	}
	// Any other error of Stat (permissions, a file in place of a
	// directory…) is reported as opening it reports it.
	st, err := openState(path)
	if err != nil {
		return nil, err
	}
	return &state{st: st, path: path}, nil
}

// create makes the state that openExisting found missing, after the login
// succeeded: a new state file. An account of a PostgreSQL database is open
// already; a new one holds nothing until the plugin writes its keys.
func (s *state) create(out *output) error {
	if s.db != nil {
		if s.fresh {
			out.progress("creating the state of the account in the database %s (a new device)…", s.where)
		}
		return nil
	}
	if s.st != nil {
		return nil
	}
	out.progress("creating the state file %s (a new device)…", s.path)
	st, err := openState(s.path)
	if err != nil {
		return err
	}
	s.st = st
	return nil
}

// close closes the store (releasing the account) and the database.
func (s *state) close() error {
	var err error
	if s.st != nil {
		err = s.st.Close()
	}
	if s.db != nil {
		if cerr := s.db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return &dbError{Op: "closing the state database " + s.where, DB: s.where, Err: err, secrets: s.secrets}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("closing state file: %w", err)
	}
	return nil
}

// openPostgres opens the PostgreSQL database of -store and the account
// (its bare JID) in it, waiting up to pgLockTimeout for another process
// that holds it.
func openPostgres(ctx context.Context, g *globals) (*state, error) {
	dsn := normalizeDSN(g.store)
	s := &state{where: redactDSN(dsn), secrets: dsnSecrets(dsn)}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	db, err := postgres.Open(octx, dsn, &postgres.Options{LockTimeout: pgLockTimeout})
	if err != nil {
		op := "opening the state database " + s.where
		if errors.Is(err, store.ErrVersion) {
			op = "the state database " + s.where + " was written by a newer version of omemo"
		}
		return nil, &dbError{Op: op, DB: s.where, Err: err, secrets: s.secrets}
	}
	s.db = db
	name := g.account.Bare().String()
	st, err := db.Account(octx, name)
	if err != nil {
		_ = db.Close()
		op := fmt.Sprintf("opening the account %s in the state database %s", name, s.where)
		if errors.Is(err, store.ErrLocked) {
			op = fmt.Sprintf("account %s in the state database %s is in use by another omemo process (waited %v)", name, s.where, pgLockTimeout)
		}
		return nil, &dbError{Op: op, DB: s.where, Err: err, secrets: s.secrets}
	}
	s.st = st
	// An account without any key is new: nothing was ever written.
	s.fresh = true
	errStop := errors.New("stop")
	err = st.View(octx, func(tx store.Tx) error {
		return tx.Scan("", func(string, []byte) error {
			s.fresh = false
			return errStop
		})
	})
	if err != nil && !errors.Is(err, errStop) {
		_ = s.close()
		return nil, &dbError{Op: fmt.Sprintf("reading the account %s in the state database %s", name, s.where), DB: s.where, Err: err, secrets: s.secrets}
	}
	return s, nil
}

// normalizeDSN lower-cases the scheme of a PostgreSQL URL (the driver only
// knows postgres:// and postgresql://).
func normalizeDSN(dsn string) string {
	scheme, rest, _ := strings.Cut(dsn, "://")
	return strings.ToLower(scheme) + "://" + rest
}

// redacted replaces passwords in messages.
const redacted = "xxxxx"

// redactDSN returns the PostgreSQL URL dsn without its password (in the
// user information or as a password parameter), for messages. It does
// not rely on the URL being valid: the user information is what precedes
// the last "@" before the path or the parameters.
func redactDSN(dsn string) string {
	scheme, rest, _ := strings.Cut(dsn, "://")
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		if user, _, ok := strings.Cut(authority[:at], ":"); ok {
			authority = user + ":" + redacted + authority[at:]
		}
	}
	path, query, hasQuery := strings.Cut(tail, "?")
	if !hasQuery {
		return scheme + "://" + authority + path
	}
	frag := ""
	if i := strings.IndexByte(query, '#'); i >= 0 {
		query, frag = query[:i], query[i:]
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		name, _, _ := strings.Cut(p, "=")
		n, err := url.QueryUnescape(name)
		if err != nil || strings.Contains(strings.ToLower(n), "password") {
			params[i] = name + "=" + redacted
		}
	}
	return scheme + "://" + authority + path + "?" + strings.Join(params, "&") + frag
}

// dsnSecrets returns the passwords that dsn holds (as written and
// decoded) or that the driver takes from elsewhere (PGPASSWORD, a
// password file), so that they can be removed from any message.
func dsnSecrets(dsn string) []string {
	var out []string
	add := func(s string) {
		if s == "" {
			return
		}
		for _, x := range out {
			if x == s {
				return
			}
		}
		out = append(out, s)
		if u, err := url.QueryUnescape(s); err == nil && u != s {
			out = append(out, u)
		}
		if u, err := url.PathUnescape(s); err == nil && u != s {
			out = append(out, u)
		}
	}
	_, rest, _ := strings.Cut(dsn, "://")
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		if _, pw, ok := strings.Cut(authority[:at], ":"); ok {
			add(pw)
		}
	}
	if _, query, ok := strings.Cut(tail, "?"); ok {
		for _, p := range strings.Split(query, "&") {
			name, v, _ := strings.Cut(p, "=")
			if n, err := url.QueryUnescape(name); err != nil || strings.Contains(strings.ToLower(n), "password") {
				add(v)
			}
		}
	}
	if cfg, err := pgconn.ParseConfig(dsn); err == nil {
		add(cfg.Password)
	}
	return out
}

// scrub replaces every secret in msg.
func scrub(msg string, secrets []string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, redacted)
		}
	}
	return msg
}

// dbError is an error of the PostgreSQL state database. Its text names the
// database without its password, and never shows a password of the DSN,
// even where the driver's own message would.
type dbError struct {
	// Op is what failed, naming the database by DB.
	Op string
	// DB is the database's URL without its password.
	DB string
	// Err is the cause.
	Err     error
	secrets []string
}

func (e *dbError) Error() string {
	return scrub(e.Op+": "+e.Err.Error(), e.secrets)
}

func (e *dbError) Unwrap() error { return e.Err }
