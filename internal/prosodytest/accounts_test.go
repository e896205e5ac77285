package prosodytest

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// The account files Start writes are those `prosodyctl register` writes.
func TestAccountDataMatchesProsodyctl(t *testing.T) {
	Require(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prosody.cfg.lua")
	conf := "run_as_root = true\n" +
		"data_path = " + strconv.Quote(filepath.Join(dir, "data")) + "\n" +
		"certificates = " + strconv.Quote(dir) + "\n" +
		"authentication = \"internal_plain\"\nstorage = \"internal\"\n" +
		"VirtualHost \"" + Domain + "\"\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, pw := range []string{"password", "secret", `pa"ss\wörd 1'x`, "ä€𝄞 []{}=;--"} {
		name := "user" + strconv.Itoa(i)
		out, err := exec.Command(Prosodyctl, "--config", cfg, "register", name, Domain, pw).CombinedOutput()
		if err != nil {
			t.Fatalf("prosodyctl register %q: %v\n%s", pw, err, out)
		}
		want, err := os.ReadFile(filepath.Join(dir, "data", Domain, "accounts", name+".dat"))
		if err != nil {
			t.Fatal(err)
		}
		if got := accountData(pw); !bytes.Equal(got, want) {
			t.Errorf("password %q:\ngot  %q\nwant %q", pw, got, want)
		}
	}
}

// luaString round-trips every byte through Lua (the interpreter Prosody
// runs on), including those prosodyctl refuses in passwords.
func TestLuaStringRoundTrip(t *testing.T) {
	Require(t)
	lua, err := exec.LookPath("lua5.4")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("lua5.4 not installed in CI (Debian's prosody depends on it: apt-get install -y prosody)")
		}
		t.Skip("lua5.4 not installed (prosody's own interpreter is checked by TestAccountDataMatchesProsodyctl)")
	}
	var all []byte
	for c := range 256 {
		all = append(all, byte(c))
	}
	for _, s := range []string{"", "plain", string(all), "\\\"'\n\r\t\a\b\f\v]]"} {
		script := "local t = " + luaString(s) + "\n" +
			"io.write((t:gsub('.', function(c) return string.format('%02x', c:byte()) end)))"
		out, err := exec.Command(lua, "-e", script).CombinedOutput()
		if err != nil {
			t.Fatalf("lua: %v\n%s", err, out)
		}
		if got := string(out); got != hex.EncodeToString([]byte(s)) {
			t.Errorf("%q came back as %s", s, got)
		}
	}
}
