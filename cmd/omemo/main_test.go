package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/xmpp/jid"
)

// cli drives the built binary against one Prosody test server.
type cli struct {
	bin string
	srv *prosodytest.Server
}

// args returns the global flags of the named test account, with its own
// state file in dir.
func (c *cli) args(dir, name string, extra ...string) []string {
	a := []string{
		"-jid", name + "@" + c.srv.Domain,
		"-password", c.srv.Password(name),
		"-addr", c.srv.Addr,
		"-insecure-skip-verify",
		"-store", filepath.Join(dir, name+".db"),
	}
	return append(a, extra...)
}

// proc is a running omemo process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout, line by line
	stderr *syncBuffer
	done   chan struct{}
	code   int

	mu  sync.Mutex
	out []string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// start runs the binary in the background; it is killed at the end of the
// test if still running.
func (c *cli) start(t *testing.T, args ...string) *proc {
	t.Helper()
	return c.startIn(t, "", nil, args...)
}

// startIn is start with the working directory dir (if not "") and the
// environment variables env added.
func (c *cli) startIn(t *testing.T, dir string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(append(os.Environ(), "OMEMO_PASSWORD="), env...)
	cmd.Dir = dir
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 100), stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		<-readDone
		_ = cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit status.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("%v did not exit within %v; stderr:\n%s", p.cmd.Args[1:], timeout, p.stderr)
	}
	return p.code
}

func (p *proc) stdout() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.out...)
}

// next waits for the next stdout line.
func (p *proc) next(timeout time.Duration) string {
	p.t.Helper()
	select {
	case l := <-p.lines:
		return l
	case <-time.After(timeout):
		p.t.Fatalf("%v: no output line within %v; stderr:\n%s", p.cmd.Args[1:], timeout, p.stderr)
	}
	return ""
}

// run runs the binary to completion.
func (c *cli) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := c.start(t, args...)
	_ = p.stdin.Close()
	code = p.wait(40 * time.Second)
	return strings.Join(p.stdout(), "\n"), p.stderr.String(), code
}

// mustRun runs the binary and fails the test unless it exits with 0.
func (c *cli) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
	}
	if errOut != "" {
		t.Logf("%v: stderr:\n%s", args[len(args)-3:], errOut)
	}
	return out
}

func decode[T any](t *testing.T, line string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %q: %v", line, err)
	}
	return v
}

// fingerprint returns the device id and fingerprint of the account (and
// publishes its device on the first run).
func (c *cli) fingerprint(t *testing.T, dir, name string, extra ...string) fingerprintJSON {
	t.Helper()
	out := c.mustRun(t, c.args(dir, name, append(extra, "-json", "fingerprint")...)...)
	fp := decode[fingerprintJSON](t, out)
	if fp.Device == 0 || !fpRE.MatchString(fp.Fingerprint) || fp.JID != name+"@localhost" {
		t.Fatalf("fingerprint of %s: %+v", name, fp)
	}
	return fp
}

var fpRE = regexp.MustCompile(`^[0-9a-f]{8}( [0-9a-f]{8}){7}$`)

func TestCLI(t *testing.T) {
	began := time.Now()
	srv := prosodytest.Start(t,
		prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"},
		prosodytest.User{Name: "dave"},
		prosodytest.User{Name: "erin"}, prosodytest.User{Name: "frank"},
		prosodytest.User{Name: "gina"}, prosodytest.User{Name: "henry"},
		prosodytest.User{Name: "ivan"}, prosodytest.User{Name: "judy"},
		prosodytest.User{Name: "kate"}, prosodytest.User{Name: "leo"},
		prosodytest.User{Name: "mallory", Password: "right"},
		prosodytest.User{Name: "nina"}, prosodytest.User{Name: "oscar"},
		prosodytest.User{Name: "paul"}, prosodytest.User{Name: "quinn"},
		prosodytest.User{Name: "rose"}, prosodytest.User{Name: "sam"},
		prosodytest.User{Name: "tina"}, prosodytest.User{Name: "uma"},
		prosodytest.User{Name: "vera"},
	)
	c := &cli{bin: buildCLI(t), srv: srv}
	t.Logf("built after %v", time.Since(began))

	t.Run("group", func(t *testing.T) {
		t.Run("fingerprint and devices", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := c.mustRun(t, c.args(dir, "dave", "fingerprint")...)
			m := regexp.MustCompile(`^device (\d+)\nfingerprint ([0-9a-f]{8}( [0-9a-f]{8}){7})$`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("fingerprint output %q", out)
			}
			fp := c.fingerprint(t, dir, "dave")
			if fmt.Sprint(fp.Device) != m[1] || fp.Fingerprint != m[2] {
				t.Fatalf("second run %+v, first run device %s fingerprint %s: the state file was not reused", fp, m[1], m[2])
			}

			out = c.mustRun(t, c.args(dir, "dave", "devices")...)
			if !strings.Contains(out, m[1]+" (this device)") || !strings.Contains(out, fp.Fingerprint) {
				t.Fatalf("devices output:\n%s", out)
			}
			out = c.mustRun(t, c.args(dir, "dave", "-json", "devices")...)
			d := decode[deviceJSON](t, out)
			want := deviceJSON{JID: "dave@localhost", Device: fp.Device, Label: "", Fingerprint: fp.Fingerprint,
				Trust: d.Trust, Backends: []string{ns.OMEMO2, ns.Legacy}, Active: true, Own: true}
			if fmt.Sprint(d) != fmt.Sprint(want) {
				t.Fatalf("devices -json = %+v, want %+v", d, want)
			}

			// SIGINT shuts a listener down cleanly (exit 0, the state
			// file is released).
			p := c.start(t, c.args(dir, "dave", "listen")...)
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(p.stderr.String(), "listening") {
				if time.Now().After(deadline) {
					t.Fatalf("listener not ready; stderr:\n%s", p.stderr)
				}
				time.Sleep(20 * time.Millisecond)
			}
			_ = p.cmd.Process.Signal(syscall.SIGINT)
			if code := p.wait(10 * time.Second); code != 0 {
				t.Fatalf("listen after SIGINT: exit %d; stderr:\n%s", code, p.stderr)
			}
			c.fingerprint(t, dir, "dave")
		})

		// quinn never used OMEMO and has no presence subscription with
		// paul: Prosody answers paul's fetch of quinn's device lists
		// forbidden, which is not "no devices", and the command says so.
		t.Run("device list refused", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			_, errOut, code := c.run(t, c.args(dir, "paul", "send", "-to", "quinn@localhost", "anyone there?")...)
			if code != exitError || !strings.Contains(errOut, "the server refused access to the device list") || !strings.Contains(errOut, "not sent") {
				t.Fatalf("exit %d, stderr:\n%s", code, errOut)
			}
			_, errOut, code = c.run(t, c.args(dir, "paul", "devices", "-jid", "quinn@localhost")...)
			if code != 0 || !strings.Contains(errOut, "the server refused access to the device list of quinn@localhost") {
				t.Fatalf("devices: exit %d, stderr:\n%s", code, errOut)
			}
		})

		t.Run("send and listen", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			alice := c.fingerprint(t, dir, "alice")
			bob := c.fingerprint(t, dir, "bob")
			l := c.start(t, c.args(dir, "bob", "-json", "listen", "-count", "1", "-for", "30s")...)
			out := c.mustRun(t, c.args(dir, "alice", "-json", "send", "-to", "bob@localhost", "hello", "<bob> & co")...)
			res := decode[sendJSON](t, out)
			if res.To != "bob@localhost" || res.ID == "" || len(res.Errors) != 0 ||
				len(res.Devices) != 1 || res.Devices[0] != (recipientJSON{JID: "bob@localhost", Device: bob.Device, Backend: ns.OMEMO2}) {
				t.Fatalf("send result %+v", res)
			}
			if code := l.wait(30 * time.Second); code != 0 {
				t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
			}
			lines := l.stdout()
			if len(lines) != 1 {
				t.Fatalf("listen printed %q", lines)
			}
			got := decode[messageJSON](t, lines[0])
			want := messageJSON{From: "alice@localhost", Device: alice.Device, Backend: ns.OMEMO2, Body: "hello <bob> & co", Trust: got.Trust, KeyExchange: true}
			if got != want {
				t.Fatalf("received %+v, want %+v", got, want)
			}
			if got.Trust != "undecided" && got.Trust != "blindly-trusted" {
				t.Errorf("trust %q", got.Trust)
			}
			if !strings.Contains(lines[0], `"body":"hello <bob> & co"`) {
				t.Errorf("JSON line %s", lines[0])
			}

			// Text output.
			l = c.start(t, c.args(dir, "bob", "listen", "-count", "1", "-for", "30s")...)
			c.mustRun(t, c.args(dir, "alice", "send", "-to", "bob@localhost", "second")...)
			if code := l.wait(30 * time.Second); code != 0 {
				t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
			}
			prefix := fmt.Sprintf("alice@localhost [device %d, OMEMO 2, ", alice.Device)
			if lines := l.stdout(); len(lines) != 1 || !strings.HasPrefix(lines[0], prefix) || !strings.HasSuffix(lines[0], "]: second") {
				t.Fatalf("listen printed %q, want %q…]: second", lines, prefix)
			}
		})

		t.Run("send wait with echo", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			erin := c.fingerprint(t, dir, "erin")
			frank := c.fingerprint(t, dir, "frank")
			l := c.start(t, c.args(dir, "frank", "-json", "listen", "-echo", "-count", "1", "-for", "30s")...)
			s := c.start(t, c.args(dir, "erin", "-json", "send", "-to", "frank@localhost", "-wait", "8s", "ping")...)
			res := decode[sendJSON](t, s.next(20*time.Second))
			if len(res.Devices) != 1 || res.Devices[0].Device != frank.Device {
				t.Fatalf("send result %+v", res)
			}
			reply := decode[messageJSON](t, s.next(10*time.Second))
			if reply.From != "frank@localhost" || reply.Body != "echo: ping" || reply.Device != frank.Device || reply.Backend != ns.OMEMO2 {
				t.Fatalf("reply %+v", reply)
			}
			if code := s.wait(20 * time.Second); code != 0 {
				t.Fatalf("send -wait: exit %d; stderr:\n%s", code, s.stderr)
			}
			if code := l.wait(10 * time.Second); code != 0 {
				t.Fatalf("listen -echo: exit %d; stderr:\n%s", code, l.stderr)
			}
			if got := l.stdout(); len(got) != 1 || decode[messageJSON](t, got[0]).Body != "ping" || decode[messageJSON](t, got[0]).Device != erin.Device {
				t.Fatalf("listener printed %q", got)
			}
		})

		t.Run("legacy backend", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			gina := c.fingerprint(t, dir, "gina", "-backends", "oldmemo")
			henry := c.fingerprint(t, dir, "henry")
			l := c.start(t, c.args(dir, "gina", "-backends", "oldmemo", "-json", "listen", "-count", "1", "-for", "30s")...)
			out := c.mustRun(t, c.args(dir, "henry", "-json", "send", "-to", "gina@localhost", "old school")...)
			res := decode[sendJSON](t, out)
			if len(res.Devices) != 1 || res.Devices[0] != (recipientJSON{JID: "gina@localhost", Device: gina.Device, Backend: ns.Legacy}) {
				t.Fatalf("send result %+v", res)
			}
			if code := l.wait(30 * time.Second); code != 0 {
				t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
			}
			lines := l.stdout()
			if len(lines) != 1 {
				t.Fatalf("listen printed %q", lines)
			}
			got := decode[messageJSON](t, lines[0])
			if got.From != "henry@localhost" || got.Device != henry.Device || got.Backend != ns.Legacy || got.Body != "old school" || !got.KeyExchange {
				t.Fatalf("received %+v", got)
			}
		})

		t.Run("manual trust", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			judy := c.fingerprint(t, dir, "judy")
			manual := func(extra ...string) []string {
				return c.args(dir, "ivan", append([]string{"-trust", "manual"}, extra...)...)
			}
			out, errOut, code := c.run(t, manual("-json", "send", "-to", "judy@localhost", "must not arrive")...)
			compact := strings.ReplaceAll(judy.Fingerprint, " ", "")
			if code == 0 || out != "" || !strings.Contains(errOut, "undecided") || !strings.Contains(errOut, compact) ||
				!strings.Contains(errOut, fmt.Sprint(judy.Device)) || !strings.Contains(errOut, "trust -jid judy@localhost") {
				t.Fatalf("send to an undecided device: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
			}

			// An unknown fingerprint is an error.
			wrong := strings.Repeat("0", 64)
			if _, errOut, code := c.run(t, manual("trust", "-jid", "judy@localhost", "-fingerprint", wrong, "-level", "trusted")...); code == 0 || !strings.Contains(errOut, "no known device") {
				t.Fatalf("trust with an unknown fingerprint: exit %d, stderr %s", code, errOut)
			}
			out = c.mustRun(t, manual("-json", "trust", "-jid", "judy@localhost", "-fingerprint", judy.Fingerprint, "-level", "trusted")...)
			if tr := decode[trustJSON](t, out); tr != (trustJSON{JID: "judy@localhost", Device: judy.Device, Fingerprint: judy.Fingerprint, Trust: "trusted"}) {
				t.Fatalf("trust result %+v", tr)
			}
			out = c.mustRun(t, manual("-json", "devices", "-jid", "judy@localhost")...)
			if d := decode[deviceJSON](t, out); d.Device != judy.Device || d.Trust != "trusted" || d.Own || !d.Active {
				t.Fatalf("devices -jid judy: %+v", d)
			}

			// The refused message was never sent: offline storage
			// would deliver it first.
			l := c.start(t, c.args(dir, "judy", "-json", "listen", "-count", "1", "-for", "30s")...)
			out = c.mustRun(t, manual("send", "-to", "judy@localhost", "now trusted")...)
			if !strings.HasPrefix(out, "sent ") || !strings.Contains(out, fmt.Sprintf("judy@localhost/%d (OMEMO 2)", judy.Device)) {
				t.Errorf("send output %q", out)
			}
			if code := l.wait(30 * time.Second); code != 0 {
				t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
			}
			if lines := l.stdout(); len(lines) != 1 || decode[messageJSON](t, lines[0]).Body != "now trusted" {
				t.Fatalf("judy received %q", lines)
			}
		})

		t.Run("chat", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			c.fingerprint(t, dir, "leo")
			l := c.start(t, c.args(dir, "leo", "-json", "listen", "-echo", "-count", "2", "-for", "30s")...)
			k := c.start(t, c.args(dir, "kate", "-json", "chat", "leo@localhost")...)
			// waitEcho skips the send results and returns the next
			// received message.
			waitEcho := func() messageJSON {
				for {
					line := k.next(20 * time.Second)
					if strings.Contains(line, `"body"`) {
						return decode[messageJSON](t, line)
					}
					if res := decode[sendJSON](t, line); res.To != "leo@localhost" || len(res.Devices) != 1 {
						t.Fatalf("chat send result %+v", res)
					}
				}
			}
			for _, text := range []string{"one", "two"} {
				if _, err := io.WriteString(k.stdin, text+"\n"); err != nil {
					t.Fatal(err)
				}
				if m := waitEcho(); m.From != "leo@localhost" || m.Body != "echo: "+text {
					t.Fatalf("chat received %+v", m)
				}
			}
			_ = k.stdin.Close()
			if code := k.wait(15 * time.Second); code != 0 {
				t.Fatalf("chat: exit %d; stderr:\n%s", code, k.stderr)
			}
			if code := l.wait(15 * time.Second); code != 0 {
				t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
			}
			var bodies []string
			for _, line := range l.stdout() {
				bodies = append(bodies, decode[messageJSON](t, line).Body)
			}
			if strings.Join(bodies, "|") != "one|two" {
				t.Fatalf("leo received %q", bodies)
			}
		})

		t.Run("wrong password", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			right := c.args(dir, "mallory", "fingerprint")
			args := slices.Clone(right)
			for i, a := range args {
				if a == "-password" {
					args[i+1] = "wrong"
				}
			}
			out, errOut, code := c.run(t, args...)
			if code != 1 || out != "" || !strings.Contains(errOut, "omemo: logging in") {
				t.Fatalf("wrong password: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
			}
			if strings.Contains(errOut, "wrong") {
				t.Errorf("the password appears in the error: %s", errOut)
			}
			// A failed login creates no state file (and no device); a
			// successful one does.
			path := filepath.Join(dir, "mallory.db")
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the failed login left the state file %s (%v)", path, err)
			}
			c.mustRun(t, right...)
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("state file after a successful login: %v, %v", fi, err)
			}
		})

		t.Run("count skips copies of own messages", func(t *testing.T) {
			t.Parallel()
			dirA, dirB := t.TempDir(), t.TempDir()
			c.fingerprint(t, dirB, "nina")
			c.fingerprint(t, dirA, "nina")
			c.fingerprint(t, dirA, "oscar")
			// nina's device B listens for one message; carbons reach
			// only online devices, so the listener must be ready.
			l := c.start(t, c.args(dirB, "nina", "listen", "-echo", "-count", "1", "-for", "30s")...)
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(l.stderr.String(), "listening") {
				if time.Now().After(deadline) {
					t.Fatalf("listener not ready; stderr:\n%s", l.stderr)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// nina's device A writes to oscar: B prints the copy (a sent
			// carbon) but does not count or echo it.
			c.mustRun(t, c.args(dirA, "nina", "send", "-to", "oscar@localhost", "to oscar")...)
			if line := l.next(20 * time.Second); !strings.HasPrefix(line, "nina@localhost [") ||
				!strings.HasSuffix(line, ", sent by own device to oscar@localhost]: to oscar") {
				t.Fatalf("listener printed %q, want the copy of the message to oscar", line)
			}
			c.mustRun(t, c.args(dirA, "oscar", "send", "-to", "nina@localhost", "to nina")...)
			if code := l.wait(30 * time.Second); code != 0 {
				t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
			}
			lines := l.stdout()
			if len(lines) != 2 || !strings.HasPrefix(lines[1], "oscar@localhost [") || !strings.HasSuffix(lines[1], "]: to nina") {
				t.Fatalf("listen -count 1 printed %q, want the copy and then oscar's message", lines)
			}
			if n := strings.Count(l.stderr.String(), "echoed to "); n != 1 || !strings.Contains(l.stderr.String(), "echoed to oscar@localhost") {
				t.Fatalf("listen -echo echoed %d messages; stderr:\n%s", n, l.stderr)
			}
		})

		t.Run("password from environment", func(t *testing.T) {
			t.Parallel()
			args := c.args(t.TempDir(), "mallory", "-json", "fingerprint")
			for i, a := range args {
				if a == "-password" {
					args = append(args[:i:i], args[i+2:]...)
					break
				}
			}
			cmd := exec.Command(c.bin, args...)
			cmd.Env = append(os.Environ(), "OMEMO_PASSWORD=right")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("OMEMO_PASSWORD: %v", err)
			}
			if fp := decode[fingerprintJSON](t, strings.TrimSpace(string(out))); fp.JID != "mallory@localhost" {
				t.Fatalf("fingerprint %+v", fp)
			}
		})

		t.Run("default state file", func(t *testing.T) {
			t.Parallel()
			config := t.TempDir()
			args := c.args(t.TempDir(), "mallory", "-json", "fingerprint")
			for i, a := range args {
				if a == "-store" {
					args = append(args[:i:i], args[i+2:]...)
					break
				}
			}
			cmd := exec.Command(c.bin, args...)
			cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+config, "HOME="+config)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("fingerprint without -store: %v\n%s", err, out)
			}
			fi, err := os.Stat(filepath.Join(config, "omemo", "mallory@localhost.db"))
			if err != nil {
				t.Fatalf("default state file: %v", err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("state file mode %v", fi.Mode())
			}
		})

		t.Run("room", func(t *testing.T) {
			t.Parallel()
			testRoom(t, c)
		})

		t.Run("anonymous room refused", func(t *testing.T) {
			t.Parallel()
			testAnonymousRoom(t, c)
		})

		t.Run("usage errors", func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				args []string
				want string
			}{
				{[]string{"fingerprint"}, "-jid is required"},
				{[]string{"-jid", "alice@localhost"}, "no command"},
				{[]string{"-jid", "alice@localhost", "frobnicate"}, "unknown command"},
				{[]string{"-jid", "alice@localhost", "send", "hi"}, "-to is required"},
				{[]string{"-jid", "alice@localhost", "send", "-room", "team@" + prosodytest.MUCDomain, "-to", "bob@localhost", "hi"}, "-to and -room are mutually exclusive"},
				{[]string{"-jid", "alice@localhost", "room", "create"}, "want exactly one ROOM"},
				{[]string{"-jid", "alice@localhost", "-trust", "sometimes", "fingerprint"}, "-trust"},
				{[]string{"-jid", "alice@localhost", "-backends", "threemomo", "fingerprint"}, "unknown backend"},
				{[]string{"-jid", "alice@localhost", "trust", "-jid", "bob@localhost", "-fingerprint", "abc", "-level", "trusted"}, "64 hex digits"},
				{[]string{"-jid", "alice@localhost", "trust", "-jid", "bob@localhost", "-fingerprint", strings.Repeat("a", 64), "-level", "maybe"}, "-level"},
			} {
				out, errOut, code := c.run(t, tc.args...)
				if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
					t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
				}
			}
		})
	})
	if d := time.Since(began); d > 60*time.Second {
		t.Errorf("the CLI tests took %v", d)
	}
	t.Logf("took %v", time.Since(began))
}

// joined waits for the "joined" status line of a -json listen or chat in
// room and returns it; a "created" line before it fails the test (the
// rooms of the tests exist).
func joined(t *testing.T, p *proc, room, nick string) {
	t.Helper()
	line := p.next(20 * time.Second)
	if ev := decode[eventJSON](t, line); ev != (eventJSON{Event: "joined", Room: room, Nick: nick}) {
		t.Fatalf("first line %s, want the joined event of %s as %q", line, room, nick)
	}
}

// waitStderr waits until p wrote want to stderr.
func waitStderr(t *testing.T, p *proc, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.stderr.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%v: no %q on stderr:\n%s", p.cmd.Args[1:], want, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testRoom: rose creates a room with sam and tina (legacy OMEMO only) as
// members; her messages reach both listeners, tina's echo reaches rose and
// sam; chat -room works; a member without OMEMO (uma) makes send -room
// fail, and nothing reaches the room.
func testRoom(t *testing.T, c *cli) {
	dir := t.TempDir()
	room := "team@" + prosodytest.MUCDomain
	// The three devices are created at once.
	var fps []fingerprintJSON
	for _, p := range []*proc{
		c.start(t, c.args(dir, "rose", "-json", "fingerprint")...),
		c.start(t, c.args(dir, "sam", "-json", "fingerprint")...),
		c.start(t, c.args(dir, "tina", "-backends", "oldmemo", "-json", "fingerprint")...),
	} {
		if code := p.wait(30 * time.Second); code != 0 || len(p.stdout()) != 1 {
			t.Fatalf("%v: exit %d, stdout %q; stderr:\n%s", p.cmd.Args[1:], code, p.stdout(), p.stderr)
		}
		fps = append(fps, decode[fingerprintJSON](t, p.stdout()[0]))
	}
	rose, sam, tina := fps[0], fps[1], fps[2]
	if rose.JID != "rose@localhost" || sam.JID != "sam@localhost" || tina.JID != "tina@localhost" || rose.Device == 0 || sam.Device == 0 || tina.Device == 0 {
		t.Fatalf("fingerprints %+v", fps)
	}

	out := c.mustRun(t, c.args(dir, "rose", "-json", "room", "create", "-members", "sam@localhost, tina@localhost", room)...)
	if got := decode[roomCreateJSON](t, out); got != (roomCreateJSON{Room: room, Created: true}) || out != `{"room":"`+room+`","created":true}` {
		t.Fatalf("room create printed %s", out)
	}
	out = c.mustRun(t, c.args(dir, "rose", "-json", "room", "members", room)...)
	wantMembers := `{"room":"` + room + `","owners":["rose@localhost"],"admins":[],"members":["sam@localhost","tina@localhost"]}`
	if m := decode[roomMembersJSON](t, out); out != wantMembers || len(m.Members) != 2 {
		t.Fatalf("room members printed\n%s\nwant\n%s", out, wantMembers)
	}

	// sam and tina (legacy OMEMO only) listen in the room, tina echoes.
	ls := c.start(t, c.args(dir, "sam", "-json", "listen", "-room", room, "-count", "2", "-for", "30s")...)
	lt := c.start(t, c.args(dir, "tina", "-backends", "oldmemo", "-json", "listen", "-room", room, "-echo", "-count", "1", "-for", "30s")...)
	joined(t, ls, room, "sam")
	joined(t, lt, room, "tina")
	s := c.start(t, c.args(dir, "rose", "-json", "send", "-room", room, "-wait", "3s", "hello team")...)
	res := decode[roomSendJSON](t, s.next(20*time.Second))
	slices.SortFunc(res.Devices, func(a, b recipientJSON) int { return strings.Compare(a.JID, b.JID) })
	wantDevices := []recipientJSON{{JID: "sam@localhost", Device: sam.Device, Backend: ns.OMEMO2}, {JID: "tina@localhost", Device: tina.Device, Backend: ns.Legacy}}
	if res.Room != room || res.ID == "" || res.Errors == nil || len(res.Errors) != 0 || !slices.Equal(res.Devices, wantDevices) {
		t.Fatalf("send -room result %+v, want the devices %+v", res, wantDevices)
	}
	reply := decode[roomMessageJSON](t, s.next(15*time.Second))
	if want := (roomMessageJSON{Room: room, Nick: "tina", From: "tina@localhost", Device: tina.Device, Backend: ns.Legacy, Body: "echo: hello team", Trust: reply.Trust}); reply != want {
		t.Fatalf("rose received %+v, want %+v", reply, want)
	}
	if code := s.wait(20 * time.Second); code != 0 {
		t.Fatalf("send -room -wait: exit %d; stderr:\n%s", code, s.stderr)
	}
	if lines := s.stdout(); len(lines) != 2 {
		t.Fatalf("send -room -wait printed %q, want the result and the echo (not the room's copy of the own message)", lines)
	}
	for _, p := range []*proc{ls, lt} {
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("%v: exit %d; stderr:\n%s", p.cmd.Args[1:], code, p.stderr)
		}
	}
	fromRose := roomMessageJSON{Room: room, Nick: "rose", From: "rose@localhost", Device: rose.Device, Backend: ns.OMEMO2, Body: "hello team"}
	lines := ls.stdout()
	if len(lines) != 3 {
		t.Fatalf("sam printed %q, want the joined event and two messages", lines)
	}
	got := []roomMessageJSON{decode[roomMessageJSON](t, lines[1]), decode[roomMessageJSON](t, lines[2])}
	fromRose.Trust, reply.Trust = got[0].Trust, got[1].Trust
	if got[0] != fromRose || got[1] != reply {
		t.Fatalf("sam received %+v, want %+v and %+v", got, fromRose, reply)
	}
	if got[0].Trust != "blindly-trusted" && got[0].Trust != "undecided" {
		t.Errorf("trust %q", got[0].Trust)
	}
	lines = lt.stdout()
	fromRose.Backend = ns.Legacy
	if len(lines) != 2 {
		t.Fatalf("tina printed %q, want the joined event and rose's message", lines)
	}
	if m := decode[roomMessageJSON](t, lines[1]); m.Trust == "" || m != (roomMessageJSON{Room: room, Nick: "rose", From: "rose@localhost", Device: rose.Device, Backend: ns.Legacy, Body: "hello team", Trust: m.Trust}) {
		t.Fatalf("tina received %+v", m)
	}
	if n := strings.Count(lt.stderr.String(), "echoed in "+room); n != 0 {
		// -json hides progress: the echo was checked at rose and sam.
		t.Errorf("progress with -json: %s", lt.stderr)
	}

	// chat -room, with a nick of its own; sam listens in text mode.
	lt2 := c.start(t, c.args(dir, "sam", "listen", "-room", room, "-count", "1", "-for", "30s")...)
	waitStderr(t, lt2, "listening")
	nick := `Rose "R" ]`
	k := c.start(t, c.args(dir, "rose", "-json", "chat", "-room", room, "-nick", nick)...)
	if _, err := io.WriteString(k.stdin, "from chat\n"); err != nil {
		t.Fatal(err)
	}
	joined(t, k, room, nick)
	if res := decode[roomSendJSON](t, k.next(20*time.Second)); res.Room != room || len(res.Devices) != 2 {
		t.Fatalf("chat -room send result %+v", res)
	}
	_ = k.stdin.Close()
	if code := k.wait(15 * time.Second); code != 0 {
		t.Fatalf("chat -room: exit %d; stderr:\n%s", code, k.stderr)
	}
	if code := lt2.wait(20 * time.Second); code != 0 {
		t.Fatalf("listen -room: exit %d; stderr:\n%s", code, lt2.stderr)
	}
	prefix := fmt.Sprintf(`[%s] "Rose \"R\" ]" (rose@localhost) [device %d, OMEMO 2, `, room, rose.Device)
	if lines := lt2.stdout(); len(lines) != 1 || !strings.HasPrefix(lines[0], prefix) || !strings.HasSuffix(lines[0], "]: from chat") {
		t.Fatalf("listen -room printed %q, want %q…]: from chat", lines, prefix)
	}
	if !strings.Contains(lt2.stderr.String(), "joined "+room) {
		t.Errorf("listen -room stderr:\n%s", lt2.stderr)
	}

	// uma, who never used OMEMO, becomes a member: sending to the room
	// fails, and nothing reaches it. (Had the message gone out, sam would
	// count it before rose's direct message.)
	out = c.mustRun(t, c.args(dir, "rose", "-json", "room", "create", "-members", "uma@localhost", room)...)
	if got := decode[roomCreateJSON](t, out); got != (roomCreateJSON{Room: room, Created: false}) {
		t.Fatalf("room create of an existing room printed %s", out)
	}
	out = c.mustRun(t, c.args(dir, "rose", "room", "members", room)...)
	if want := "room " + room + "\nowners:  rose@localhost\nadmins:  (none)\nmembers: sam@localhost, tina@localhost, uma@localhost"; out != want {
		t.Fatalf("room members printed\n%s\nwant\n%s", out, want)
	}
	l3 := c.start(t, c.args(dir, "sam", "-json", "listen", "-room", room, "-count", "1", "-for", "30s")...)
	joined(t, l3, room, "sam")
	out, errOut, code := c.run(t, c.args(dir, "rose", "-json", "send", "-room", room, "must not arrive")...)
	if code != exitError || out != "" || !strings.Contains(errOut, "not sent: 1 member(s) of "+room+" have no OMEMO device") ||
		!strings.Contains(errOut, "uma@localhost") {
		t.Fatalf("send -room with a member without OMEMO: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	c.mustRun(t, c.args(dir, "rose", "send", "-to", "sam@localhost", "direct")...)
	if code := l3.wait(30 * time.Second); code != 0 {
		t.Fatalf("listen -room: exit %d; stderr:\n%s", code, l3.stderr)
	}
	if lines := l3.stdout(); len(lines) != 2 || decode[messageJSON](t, lines[1]).Body != "direct" {
		t.Fatalf("sam printed %q, want the joined event and rose's direct message only", lines)
	}
}

// testAnonymousRoom: a room that hides real JIDs (semi-anonymous) is
// refused by send -room and listen -room: nothing is sent, exit status 1.
func testAnonymousRoom(t *testing.T, c *cli) {
	dir := t.TempDir()
	room := "hidden@" + prosodytest.MUCDomain
	out := c.mustRun(t, c.args(dir, "vera", "-json", "room", "create", room)...)
	if got := decode[roomCreateJSON](t, out); !got.Created {
		t.Fatalf("room create printed %s", out)
	}
	s := c.srv.Dial(t, "vera", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := groupchat.Configure(ctx, s, jid.MustParse(room), [][2]string{{"muc#roomconfig_whois", "moderators"}}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-json", "send", "-room", room, "must not be sent"},
		{"-json", "listen", "-room", room, "-for", "20s"},
		{"send", "-room", room, "must not be sent"},
	} {
		out, errOut, code := c.run(t, c.args(dir, "vera", args...)...)
		if code != exitError || out != "" || !strings.Contains(errOut, "the room "+room+" is not non-anonymous") ||
			(args[1] == "send" || args[0] == "send") && !strings.Contains(errOut, "omemo: not sent: the room") {
			t.Fatalf("%q in a semi-anonymous room: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
		}
	}
	// room create warns about it.
	out, errOut, code := c.run(t, c.args(dir, "vera", "-json", "room", "create", room)...)
	if code != 0 || out != `{"room":"`+room+`","created":false}` || !strings.Contains(errOut, "is not non-anonymous") {
		t.Fatalf("room create of the semi-anonymous room: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}
