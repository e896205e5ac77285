package prosodytest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Ejabberdctl is the path of Debian's ejabberd control script.
const Ejabberdctl = "/usr/sbin/ejabberdctl"

// RequireEjabberd skips the test (fails it with CI=true) when ejabberd is
// missing or cannot be run: Debian's ejabberdctl runs the server as the
// ejabberd user and must be called as root or as that user.
func RequireEjabberd(tb testing.TB) {
	tb.Helper()
	why := ""
	if _, err := os.Stat(Ejabberdctl); err != nil {
		why = Ejabberdctl + " not found (apt-get install -y ejabberd)"
	} else if u, err := user.Current(); err != nil || (u.Uid != "0" && u.Username != "ejabberd") {
		why = "ejabberdctl needs root or the ejabberd user"
	}
	if why != "" {
		unavailable(tb, "ejabberd", why)
	}
}

// StartEjabberd is Start for Debian's ejabberd: the same accounts, contacts
// and modules (PEP, carbons, MAM archiving everything, offline storage,
// ping), c2s with STARTTLS on a free loopback port, an Erlang node of its
// own with distribution and epmd on the loopback interface, and the
// server's defaults everywhere else, so that tests meet ejabberd as users
// do. The server is stopped and its directory removed in t.Cleanup.
func StartEjabberd(t testing.TB, users ...User) *Server {
	t.Helper()
	RequireEjabberd(t)

	// The server runs as the ejabberd user: its directory cannot be one of
	// t.TempDir's, whose parents only root may enter.
	dir, err := os.MkdirTemp("", "ejabberdtest-")
	if err != nil {
		t.Fatalf("ejabberdtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	srv, port := newServer(t, dir, users)
	files := map[string]string{
		"ejabberd.yml":    ejabberdConfig(dir, port),
		"ejabberdctl.cfg": "ERL_EPMD_ADDRESS=127.0.0.1\nINET_DIST_INTERFACE=127.0.0.1\nEJABBERD_BYPASS_WARNINGS=true\n",
		"inetrc":          "{lookup,[\"file\",\"native\"]}.\n{host,{127,0,0,1}, [\"localhost\"]}.\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatalf("ejabberdtest: %v", err)
		}
	}
	for _, sub := range []string{"spool", "log"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatalf("ejabberdtest: %v", err)
		}
	}
	if err := chownToEjabberd(dir); err != nil {
		t.Fatalf("ejabberdtest: %v", err)
	}

	node := "omemotest" + strconv.Itoa(port) + "@localhost"
	ctl := func(args ...string) ([]byte, error) {
		base := []string{"--config-dir", dir, "--config", filepath.Join(dir, "ejabberd.yml"),
			"--ctl-config", filepath.Join(dir, "ejabberdctl.cfg"), "--spool", filepath.Join(dir, "spool"),
			"--logs", filepath.Join(dir, "log"), "--node", node}
		cmd := exec.Command(Ejabberdctl, append(base, args...)...)
		cmd.Dir = dir
		return cmd.CombinedOutput()
	}
	if out, err := ctl("start"); err != nil {
		t.Fatalf("ejabberdtest: start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			srv.ejabberdLogTail(t)
		}
		if out, err := ctl("stop"); err != nil {
			t.Logf("ejabberdtest: stop: %v\n%s", err, out)
		}
		_, _ = ctl("stopped")
	})
	if out, err := ctl("started"); err != nil {
		t.Fatalf("ejabberdtest: ejabberd did not start: %v\n%s", err, out)
	}
	if err := waitListening(srv.Addr, 20*time.Second, nil); err != nil {
		t.Fatalf("ejabberdtest: ejabberd: %v", err)
	}

	for _, name := range srv.sortedUsers() {
		u := srv.users[name]
		if out, err := ctl("register", u.Name, Domain, u.Password); err != nil {
			t.Fatalf("ejabberdtest: register %s: %v\n%s", u.Name, err, out)
		}
	}
	for _, name := range srv.sortedUsers() {
		for _, c := range srv.users[name].Contacts {
			if _, ok := srv.users[c]; !ok || c == name {
				t.Fatalf("ejabberdtest: user %q: invalid contact %q", name, c)
			}
			for _, pair := range [][2]string{{name, c}, {c, name}} {
				out, err := ctl("add_rosteritem", pair[0], Domain, pair[1], Domain, pair[1], "", "both")
				if err != nil {
					t.Fatalf("ejabberdtest: roster %s→%s: %v\n%s", pair[0], pair[1], err, out)
				}
			}
		}
	}
	return srv
}

// chownToEjabberd hands dir and everything in it to the ejabberd user,
// when running as root.
func chownToEjabberd(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("ejabberd")
	if err != nil {
		return err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return err
	}
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

func (s *Server) ejabberdLogTail(t testing.TB) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "log", "ejabberd.log"))
	if errors.Is(err, fs.ErrNotExist) || err != nil {
		return
	}
	const max = 16 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	t.Logf("ejabberd log (tail):\n%s", b)
}

// ejabberdConfig is a minimal ejabberd.yml. PEP nodes keep ejabberd's
// defaults (one item unless configured), and mod_pubsub its own
// publish-options support, on purpose: clients meet them in the wild.
func ejabberdConfig(dir string, port int) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, `# Generated by mellium.im/omemo/internal/prosodytest.
loglevel: info
hosts:
  - %s
certfiles:
  - %s
  - %s
listen:
  -
    port: %d
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    starttls: true
    starttls_required: true
auth_method: internal
auth_password_format: scram
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  pubsub_createnode:
    allow: local
shaper_rules:
  max_user_offline_messages:
    1000: all
modules:
  mod_admin_extra: {}
  mod_caps: {}
  mod_carboncopy: {}
  mod_disco: {}
  mod_mam:
    default: always
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_ping: {}
  mod_muc:
    host: %s
    access: all
    access_create: local
    access_persistent: local
    access_mam: all
    default_room_options:
      anonymous: false
      persistent: true
      mam: true
  mod_muc_admin: {}
  mod_pubsub:
    access_createnode: pubsub_createnode
    plugins:
      - flat
      - pep
  mod_roster: {}
  mod_stream_mgmt: {}
`, Domain, q(filepath.Join(dir, Domain+".crt")), q(filepath.Join(dir, Domain+".key")), port, q(MUCDomain))
	return b.String()
}
