package backendcore

import (
	"errors"
	"fmt"
	"io"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/internal/doubleratchet"
	"mellium.im/omemo/internal/x3dh"
	"mellium.im/omemo/internal/xeddsa"
)

// ReadRand fills b from r.
func ReadRand(r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("omemo: reading randomness: %w", err)
	}
	return nil
}

// BuildActive runs X3DH against a peer bundle and starts the ratchet.
func BuildActive(k *Keys, ns string, cfg *doubleratchet.Config, b *x3dh.Bundle, jid string, deviceID uint32) (*Session, error) {
	var priv [32]byte
	if err := k.Read(func(st *x3dh.State) error { priv = st.IdentityPriv; return nil }); err != nil {
		return nil, err
	}
	res, hdr, err := x3dh.Active(k.X3DH, priv, b, k.Opts.Rand)
	if err != nil {
		return nil, WrapX3DHError(err)
	}
	dr, err := doubleratchet.NewActive(cfg, res.SharedSecret, b.SignedPreKey, k.Opts.Rand)
	if err != nil {
		return nil, WrapRatchetError(err)
	}
	return &Session{
		NS: ns, PeerJID: jid, Device: deviceID, Init: backends.Active,
		Kex: backends.KeyExchange{
			PreKeyID: hdr.PreKeyID, SignedPreKeyID: hdr.SignedPreKeyID,
			IdentityKey: hdr.IdentityKey, EphemeralKey: hdr.EphemeralKey,
		},
		AD: res.AssociatedData, DR: dr,
	}, nil
}

// BuildPassive completes X3DH for a received key exchange and prepares the
// ratchet; the first message still has to be decrypted with the session.
func BuildPassive(k *Keys, ns string, cfg *doubleratchet.Config, kex backends.KeyExchange, jid string, deviceID uint32) (*Session, error) {
	var res x3dh.Result
	var spkPriv [32]byte
	err := k.Read(func(st *x3dh.State) error {
		r, spk, err := st.Passive(k.X3DH, &x3dh.Header{
			IdentityKey: kex.IdentityKey, EphemeralKey: kex.EphemeralKey,
			SignedPreKeyID: kex.SignedPreKeyID, PreKeyID: kex.PreKeyID,
		})
		if err != nil {
			return err
		}
		res, spkPriv = r, spk.Priv
		return nil
	})
	if err != nil {
		if errors.Is(err, backends.ErrPurged) {
			return nil, err
		}
		return nil, WrapX3DHError(err)
	}
	dr, err := doubleratchet.NewPassive(cfg, res.SharedSecret, spkPriv)
	if err != nil {
		return nil, WrapRatchetError(err)
	}
	return &Session{
		NS: ns, PeerJID: jid, Device: deviceID, Init: backends.Passive,
		Kex: kex, AD: res.AssociatedData, DR: dr,
	}, nil
}

// WrapX3DHError maps the internal X3DH errors to the public ones.
func WrapX3DHError(err error) error {
	var cause error
	switch {
	case errors.Is(err, x3dh.ErrNoPreKey):
		cause = backends.ErrNoPreKey
	case errors.Is(err, x3dh.ErrBadSignature):
		cause = backends.ErrBadSignature
	case errors.Is(err, x3dh.ErrUnknownSignedPreKey):
		cause = backends.ErrUnknownSignedPreKey
	case errors.Is(err, x3dh.ErrUnknownPreKey):
		cause = backends.ErrUnknownPreKey
	case errors.Is(err, x3dh.ErrKeyMismatch):
		cause = backends.ErrCorruptKeys
	case errors.Is(err, x3dh.ErrInvalidKey), errors.Is(err, xeddsa.ErrInvalidKey),
		errors.Is(err, xeddsa.ErrSmallOrder), errors.Is(err, xeddsa.ErrZeroSharedSecret):
		cause = backends.ErrInvalidKey
	default:
		return fmt.Errorf("%w: %w", backends.ErrKeyExchange, err)
	}
	return fmt.Errorf("%w: %w", backends.ErrKeyExchange, cause)
}

// WrapRatchetError maps the internal Double Ratchet errors to the public
// ones; errors from the backend's own open function pass through.
func WrapRatchetError(err error) error {
	switch {
	case errors.Is(err, doubleratchet.ErrDuplicate):
		return backends.ErrDuplicateMessage
	case errors.Is(err, doubleratchet.ErrTooManySkipped):
		return backends.ErrTooManySkipped
	case errors.Is(err, doubleratchet.ErrInvalidKey), errors.Is(err, xeddsa.ErrZeroSharedSecret):
		return fmt.Errorf("%w: ratchet key", backends.ErrInvalidKey)
	}
	return err
}
