package session

import (
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
)

// Storage layout. Every key starts with "omemo/"; JIDs and namespaces are
// path-escaped so that no input can address another record.
const (
	keyIdentity = "omemo/identity"
	keyDeviceID = "omemo/device-id"
	keyOwnLabel = "omemo/own-label"
)

func esc(s string) string { return url.PathEscape(s) }

func keyBackendKeys(ns string) string { return "omemo/ns/" + esc(ns) + "/keys" }

func prefixBackend(ns string) string { return "omemo/ns/" + esc(ns) + "/" }

// keyGrace records until when a used pre key is kept (hidden) for late key
// exchanges from the same bundle (see Config.PreKeyGrace).
func keyGrace(ns string, id uint32) string {
	return prefixGrace(ns) + strconv.FormatUint(uint64(id), 10)
}

func prefixGrace(ns string) string { return "omemo/ns/" + esc(ns) + "/grace/" }

// keyUploadPending marks a backend whose rotated signed pre key has not
// reached the server yet (see RotateSignedPreKeys).
func keyUploadPending(ns string) string { return "omemo/ns/" + esc(ns) + "/upload-pending" }

func prefixSessions(ns string) string { return "omemo/ns/" + esc(ns) + "/sessions/" }

func prefixSessionsOf(ns, jid string) string { return prefixSessions(ns) + esc(jid) + "/" }

func keySession(ns, jid string, dev uint32) string {
	// One concatenation: this runs for every device of every message.
	return "omemo/ns/" + esc(ns) + "/sessions/" + esc(jid) + "/" + strconv.FormatUint(uint64(dev), 10)
}

// keyPreviousSession holds the session a new key exchange replaced, kept
// for the peer's messages that were already under way (see Decrypt).
func keyPreviousSession(ns, jid string, dev uint32) string {
	return keySession(ns, jid, dev) + "/previous"
}

func prefixDevicesOf(jid string) string { return "omemo/devices/" + esc(jid) + "/" }

func keyDevice(jid string, dev uint32) string {
	return prefixDevicesOf(jid) + strconv.FormatUint(uint64(dev), 10)
}

// keyIdentityOwner records the account that first announced an identity
// key (see claimIdentity).
func keyIdentityOwner(ik [32]byte) string {
	return "omemo/identity-owner/" + base64.RawURLEncoding.EncodeToString(ik[:])
}

// keyIdentityOwnersIndexed marks a store whose identity owners were
// collected from the device records stored before the index existed.
const keyIdentityOwnersIndexed = "omemo/identity-owner-indexed"

// parseDeviceKey splits a device record key.
func parseDeviceKey(key string) (jid string, ok bool) {
	rest, found := strings.CutPrefix(key, "omemo/devices/")
	i := strings.LastIndexByte(rest, '/')
	if !found || i < 0 {
		return "", false
	}
	jid, err := unesc(rest[:i])
	return jid, err == nil
}

func prefixTrustOf(jid string) string { return "omemo/trust/" + esc(jid) + "/" }

func keyTrust(jid string, ik [32]byte) string {
	return prefixTrustOf(jid) + base64.RawURLEncoding.EncodeToString(ik[:])
}

const prefixQueue = "omemo/queue/"

func keyQueue(ns, jid string, dev uint32) string {
	return prefixQueue + esc(ns) + "/" + esc(jid) + "/" + strconv.FormatUint(uint64(dev), 10)
}

func unesc(s string) (string, error) { return url.PathUnescape(s) }

// parseQueueKey splits a history synchronisation queue key.
func parseQueueKey(key string) (ns, jid string, dev uint32, ok bool) {
	rest := key[len(prefixQueue):]
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return "", "", 0, false
	}
	var err error
	if ns, err = unesc(parts[0]); err != nil {
		return "", "", 0, false
	}
	if jid, err = unesc(parts[1]); err != nil {
		return "", "", 0, false
	}
	id, err := strconv.ParseUint(parts[2], 10, 32)
	if err != nil {
		return "", "", 0, false
	}
	return ns, jid, uint32(id), true
}
