// Package prosodytest starts a throw-away Prosody server for integration
// tests (and, with StartEjabberd, an ejabberd one behind the same Server
// type).
//
// Start writes a generated configuration, a self-signed certificate and the
// test accounts into a fresh temporary directory, launches Debian's
// /usr/bin/prosody in the foreground on 127.0.0.1 (c2s on a free port, no
// s2s, no HTTP), waits until the port accepts connections and stops the
// server again in t.Cleanup.
// Nothing is resolved through DNS: the server's only virtual host is
// "localhost" and Dial connects to the loopback address directly.
//
// The server loads the modules an OMEMO client depends on: roster, saslauth,
// tls, disco, pep (with a large pep_max_items), carbons, mam (everything
// archived, nothing expires), offline and ping.
//
// StartWebSocket starts the same server with, in addition, HTTP on another
// free loopback port and XMPP over WebSocket (RFC 7395) at WebSocketURL, for
// browser clients; the WebSocket connection counts as encrypted although it
// is plain HTTP on the loopback interface.
//
// StartWithUpload starts the same server with, in addition, HTTP File Upload
// (XEP-0363, mod_http_file_share) over HTTPS on another free loopback port,
// at https://localhost:<port>/file_share/ with the test certificate; the
// server's HTTPClient trusts that certificate.
//
// When prosody is not installed the test is skipped, unless the environment
// variable CI is "true", in which case it fails, so that a green CI run can
// never hide a missing dependency (install it with `apt-get install -y
// prosody`).
//
// The approach (generated config, loopback port, accounts written into the
// server's storage before it starts) follows the integration harness of
// mellium.im/xmpp; the code is our own.
package prosodytest // import "mellium.im/omemo/internal/prosodytest"

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

// Paths of the Debian binaries.
const (
	Prosody    = "/usr/bin/prosody"
	Prosodyctl = "/usr/bin/prosodyctl"
)

// Domain is the only virtual host of the test server.
const Domain = "localhost"

// MUCDomain is the group chat (XEP-0045) service of a Start server: rooms
// are non-anonymous and persistent by default and archived (muc_mam).
const MUCDomain = "conference." + Domain

// UploadDomain is the HTTP File Upload (XEP-0363) service of a
// StartWithUpload server.
const UploadDomain = "upload." + Domain

// UploadMaxSize is the max-file-size of the upload service of a
// StartWithUpload server (http_file_share_size_limit), in bytes.
const UploadMaxSize = 300 << 20

// PEPMaxItems is the pep_max_items setting of the test server (the largest
// pubsub#max_items a PEP node may be configured with; "max" means this).
const PEPMaxItems = 10000

// User is an account created on the test server before it starts.
type User struct {
	// Name is the localpart: lower-case ASCII letters and digits only.
	Name string
	// Password is the account password; "" means "password".
	Password string
	// Contacts are the names of other users this user has a mutual
	// ("both") presence subscription with.
	// The relationship is made symmetric automatically.
	Contacts []string
}

// Server is a running Prosody test server.
type Server struct {
	// Addr is the c2s address, "127.0.0.1:<port>".
	Addr string
	// Domain is the virtual host (always "localhost").
	Domain string
	// Dir is the temporary directory with the config, data and log.
	Dir string
	// WebSocketURL is the XMPP-over-WebSocket endpoint,
	// "ws://127.0.0.1:<port>/xmpp-websocket", of a server started with
	// StartWebSocket; "" otherwise.
	WebSocketURL string
	// UploadURL is the base of the HTTP File Upload URLs,
	// "https://localhost:<port>/file_share/", of a server started with
	// StartWithUpload; "" otherwise.
	UploadURL string

	users     map[string]User
	cfg       string
	httpPorts []int

	procMu sync.Mutex
	cmd    *exec.Cmd     // the running Prosody, nil when stopped
	exited chan struct{} // closed when cmd exited
}

var validName = regexp.MustCompile(`^[a-z0-9]+$`)

// Require skips the test (fails it with CI=true) when prosody is missing.
func Require(tb testing.TB) {
	tb.Helper()
	for _, p := range []string{Prosody, Prosodyctl} {
		if _, err := os.Stat(p); err != nil {
			unavailable(tb, "prosody", p+" not found (apt-get install -y prosody)")
		}
	}
}

// unavailable skips the test because server cannot run, or fails it when
// CI is "true", so that a green CI run never hides a missing dependency.
func unavailable(tb testing.TB, server, why string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s unavailable in CI: %s", server, why)
	}
	tb.Skipf("%s unavailable: %s (CI=true turns this into a failure)", server, why)
}

// Unavailable is the same rule for other dependencies of integration tests
// (a browser, a runtime, installed packages): it skips the test, or fails it
// when CI is "true", saying what is missing and why.
func Unavailable(tb testing.TB, what, why string) {
	tb.Helper()
	unavailable(tb, what, why)
}

// Start creates the users, starts Prosody and returns once its c2s port
// accepts connections.
// The server is stopped (SIGTERM, then SIGKILL after 0.5 s) and its directory
// removed in t.Cleanup.
// On test failure the tail of the server log is written to the test log.
func Start(t testing.TB, users ...User) *Server {
	t.Helper()
	return start(t, false, false, users)
}

// StartWebSocket is Start with XMPP over WebSocket (RFC 7395) for browser
// clients: mod_websocket (and mod_http, which it needs) on another free port
// of 127.0.0.1, at srv.WebSocketURL. The endpoint is plain HTTP but counts
// as encrypted (consider_websocket_secure), as behind a TLS-terminating
// proxy, so that c2s_require_encryption holds for TCP clients while a
// browser on the same machine can log in without a certificate it would have
// to trust; it accepts any Origin (Prosody 0.12 checks none), and HTTP
// requests for 127.0.0.1 go to the virtual host "localhost". Start's servers
// have no HTTP at all.
func StartWebSocket(t testing.TB, users ...User) *Server {
	t.Helper()
	return start(t, true, false, users)
}

// StartWithUpload is Start with HTTP File Upload (XEP-0363): Prosody 0.12's
// mod_http_file_share as the component UploadDomain (listed in the server's
// disco#items, max-file-size UploadMaxSize, no daily quota to speak of,
// files never expire), served over HTTPS only, on another free port of
// 127.0.0.1, with the test certificate. The slot URLs are
// https://localhost:<port>/file_share/…: "localhost" is the name the
// certificate is for and resolves to 127.0.0.1; srv.UploadURL is the base.
// srv.HTTPClient trusts the test certificate (and nothing else).
// The server runs Prosody's select network backend: with the default epoll
// one, HTTP uploads crawl at about 6 MB/s in our test environment.
func StartWithUpload(t testing.TB, users ...User) *Server {
	t.Helper()
	return start(t, false, true, users)
}

func start(t testing.TB, websocket, upload bool, users []User) *Server {
	t.Helper()
	Require(t)

	dir := t.TempDir()
	srv, port := newServer(t, dir, users)
	httpPort, httpsPort := 0, 0
	if websocket {
		var err error
		if httpPort, err = freePort(); err != nil {
			t.Fatalf("prosodytest: %v", err)
		}
		srv.WebSocketURL = "ws://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)) + "/xmpp-websocket"
	}
	if upload {
		var err error
		if httpsPort, err = freePort(); err != nil {
			t.Fatalf("prosodytest: %v", err)
		}
		srv.UploadURL = "https://" + net.JoinHostPort(Domain, strconv.Itoa(httpsPort)) + "/file_share/"
	}
	srv.cfg = filepath.Join(dir, "prosody.cfg.lua")
	if err := os.WriteFile(srv.cfg, []byte(config(dir, port, httpPort, httpsPort)), 0o600); err != nil {
		t.Fatalf("prosodytest: %v", err)
	}

	// Accounts and rosters go into the internal storage before the server
	// starts, so there is no window in which a test could log in too early.
	if err := srv.writeAccounts(); err != nil {
		t.Fatalf("prosodytest: %v", err)
	}
	if err := srv.writeRosters(); err != nil {
		t.Fatalf("prosodytest: %v", err)
	}

	srv.httpPorts = []int{httpPort, httpsPort}
	if err := srv.launch(); err != nil {
		t.Fatalf("prosodytest: %v", err)
	}
	t.Cleanup(func() {
		srv.stop(syscall.SIGTERM, 500*time.Millisecond)
		if t.Failed() {
			srv.logTail(t)
		}
	})
	return srv
}

// launch starts the Prosody process and waits until it listens.
func (s *Server) launch() error {
	cmd := exec.Command(Prosody, "--config", s.cfg, "-F")
	cmd.Dir = s.Dir
	var console bytes.Buffer
	cmd.Stdout = &console
	cmd.Stderr = &console
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start prosody: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.procMu.Lock()
	s.cmd, s.exited = cmd, exited
	s.procMu.Unlock()
	if err := waitListening(s.Addr, 10*time.Second, exited); err != nil {
		return fmt.Errorf("prosody: %w\n%s", err, console.String())
	}
	for _, p := range s.httpPorts {
		if p == 0 {
			continue
		}
		// The HTTP listener opens with the c2s one; wait for it too.
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		if err := waitListening(addr, 5*time.Second, exited); err != nil {
			return fmt.Errorf("prosody http: %w\n%s", err, console.String())
		}
	}
	return nil
}

// stop sends sig to the running Prosody and waits up to grace for it to
// exit, then kills it. It does nothing when Prosody is not running.
func (s *Server) stop(sig os.Signal, grace time.Duration) {
	s.procMu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil
	s.procMu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(grace):
		// Prosody's graceful shutdown can wait for a network-loop
		// tick of up to a second.
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Stop stops Prosody gracefully (SIGTERM: it closes every stream with a
// system-shutdown error), keeping its data (accounts, offline messages,
// archives, PEP nodes) for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop(syscall.SIGTERM, 5*time.Second)
}

// Kill stops Prosody with SIGKILL: the connections break without a closing
// stream. Its data stays for Restart (what it had not written is lost, as
// in a real crash).
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.stop(syscall.SIGKILL, 5*time.Second)
}

// Restart starts Prosody again after Stop or Kill, on the same ports and
// data, and returns once it listens.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop(syscall.SIGTERM, 5*time.Second)
	if err := s.launch(); err != nil {
		t.Fatalf("prosodytest: restart: %v", err)
	}
}

// newServer validates the users, writes the certificate into dir and picks
// the c2s port.
func newServer(t testing.TB, dir string, users []User) (*Server, int) {
	t.Helper()
	srv := &Server{Domain: Domain, Dir: dir, users: make(map[string]User)}
	for _, u := range users {
		if !validName.MatchString(u.Name) {
			t.Fatalf("prosodytest: invalid user name %q", u.Name)
		}
		if u.Password == "" {
			u.Password = "password"
		}
		if _, dup := srv.users[u.Name]; dup {
			t.Fatalf("prosodytest: duplicate user %q", u.Name)
		}
		srv.users[u.Name] = u
	}
	if err := writeCert(dir, Domain); err != nil {
		t.Fatalf("prosodytest: certificate: %v", err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("prosodytest: %v", err)
	}
	srv.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return srv, port
}

// waitListening waits until addr accepts connections, for at most d or
// until exited (which may be nil) is closed.
func waitListening(addr string, d time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp4", addr, 200*time.Millisecond)
		if err == nil {
			return c.Close()
		}
		select {
		case <-exited:
			return errors.New("exited during start-up")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after %v: %w", addr, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// JID returns the bare JID of the named user.
func (s *Server) JID(name string) jid.JID {
	return jid.MustParse(name + "@" + s.Domain)
}

// Password returns the password of the named user.
func (s *Server) Password(name string) string {
	return s.users[name].Password
}

// CertPool returns a pool with the server's self-signed test certificate
// (for "localhost"), the one its c2s STARTTLS and HTTPS present.
func (s *Server) CertPool() (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, Domain+".crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("prosodytest: no certificate in " + Domain + ".crt")
	}
	return pool, nil
}

// HTTPClient returns an HTTP client for the server's HTTPS (see
// StartWithUpload): it trusts the test certificate and nothing else,
// requires TLS 1.2, uses no proxy and has time limits on connecting and on
// waiting for response headers, but none on the whole exchange.
func (s *Server) HTTPClient(t testing.TB) *http.Client {
	t.Helper()
	pool, err := s.CertPool()
	if err != nil {
		t.Fatalf("prosodytest: %v", err)
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// UploadService returns the JID of the HTTP File Upload service of a
// StartWithUpload server.
func (s *Server) UploadService() jid.JID {
	return jid.MustParse(UploadDomain)
}

// DialSession connects the named user: TCP to Addr, STARTTLS (the test
// certificate is not verified), SASL (SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN)
// and resource binding.
// The server picks the resource; the full JID is s.LocalAddr().
// The caller must run Serve and Close the session.
func (s *Server) DialSession(ctx context.Context, name string) (*xmpp.Session, error) {
	u, ok := s.users[name]
	if !ok {
		return nil, fmt.Errorf("prosodytest: unknown user %q", name)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", s.Addr)
	if err != nil {
		return nil, err
	}
	sess, err := xmpp.NewClientSession(ctx, s.JID(name), conn,
		xmpp.StartTLS(&tls.Config{
			ServerName: s.Domain,
			// #nosec G402 -- loopback test server with a throw-away certificate.
			InsecureSkipVerify: true,
			MinVersion:         tls.VersionTLS12,
		}),
		xmpp.SASL("", u.Password, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
		xmpp.BindResource(),
	)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return sess, nil
}

// Dial is DialSession for tests: it fails the test on error, runs
// sess.Serve(h) in a goroutine (h may be nil) and closes the session in
// t.Cleanup, waiting for Serve to return.
func (s *Server) Dial(t testing.TB, name string, h xmpp.Handler) *xmpp.Session {
	t.Helper()
	// The dial context is cancelled only after the session is closed:
	// mellium (v0.23.0) watches it in a goroutine that can still put a
	// deadline in the past on the connection after the call returned, which
	// would corrupt a TLS write in flight (setDeadline/setWriteDeadline in
	// session.go select between the two cancellations at random).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	sess, err := s.DialSession(ctx, name)
	if err != nil {
		cancel()
		t.Fatalf("prosodytest: dial %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sess.Serve(h)
	}()
	t.Cleanup(func() {
		defer cancel()
		_ = sess.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = sess.Conn().Close()
			<-done
		}
	})
	return sess
}

func (s *Server) sortedUsers() []string {
	names := make([]string, 0, len(s.users))
	for n := range s.users {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// writeAccounts stores the accounts in Prosody's internal storage
// (data/<host>/accounts/<user>.dat), byte for byte what `prosodyctl
// register` writes there with authentication = "internal_plain" (a test
// checks this against prosodyctl), without its Lua process per account:
// about 60 ms each, which adds up to half a minute for the hundreds of
// accounts of a gateway-sized test.
func (s *Server) writeAccounts() error {
	if len(s.users) == 0 {
		return nil
	}
	dir := filepath.Join(s.Dir, "data", Domain, "accounts")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, name := range s.sortedUsers() {
		if err := os.WriteFile(filepath.Join(dir, name+".dat"), accountData(s.users[name].Password), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// accountData is the storage file of an internal_plain account, as
// Prosody's util.serialization writes it.
func accountData(password string) []byte {
	return []byte("return {\n\t[\"password\"] = " + luaString(password) + ";\n};\n")
}

// luaString quotes s as Prosody's util.serialization does: a double-quoted
// Lua string in which quotes, backslashes, control characters and every
// byte from 127 up are escaped (named escapes where Lua has them, \ddd
// otherwise).
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\a':
			b.WriteString(`\a`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\v':
			b.WriteString(`\v`)
		case '\\', '"', '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			if c < 32 || c >= 127 {
				fmt.Fprintf(&b, "\\%03d", c)
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// writeRosters stores mutual subscriptions in Prosody's internal storage
// (data/<host>/roster/<user>.dat, a Lua table).
func (s *Server) writeRosters() error {
	contacts := make(map[string]map[string]bool)
	for _, u := range s.users {
		for _, c := range u.Contacts {
			if _, ok := s.users[c]; !ok || c == u.Name {
				return fmt.Errorf("user %q: invalid contact %q", u.Name, c)
			}
			for _, pair := range [][2]string{{u.Name, c}, {c, u.Name}} {
				if contacts[pair[0]] == nil {
					contacts[pair[0]] = make(map[string]bool)
				}
				contacts[pair[0]][pair[1]] = true
			}
		}
	}
	if len(contacts) == 0 {
		return nil
	}
	rosterDir := filepath.Join(s.Dir, "data", Domain, "roster")
	if err := os.MkdirAll(rosterDir, 0o700); err != nil {
		return err
	}
	for user, cs := range contacts {
		names := make([]string, 0, len(cs))
		for c := range cs {
			names = append(names, c)
		}
		sort.Strings(names)
		var b strings.Builder
		b.WriteString("return {\n\t[false] = { version = 1; pending = {}; };\n")
		for _, c := range names {
			fmt.Fprintf(&b, "\t[%q] = { subscription = \"both\"; groups = {}; };\n", c+"@"+Domain)
		}
		b.WriteString("};\n")
		if err := os.WriteFile(filepath.Join(rosterDir, user+".dat"), []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) logTail(t testing.TB) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "prosody.log"))
	if err != nil {
		return
	}
	const max = 16 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	t.Logf("prosody log (tail):\n%s", b)
}

// freePort asks the kernel for a free port.
// There is a small window in which another process could take it.
func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// config is the server configuration; httpPort 0 means no WebSocket
// (Start), httpsPort 0 no HTTP File Upload; both 0 no HTTP at all.
func config(dir string, port, httpPort, httpsPort int) string {
	q := strconv.Quote
	modules := `"roster"; "saslauth"; "tls"; "disco"; "pep"; "carbons"; "mam";
	"offline"; "ping";`
	disabled := `"s2s"; "http"; "admin_telnet"; "register"`
	web := ""
	if httpPort != 0 {
		modules += ` "websocket";`
		disabled = `"s2s"; "admin_telnet"; "register"`
		// No https: its default port would be opened too.
		web = `http_ports = { ` + strconv.Itoa(httpPort) + ` }
http_interfaces = { "127.0.0.1" }
https_ports = { }
http_default_host = ` + q(Domain) + `
consider_websocket_secure = true
`
	}
	upload := ""
	if httpsPort != 0 {
		disabled = `"s2s"; "admin_telnet"; "register"`
		// No plain http port: the default one would be opened too.
		web = `http_ports = { }
http_interfaces = { "127.0.0.1" }
https_ports = { ` + strconv.Itoa(httpsPort) + ` }
https_interfaces = { "127.0.0.1" }
-- server_select: with the default server_epoll, HTTP uploads to Prosody
-- 0.12 crawl at about 6 MB/s here (larger network_settings.read_size does
-- not help), which would hide the client's own throughput.
network_backend = "select"
`
		upload = `
-- HTTP File Upload on https://localhost:<port>/file_share/ ("localhost" is
-- the name of the test certificate).
Component "` + UploadDomain + `" "http_file_share"
	http_host = ` + q(Domain) + `
	http_external_url = ` + q("https://"+net.JoinHostPort(Domain, strconv.Itoa(httpsPort))+"/") + `
	http_file_share_size_limit = ` + strconv.Itoa(UploadMaxSize) + `
	http_file_share_daily_quota = ` + strconv.Itoa(1<<40) + `
	http_file_share_expires_after = -1
`
	}
	return `-- Generated by mellium.im/omemo/internal/prosodytest.
run_as_root = true
pidfile = ` + q(filepath.Join(dir, "prosody.pid")) + `
data_path = ` + q(filepath.Join(dir, "data")) + `
certificates = ` + q(dir) + `
interfaces = { "127.0.0.1" }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { ` + strconv.Itoa(port) + ` }
use_ipv6 = false
modules_enabled = {
	` + modules + `
}
modules_disabled = { ` + disabled + ` }
` + web + `allow_registration = false
c2s_require_encryption = true
authentication = "internal_plain"
storage = "internal"
pep_max_items = ` + strconv.Itoa(PEPMaxItems) + `
archive_expires_after = "never"
default_archive_policy = true
log = {
	{ levels = { min = "warn" }, to = "console" };
	{ levels = { min = "debug" }, to = "file", filename = ` + q(filepath.Join(dir, "prosody.log")) + ` };
}
VirtualHost "` + Domain + `"

-- Group chats: rooms show real JIDs and outlive their occupants by default
-- (OMEMO needs non-anonymous rooms), and archive their messages.
Component "` + MUCDomain + `" "muc"
	modules_enabled = { "muc_mam" }
	muc_room_default_public_jids = true
	muc_room_default_persistent = true
	muc_room_default_history_length = 0
	restrict_room_creation = false
` + upload
}

// writeCert writes <dir>/<host>.crt and <dir>/<host>.key, a self-signed
// ECDSA P-256 certificate that Prosody finds through `certificates`.
func writeCert(dir, host string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	k := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, host+".crt"), crt, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, host+".key"), k, 0o600)
}

// Archived reports whether the message archive (XEP-0313) of the named
// user holds a message with the stanza id id, reading Prosody's storage
// files: the ground truth of what the server accepted, whatever its
// clients saw.
func (s *Server) Archived(t testing.TB, name, id string) bool {
	t.Helper()
	dir := filepath.Join(s.Dir, "data", strings.ReplaceAll(url.PathEscape(s.Domain), ".", "%2e"), "archive")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("prosodytest: archive of %s: %v", name, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), name+".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatalf("prosodytest: archive of %s: %v", name, err)
		}
		if bytes.Contains(b, []byte(`"`+id+`"`)) || bytes.Contains(b, []byte(`'`+id+`'`)) {
			return true
		}
	}
	return false
}
