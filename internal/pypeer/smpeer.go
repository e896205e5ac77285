package pypeer

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
)

// SMPeer drives testdata/interop/smpeer.py, which runs real python-omemo
// SessionManagers (accounts) on fake PubSub servers ("worlds"). See the
// smpeer section of testdata/interop/README.md for the protocol and for the
// python-omemo behaviour a caller must know. Its methods are safe for
// concurrent use; requests are serialised, and every answer has a deadline
// (StartTimeout for the first, RequestTimeout afterwards).
type SMPeer struct {
	p      *Peer
	server string // world name; "" is smpeer's default world
}

// StartSM starts smpeer.py with the oracle interpreter (skipping the test
// when it is missing, failing it with CI=true, see oracle.Require) and kills
// it in tb.Cleanup. The first request gets StartTimeout.
func StartSM(tb testing.TB) *SMPeer {
	tb.Helper()
	return &SMPeer{p: start(tb, "smpeer.py")}
}

// OnServer returns a view of the same process whose requests use the named
// fake server (world). Accounts created through it live on that server.
func (s *SMPeer) OnServer(name string) *SMPeer {
	return &SMPeer{p: s.p, server: name}
}

func (s *SMPeer) req(op string, kv ...any) map[string]any {
	r := map[string]any{"op": op}
	if s.server != "" {
		r["server"] = s.server
	}
	for i := 0; i+1 < len(kv); i += 2 {
		r[kv[i].(string)] = kv[i+1]
	}
	return r
}

// Devices is a device list as smpeer exchanges it: device id → label
// ("" for none).
type Devices map[uint32]string

// MarshalJSON encodes decimal string keys and null for empty labels.
func (d Devices) MarshalJSON() ([]byte, error) {
	m := make(map[string]*string, len(d))
	for id, label := range d {
		var l *string
		if label != "" {
			l = &label
		}
		m[strconv.FormatUint(uint64(id), 10)] = l
	}
	return json.Marshal(m)
}

// UnmarshalJSON decodes decimal string keys; null labels become "".
func (d *Devices) UnmarshalJSON(b []byte) error {
	var m map[string]*string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	out := make(Devices, len(m))
	for k, v := range m {
		id, err := strconv.ParseUint(k, 10, 32)
		if err != nil {
			return fmt.Errorf("pypeer: device id %q: %w", k, err)
		}
		if v != nil {
			out[uint32(id)] = *v
		} else {
			out[uint32(id)] = ""
		}
	}
	*d = out
	return nil
}

// Account configures a Python account for Create.
type Account struct {
	JID string
	// Namespaces are the backends in priority order.
	Namespaces []string
	// Label is the own device label ("" sends null).
	Label string
	// ManualTrust disables automatic trust: encrypting fails with
	// StillUndecided until SetTrust.
	ManualTrust bool
	// HistorySync leaves the account in history synchronisation mode.
	HistorySync bool
}

// Create creates a Python account and returns its device id and Ed25519
// identity key.
func (s *SMPeer) Create(a Account) (deviceID uint32, identityKey [32]byte, err error) {
	var label any
	if a.Label != "" {
		label = a.Label
	}
	var resp struct {
		DeviceID    uint32 `json:"device_id"`
		IdentityKey []byte `json:"identity_key"`
	}
	err = s.p.callInto(s.req("create", "jid", a.JID, "namespaces", a.Namespaces, "label", label,
		"auto_trust", !a.ManualTrust, "history_sync", a.HistorySync), &resp)
	if err != nil {
		return 0, identityKey, err
	}
	identityKey, err = key32(resp.IdentityKey)
	return resp.DeviceID, identityKey, err
}

// ServerDeviceList reads a device list from the fake server: the parsed
// devices and the stored <list>/<devices> XML ("" if there is none).
func (s *SMPeer) ServerDeviceList(ns, jid string) (Devices, string, error) {
	var resp struct {
		Devices Devices `json:"devices"`
		XML     *string `json:"device_list_xml"`
	}
	if err := s.p.callInto(s.req("server_get_device_list", "ns", ns, "jid", jid), &resp); err != nil {
		return nil, "", err
	}
	x := ""
	if resp.XML != nil {
		x = *resp.XML
	}
	return resp.Devices, x, nil
}

// PutServerDeviceListXML stores a device list element on the fake server
// (validated by the Python parser) and returns it as read back.
func (s *SMPeer) PutServerDeviceListXML(ns, jid, listXML string) (Devices, error) {
	var resp struct {
		Devices Devices `json:"devices"`
	}
	err := s.p.callInto(s.req("server_put_device_list", "ns", ns, "jid", jid, "device_list_xml", listXML), &resp)
	return resp.Devices, err
}

// PutServerDeviceList stores a device list given as devices on the fake
// server and returns it as read back. An empty list deletes the node.
func (s *SMPeer) PutServerDeviceList(ns, jid string, devices Devices) (Devices, error) {
	var resp struct {
		Devices Devices `json:"devices"`
	}
	err := s.p.callInto(s.req("server_put_device_list", "ns", ns, "jid", jid, "devices", devices), &resp)
	return resp.Devices, err
}

// ServerBundle reads a bundle from the fake server: its XML and the Ed25519
// identity key Python parses from it. A missing bundle is an *Error with
// HasCause("BundleNotFound").
func (s *SMPeer) ServerBundle(ns, jid string, device uint32) (bundleXML string, identityKey [32]byte, err error) {
	var resp struct {
		XML         string `json:"bundle_xml"`
		IdentityKey []byte `json:"identity_key"`
	}
	if err := s.p.callInto(s.req("server_get_bundle", "ns", ns, "jid", jid, "device", device), &resp); err != nil {
		return "", identityKey, err
	}
	identityKey, err = key32(resp.IdentityKey)
	return resp.XML, identityKey, err
}

// PutServerBundle stores a bundle element on the fake server (validated by
// the Python parser) and returns the Ed25519 identity key Python parses
// from it (legacy: using the sign bit in the signature).
func (s *SMPeer) PutServerBundle(ns, jid string, device uint32, bundleXML string) ([32]byte, error) {
	var resp struct {
		IdentityKey []byte `json:"identity_key"`
	}
	if err := s.p.callInto(s.req("server_put_bundle", "ns", ns, "jid", jid, "device", device,
		"bundle_xml", bundleXML), &resp); err != nil {
		return [32]byte{}, err
	}
	return key32(resp.IdentityKey)
}

// UpdateDeviceList hands a device list of jid to account, like a PEP
// notification (sm.update_device_list).
func (s *SMPeer) UpdateDeviceList(account, ns, jid string, devices Devices) error {
	return s.p.callInto(s.req("update_device_list", "account", account, "ns", ns, "jid", jid,
		"devices", devices), &struct{}{})
}

// RefreshDeviceList makes account download the device list of jid from its
// fake server (sm.refresh_device_list).
func (s *SMPeer) RefreshDeviceList(account, ns, jid string) error {
	return s.p.callInto(s.req("refresh_device_list", "account", account, "ns", ns, "jid", jid), &struct{}{})
}

// SMMessage is one serialised <encrypted> element.
type SMMessage struct {
	To        string `json:"to"` // outbox messages only
	Namespace string `json:"ns"`
	XML       string `json:"xml"`
}

// SMDeviceError is a per-device failure of Encrypt.
type SMDeviceError struct {
	Namespace string `json:"ns"`
	JID       string `json:"jid"`
	Device    uint32 `json:"device"`
	Error     string `json:"error"`
}

// Encrypt encrypts the UTF-8 plaintext (raw, no SCE envelope) from account
// to the bare JIDs, one <encrypted> element per namespace used (in the
// account's priority order). namespaces, if not nil, overrides the priority.
func (s *SMPeer) Encrypt(account string, to []string, plaintext string, namespaces []string) ([]SMMessage, []SMDeviceError, error) {
	r := s.req("encrypt", "account", account, "to", to, "plaintext", plaintext)
	if namespaces != nil {
		r["namespaces"] = namespaces
	}
	var resp struct {
		Messages []SMMessage     `json:"messages"`
		Errors   []SMDeviceError `json:"errors"`
	}
	if err := s.p.callInto(r, &resp); err != nil {
		return nil, nil, err
	}
	return resp.Messages, resp.Errors, nil
}

// SMDecrypted is the answer of Decrypt.
type SMDecrypted struct {
	// Plaintext is nil for an empty OMEMO message.
	Plaintext    []byte `json:"plaintext_b64"`
	SenderDevice uint32 `json:"sender_device"`
	// Trust is the sender's custom trust level name.
	Trust string `json:"trust"`
}

// Decrypt makes account decrypt an <encrypted> element of ns sent by
// senderJID.
func (s *SMPeer) Decrypt(account, ns, senderJID, encryptedXML string) (SMDecrypted, error) {
	var resp SMDecrypted
	err := s.p.callInto(s.req("decrypt", "account", account, "ns", ns, "sender_jid", senderJID,
		"xml", encryptedXML), &resp)
	return resp, err
}

// Outbox returns and clears the messages account sent by itself (empty
// messages: session completion, heartbeats, the history sync queue).
func (s *SMPeer) Outbox(account string) ([]SMMessage, error) {
	var resp struct {
		Messages []SMMessage `json:"messages"`
	}
	err := s.p.callInto(s.req("outbox", "account", account), &resp)
	return resp.Messages, err
}

// BeforeHistorySync enters history synchronisation mode.
func (s *SMPeer) BeforeHistorySync(account string) error {
	return s.p.callInto(s.req("before_history_sync", "account", account), &struct{}{})
}

// AfterHistorySync leaves history synchronisation mode (the queued empty
// messages go to the outbox).
func (s *SMPeer) AfterHistorySync(account string) error {
	return s.p.callInto(s.req("after_history_sync", "account", account), &struct{}{})
}

// SMDevice is one device as account knows it.
type SMDevice struct {
	JID         string          `json:"jid"`
	DeviceID    uint32          `json:"device_id"`
	Namespaces  []string        `json:"namespaces"`
	Active      map[string]bool `json:"active"`
	Label       *string         `json:"label"`
	IdentityKey []byte          `json:"identity_key"`
	Trust       string          `json:"trust"`
}

// DeviceInfo returns the devices of jid known to account (for the own JID
// the own device first).
func (s *SMPeer) DeviceInfo(account, jid string) ([]SMDevice, error) {
	var resp struct {
		Devices []SMDevice `json:"devices"`
	}
	err := s.p.callInto(s.req("device_info", "account", account, "jid", jid), &resp)
	return resp.Devices, err
}

// SetTrust sets the trust level ("trusted", "undecided", "distrusted") of
// an Ed25519 identity key of jid.
func (s *SMPeer) SetTrust(account, jid string, identityKey [32]byte, level string) error {
	return s.p.callInto(s.req("set_trust", "account", account, "jid", jid,
		"identity_key", identityKey[:], "level", level), &struct{}{})
}

// ChainLengths reports the state of account's session with a device.
func (s *SMPeer) ChainLengths(account, ns, jid string, device uint32) (ChainLengths, error) {
	var resp struct {
		Sending    uint32  `json:"sending"`
		Receiving  *uint32 `json:"receiving"`
		Confirmed  bool    `json:"confirmed"`
		Initiation string  `json:"initiation"`
	}
	err := s.p.callInto(s.req("chain_lengths", "account", account, "ns", ns, "jid", jid, "device", device), &resp)
	if err != nil {
		return ChainLengths{}, err
	}
	c := ChainLengths{Sending: resp.Sending, Confirmed: resp.Confirmed, Initiation: resp.Initiation}
	if resp.Receiving != nil {
		c.Receiving, c.HasRecv = *resp.Receiving, true
	}
	return c, nil
}

// ReplaceSessions makes account replace its sessions with a device
// (sm.replace_sessions); the key exchanges go to the outbox. It returns the
// per-namespace failures.
func (s *SMPeer) ReplaceSessions(account, jid string, device uint32) (map[string]string, error) {
	var resp struct {
		Failed map[string]string `json:"failed"`
	}
	err := s.p.callInto(s.req("replace_sessions", "account", account, "jid", jid, "device", device), &resp)
	return resp.Failed, err
}

func key32(raw []byte) ([32]byte, error) {
	var k [32]byte
	if len(raw) != len(k) {
		return k, fmt.Errorf("pypeer: identity key of %d bytes", len(raw))
	}
	copy(k[:], raw)
	return k, nil
}
