// Package vectors loads the known-answer vectors that the Python reference
// stack produced (testdata/vectors/{xeddsa,twomemo,oldmemo}.json, documented
// in testdata/vectors/README.md) and compares XML structurally.
//
// It is test support only: it must never be imported by non-test code. It
// depends on the standard library alone, so that any package of the module
// (including internal/xeddsa) can use it from its tests.
package vectors

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Hex is a byte string stored in the JSON as lowercase hex; JSON null decodes
// to nil.
type Hex []byte

// UnmarshalJSON implements json.Unmarshaler.
func (h *Hex) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*h = nil
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	raw, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("vectors: bad hex %q: %w", s, err)
	}
	if raw == nil {
		raw = []byte{}
	}
	*h = raw
	return nil
}

// A32 returns h as a 32-byte array. It panics if h is not 32 bytes long,
// which means the vector file is not what the test expects.
func (h Hex) A32() [32]byte {
	if len(h) != 32 {
		panic(fmt.Sprintf("vectors: want 32 bytes, have %d", len(h)))
	}
	return [32]byte(h)
}

// A64 returns h as a 64-byte array (panics on another length).
func (h Hex) A64() [64]byte {
	if len(h) != 64 {
		panic(fmt.Sprintf("vectors: want 64 bytes, have %d", len(h)))
	}
	return [64]byte(h)
}

// Dir returns testdata/vectors of the module, found by walking up from the
// working directory (go test runs in the package directory) to go.mod.
func Dir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata", "vectors"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("vectors: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Load decodes testdata/vectors/name into v. Unknown fields are allowed
// (the files carry provenance and notes).
func Load(name string, v any) error {
	dir, err := Dir()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("vectors: %s: %w", name, err)
	}
	return nil
}

// XEdDSA is xeddsa.json.
type XEdDSA struct {
	Keys []struct {
		SeedLabel                    string `json:"seed_label"`
		Seed                         Hex    `json:"seed"`
		Priv                         Hex    `json:"priv"`
		Ed25519Pub                   Hex    `json:"ed25519_pub"`
		Curve25519Pub                Hex    `json:"curve25519_pub"`
		Ed25519SignBit               int    `json:"ed25519_sign_bit"`
		PrivForceSignFalse           Hex    `json:"priv_force_sign_false"`
		PrivForceSignFalseEd25519Pub Hex    `json:"priv_force_sign_false_ed25519_pub"`
		PrivForceSignTrue            Hex    `json:"priv_force_sign_true"`
		PrivForceSignTrueEd25519Pub  Hex    `json:"priv_force_sign_true_ed25519_pub"`
	} `json:"keys"`
	Curve25519ToEd25519 []struct {
		Curve25519Pub   Hex `json:"curve25519_pub"`
		Ed25519PubSign0 Hex `json:"ed25519_pub_sign_0"`
		Ed25519PubSign1 Hex `json:"ed25519_pub_sign_1"`
	} `json:"curve25519_to_ed25519"`
	Ed25519ToCurve25519Invalid []struct {
		Description string `json:"description"`
		Ed25519Pub  Hex    `json:"ed25519_pub"`
		Error       string `json:"error"`
	} `json:"ed25519_to_curve25519_invalid"`
	XEdDSASignatures []struct {
		Priv           Hex `json:"priv"`
		Ed25519Pub     Hex `json:"ed25519_pub"`
		Ed25519SignBit int `json:"ed25519_sign_bit"`
		Msg            Hex `json:"msg"`
		Nonce          Hex `json:"nonce"`
		R              Hex `json:"r"`
		BigR           Hex `json:"R"`
		H              Hex `json:"h"`
		S              Hex `json:"s"`
		Signature      Hex `json:"signature"`
	} `json:"xeddsa_signatures"`
	XEdDSASignatureNegative []struct {
		Description string `json:"description"`
		Ed25519Pub  Hex    `json:"ed25519_pub"`
		Msg         Hex    `json:"msg"`
		Signature   Hex    `json:"signature"`
		Valid       bool   `json:"valid"`
	} `json:"xeddsa_signature_negative"`
	Ed25519SeedSignatures []struct {
		Seed       Hex `json:"seed"`
		Ed25519Pub Hex `json:"ed25519_pub"`
		Msg        Hex `json:"msg"`
		Signature  Hex `json:"signature"`
	} `json:"ed25519_seed_signatures"`
	X25519 []struct {
		Priv     Hex `json:"priv"`
		Pub      Hex `json:"pub"`
		PeerPriv Hex `json:"peer_priv"`
		Shared   Hex `json:"shared"`
	} `json:"x25519"`
	X25519Invalid []struct {
		Description string `json:"description"`
		Priv        Hex    `json:"priv"`
		Pub         Hex    `json:"pub"`
		Error       string `json:"error"`
	} `json:"x25519_invalid"`
}

// Identity is an identity key derived from a seed.
type Identity struct {
	SeedLabel      string `json:"seed_label"`
	Seed           Hex    `json:"seed"`
	Priv           Hex    `json:"priv"`
	Ed25519Pub     Hex    `json:"ed25519_pub"`
	Curve25519Pub  Hex    `json:"curve25519_pub"`
	Ed25519SignBit int    `json:"ed25519_sign_bit"`
}

// Party is alice or bob.
type Party struct {
	JID          string   `json:"jid"`
	DeviceID     uint32   `json:"device_id"`
	Identity     Identity `json:"identity"`
	SignedPreKey *struct {
		ID              uint32 `json:"id"`
		Priv            Hex    `json:"priv"`
		Pub             Hex    `json:"pub"`
		SignatureNonce  Hex    `json:"signature_nonce"`
		SignedBytes     Hex    `json:"signed_bytes"`
		Signature       Hex    `json:"signature"`
		SignatureOnWire Hex    `json:"signature_on_wire"` // oldmemo only
		Timestamp       int64  `json:"timestamp"`
	} `json:"signed_pre_key"`
	PreKeys []PreKey `json:"pre_keys"`
}

// PreKey is a one-time pre key pair.
type PreKey struct {
	ID   uint32 `json:"id"`
	Priv Hex    `json:"priv"`
	Pub  Hex    `json:"pub"`
}

// Random is one value the reference drew, in its drawing order.
type Random struct {
	Label    string `json:"label"`
	Name     string `json:"name"`
	Source   string `json:"source"`
	Value    Hex    `json:"value"`
	Pub      Hex    `json:"pub"`
	PreKeyID uint32 `json:"pre_key_id"`
}

// RatchetState is a snapshot of python-doubleratchet's state.
type RatchetState struct {
	Initiation                 string  `json:"initiation"`
	Confirmed                  bool    `json:"confirmed"`
	RootKey                    Hex     `json:"root_key"`
	RootChainLength            int     `json:"root_chain_length"`
	OwnRatchetPriv             Hex     `json:"own_ratchet_priv"`
	OwnRatchetPub              Hex     `json:"own_ratchet_pub"`
	OtherRatchetPub            Hex     `json:"other_ratchet_pub"`
	SendingChainKey            Hex     `json:"sending_chain_key"`
	SendingChainLength         *uint32 `json:"sending_chain_length"`
	ReceivingChainKey          Hex     `json:"receiving_chain_key"`
	ReceivingChainLength       *uint32 `json:"receiving_chain_length"`
	PreviousSendingChainLength *uint32 `json:"previous_sending_chain_length"`
	SkippedMessageKeys         []struct {
		RatchetPub Hex    `json:"ratchet_pub"`
		N          uint32 `json:"n"`
		MessageKey Hex    `json:"message_key"`
	} `json:"skipped_message_keys"`
}

// Message is one entry of messages[].
type Message struct {
	Name             string   `json:"name"`
	Sender           string   `json:"sender"`
	Receiver         string   `json:"receiver"`
	SenderJID        string   `json:"sender_jid"`
	SenderDeviceID   uint32   `json:"sender_device_id"`
	ReceiverJID      string   `json:"receiver_jid"`
	ReceiverDeviceID uint32   `json:"receiver_device_id"`
	Empty            bool     `json:"empty"`
	Plaintext        *string  `json:"plaintext"`
	PlaintextHex     Hex      `json:"plaintext_hex"`
	SendRandomness   []Random `json:"send_randomness"`
	DHStepAtSend     bool     `json:"dh_step_at_send"`
	Payload          struct {
		Key  Hex `json:"key"`
		IV   Hex `json:"iv"` // oldmemo only
		HKDF *struct {
			EncKey  Hex `json:"enc_key"`
			AuthKey Hex `json:"auth_key"`
			IV      Hex `json:"iv"`
		} `json:"hkdf"` // twomemo only
		Ciphertext  Hex `json:"ciphertext"`
		AuthTag     Hex `json:"auth_tag"`
		KeyMaterial Hex `json:"key_material"`
	} `json:"payload"`
	PlainKeyMaterial Hex `json:"plain_key_material"`
	Header           struct {
		DHPub Hex    `json:"dh_pub"`
		N     uint32 `json:"n"`
		PN    uint32 `json:"pn"`
	} `json:"header"`
	MessageKey  Hex `json:"message_key"`
	RatchetAEAD struct {
		EncKey            Hex `json:"enc_key"`
		AuthKey           Hex `json:"auth_key"`
		IV                Hex `json:"iv"`
		Ciphertext        Hex `json:"ciphertext"`
		MACAssociatedData Hex `json:"mac_associated_data"`
		OMEMOMessage      Hex `json:"omemo_message"`
		MAC               Hex `json:"mac"`
	} `json:"ratchet_aead"`
	Kex         bool `json:"kex"`
	KeyExchange *struct {
		PKID             uint32 `json:"pk_id"`
		SPKID            uint32 `json:"spk_id"`
		IK               Hex    `json:"ik"`
		EK               Hex    `json:"ek"`
		IdentityKeyEd    Hex    `json:"identity_key_ed25519"`
		IKSignBitNotSent *int   `json:"ik_sign_bit_not_transmitted"`
	} `json:"key_exchange"`
	KeyElement         Hex           `json:"key_element"`
	KeyElementB64      string        `json:"key_element_b64"`
	EncryptedXML       string        `json:"encrypted_xml"`
	SenderStateBefore  *RatchetState `json:"sender_state_before"`
	SenderStateInitial *RatchetState `json:"sender_state_initial"`
	SenderStateAfter   *RatchetState `json:"sender_state_after"`
	Receive            struct {
		ReceiveRandomness     []Random      `json:"receive_randomness"`
		DHStepAtReceive       bool          `json:"dh_step_at_receive"`
		UsedSkippedMessageKey bool          `json:"used_skipped_message_key"`
		KexHandling           *string       `json:"kex_handling"`
		PreKeyDeleted         bool          `json:"pre_key_deleted"`
		DecryptedPlaintextHex Hex           `json:"decrypted_plaintext_hex"`
		ReceiverStateBefore   *RatchetState `json:"receiver_state_before"`
		ReceiverStateAfter    *RatchetState `json:"receiver_state_after"`
	} `json:"receive"`
}

// Event is one step of the events[] script.
type Event struct {
	Op                    string   `json:"op"`
	Message               string   `json:"message"`
	Result                string   `json:"result"`
	Decrypted             *string  `json:"decrypted"`
	UsedSkippedMessageKey bool     `json:"used_skipped_message_key"`
	ErrorClass            string   `json:"error_class"`
	CauseChain            []string `json:"cause_chain"`
}

// Negative is one entry of negative[].
type Negative struct {
	Name              string   `json:"name"`
	Op                string   `json:"op"`
	Message           string   `json:"message"`
	Receiver          string   `json:"receiver"`
	Mutation          string   `json:"mutation"`
	KeyElement        Hex      `json:"key_element"`
	Kex               bool     `json:"kex"`
	Payload           Hex      `json:"payload"`
	IV                Hex      `json:"iv"`
	StateUnchanged    bool     `json:"state_unchanged"`
	AttemptRandomness []Random `json:"attempt_randomness"`
	ErrorClass        string   `json:"error_class"`
	ErrorMessage      string   `json:"error_message"`
	CauseChain        []struct {
		Class   string `json:"class"`
		Module  string `json:"module"`
		Message string `json:"message"`
	} `json:"cause_chain"`
}

// OMEMO is twomemo.json or oldmemo.json.
type OMEMO struct {
	Namespace string `json:"namespace"`
	Constants struct {
		X3DHInfo             Hex `json:"x3dh_info"`
		RootChainInfo        Hex `json:"root_chain_info"`
		MessageKeyInfo       Hex `json:"message_key_info"`
		MessageChainConstant Hex `json:"message_chain_constant"`
		PayloadInfo          Hex `json:"payload_info"`
		RatchetMACLength     int `json:"ratchet_mac_length"`
	} `json:"constants"`
	Alice             Party    `json:"alice"`
	Bob               Party    `json:"bob"`
	BundleXML         string   `json:"bundle_xml"`
	BundlePreKeyOrder []uint32 `json:"bundle_pre_key_order"`
	DeviceListInput   []struct {
		ID    uint32  `json:"id"`
		Label *string `json:"label"`
	} `json:"device_list_input"`
	DeviceListXML string `json:"device_list_xml"`
	X3DH          struct {
		PreKeyChoice struct {
			ID  uint32 `json:"id"`
			Pub Hex    `json:"pub"`
		} `json:"pre_key_choice"`
		EphemeralPriv  Hex `json:"ephemeral_priv"`
		EphemeralPub   Hex `json:"ephemeral_pub"`
		DH1            Hex `json:"dh1"`
		DH2            Hex `json:"dh2"`
		DH3            Hex `json:"dh3"`
		DH4            Hex `json:"dh4"`
		HKDFIKM        Hex `json:"hkdf_ikm"`
		SharedSecret   Hex `json:"shared_secret"`
		AssociatedData Hex `json:"associated_data"`
		Header         struct {
			IdentityKeyEd25519 Hex    `json:"identity_key_ed25519"`
			EphemeralKey       Hex    `json:"ephemeral_key"`
			SignedPreKey       Hex    `json:"signed_pre_key"`
			SignedPreKeyID     uint32 `json:"signed_pre_key_id"`
			PreKey             Hex    `json:"pre_key"`
			PreKeyID           uint32 `json:"pre_key_id"`
		} `json:"header"`
	} `json:"x3dh"`
	RatchetPrivateKeys []struct {
		ConsumedAt string `json:"consumed_at"`
		Label      string `json:"label"`
		Priv       Hex    `json:"priv"`
		Pub        Hex    `json:"pub"`
	} `json:"ratchet_private_keys"`
	Events   []Event    `json:"events"`
	Messages []Message  `json:"messages"`
	Negative []Negative `json:"negative"`
}

// MessageByName returns the message record called name, or nil.
func (f *OMEMO) MessageByName(name string) *Message {
	for i := range f.Messages {
		if f.Messages[i].Name == name {
			return &f.Messages[i]
		}
	}
	return nil
}

// NegativeFor returns the negative[] entry for an event (op and message), or
// nil.
func (f *OMEMO) NegativeFor(op, message string) *Negative {
	for i := range f.Negative {
		if f.Negative[i].Op == op && f.Negative[i].Message == message {
			return &f.Negative[i]
		}
	}
	return nil
}

// Party returns alice or bob by name ("alice", "bob"), or nil.
func (f *OMEMO) Party(name string) *Party {
	switch strings.ToLower(name) {
	case "alice":
		return &f.Alice
	case "bob":
		return &f.Bob
	}
	return nil
}
