package oldmemo_test

import (
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/internal/vectors/omemokat"
)

// The tests in this file replay testdata/vectors/oldmemo.json, produced by
// python-oldmemo 1.0.3 over python-x3dh and python-doubleratchet (see
// testdata/vectors/README.md), and compare every value byte for byte.

var profile = omemokat.Profile{
	Legacy:         true,
	File:           "oldmemo.json",
	Namespace:      oldmemo.Namespace,
	X3DH:           oldmemo.X3DHConfig,
	RootInfo:       "WhisperRatchet",
	MessageKeyInfo: "WhisperMessageKeys",
	New: func(id *backends.IdentityKeyPair, keys []byte, opts *backends.Options) (backends.Backend, error) {
		return oldmemo.New(id, keys, opts)
	},
}

func TestReferenceX3DH(t *testing.T)         { omemokat.TestX3DH(t, profile) }
func TestReferenceSignedPreKey(t *testing.T) { omemokat.TestSignedPreKey(t, profile) }
func TestReferenceBundle(t *testing.T)       { omemokat.TestBundle(t, profile) }
func TestReferenceConversation(t *testing.T) { omemokat.TestConversation(t, profile) }
