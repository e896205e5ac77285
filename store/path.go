package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"mellium.im/xmpp/jid"
)

// ErrInvalidAccount is returned by DefaultPath for an account that is not a
// valid JID, and by Accounts.Account for a name that CheckAccountName
// refuses.
var ErrInvalidAccount = errors.New("store: invalid account")

// ErrInsecureDir is returned by DefaultPath when the store directory
// belongs to another user or its permissions cannot be restricted.
var ErrInsecureDir = errors.New("store: insecure store directory")

// DirMode is the permission of the directories created by DefaultPath.
const DirMode os.FileMode = 0o700

// maxNameLen bounds the escaped part of a file name, well below the usual
// 255-byte limit of file systems.
const maxNameLen = 160

// DefaultPath returns the default location of the persistent store of
// account: one file per account in os.UserConfigDir()/omemo/ (for example
// ~/.config/omemo/alice@example.org.db on Linux). It creates the directory
// with permissions 0700 if it does not exist; [Open] creates the file with
// permissions 0600.
//
// The directory holds the private keys of every account and belongs to this
// package, so DefaultPath also secures an existing one (on Unix): it fails
// with ErrInsecureDir if the directory belongs to another user, and removes
// any group and other permissions from it (0755 or 0777 become 0700), as
// another user who can write to it can replace or delete a store file (and
// with it the device's identity), and one who can read it can list the
// accounts. It does not touch os.UserConfigDir() itself. A store at another
// path (given to Open) is in a directory of the caller's choice, which is
// left as it is.
//
// account is parsed and normalised as a JID (so "Alice@Example.ORG/phone"
// and "alice@example.org" share a file) and only its bare part is used. The
// file name is derived from it with an injective escaping that only emits
// lower-case ASCII letters, digits and "-_@.%~", never starts with a dot and
// never names a reserved Windows device, so it always names a single file
// directly inside the omemo directory: "../evil" style input cannot escape
// it. Very long JIDs are shortened with a SHA-256 suffix.
func DefaultPath(account string) (string, error) {
	j, err := jid.Parse(account)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidAccount, err)
	}
	bare := j.Bare().String()
	if strings.Trim(j.Domainpart(), ".") == "" {
		return "", fmt.Errorf("%w: empty domain", ErrInvalidAccount)
	}
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("store: locating the configuration directory: %w", err)
	}
	dir := filepath.Join(base, "omemo")
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return "", fmt.Errorf("store: creating %s: %w", dir, err)
	}
	if err := secureDir(dir, os.Geteuid()); err != nil {
		return "", err
	}
	return filepath.Join(dir, fileName(bare)), nil
}

// secureDir checks that dir belongs to the user euid and removes its group
// and other permissions. Where permissions are not Unix modes (Windows,
// Plan 9) it only checks that dir is a directory.
func secureDir(dir string, euid int) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrInsecureDir, dir)
	}
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		return nil
	}
	if uid, ok := owner(fi); ok && euid >= 0 && uid != euid {
		return fmt.Errorf("%w: %s belongs to another user (uid %d)", ErrInsecureDir, dir, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := os.Chmod(dir, perm&^0o077); err != nil {
			return fmt.Errorf("%w: %s has permissions %v that cannot be restricted: %w", ErrInsecureDir, dir, perm, err)
		}
	}
	return nil
}

// fileName maps a bare JID to a safe file name ending in ".db".
func fileName(bare string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(bare); i++ {
		c := bare[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '@',
			c == '.' && i > 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		}
	}
	name := b.String()
	if reservedWindowsName(name) {
		// Escape the first byte (always a lower-case letter here).
		name = fmt.Sprintf("%%%02X", name[0]) + name[1:]
	}
	if len(name) > maxNameLen {
		// Cut on an escape boundary and disambiguate with a hash of the
		// full JID; '~' never appears in an escaped name, so shortened
		// names cannot collide with unshortened ones.
		cut := maxNameLen - 80
		if i := strings.LastIndexByte(name[:cut], '%'); i >= cut-2 {
			cut = i
		}
		sum := sha256.Sum256([]byte(bare))
		name = name[:cut] + "~" + hex.EncodeToString(sum[:16])
	}
	return name + ".db"
}

// reservedWindowsName reports whether name (before its first dot) is a DOS
// device name, which Windows refuses as a file name whatever the extension.
func reservedWindowsName(name string) bool {
	stem, _, _ := strings.Cut(name, ".")
	switch stem {
	case "con", "prn", "aux", "nul":
		return true
	}
	if len(stem) == 4 && (strings.HasPrefix(stem, "com") || strings.HasPrefix(stem, "lpt")) &&
		stem[3] >= '0' && stem[3] <= '9' {
		return true
	}
	return false
}
