package backendcore

import (
	"crypto/subtle"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/internal/x3dh"
	"mellium.im/omemo/internal/xeddsa"
)

// DefaultPreKeys is how many pre keys a new key state starts with.
const DefaultPreKeys = 100

// Keys is the own key material of one backend and the operations on it that
// both backends share. It is safe for concurrent use.
type Keys struct {
	Opts     backends.Options
	X3DH     *x3dh.Config
	Identity *backends.IdentityKeyPair

	mu    sync.RWMutex
	state *x3dh.State // nil once purged
	// verified is set once every key of state passed VerifyKeys, or for a
	// state generated in this process. Keys generated later (new pre keys,
	// a rotated signed pre key) are computed here, not loaded, so they keep
	// it: the complete check runs once per load, not at every upload.
	verified atomic.Bool
}

// NewKeys loads the key state from data, or creates a fresh one with
// DefaultPreKeys pre keys when data is empty. A stored state must belong to
// the given identity.
func NewKeys(cfg *x3dh.Config, id *backends.IdentityKeyPair, data []byte, opts backends.Options) (*Keys, error) {
	k := &Keys{Opts: opts, X3DH: cfg, Identity: id}
	if len(data) == 0 {
		st, err := x3dh.NewState(cfg, id.PrivateScalar(), DefaultPreKeys, opts.Now(), opts.Rand)
		if err != nil {
			return nil, fmt.Errorf("omemo: creating key state: %w", err)
		}
		k.state = st
		k.verified.Store(true)
		return k, nil
	}
	st := new(x3dh.State)
	if err := st.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("omemo: loading key state: %w", err)
	}
	// The stored identity key pair must be the given identity's: both halves
	// are compared, since the stored public key is no longer derived from
	// the stored private key on load. This also makes the identity part of
	// the state fully checked at no cost.
	priv := xeddsa.Clamp(id.PrivateScalar())
	same := subtle.ConstantTimeCompare(st.IdentityPriv[:], priv[:])
	clear(priv[:])
	if same != 1 || st.IdentityPub != id.PublicKey() {
		return nil, fmt.Errorf("omemo: loading key state: %w: identity key mismatch", backends.ErrInvalidIdentity)
	}
	k.state = st
	return k, nil
}

// VerifyKeys implements backends.KeyVerifier. Only loaded key material is
// checked: once it passed, or for a state created in this process, the
// check costs nothing (key material is only ever added by generating it).
func (k *Keys) VerifyKeys() error {
	if k.verified.Load() {
		return nil
	}
	return k.Read(func(st *x3dh.State) error {
		if err := st.VerifyKeys(k.X3DH); err != nil {
			return fmt.Errorf("%w: %w", backends.ErrCorruptKeys, err)
		}
		k.verified.Store(true)
		return nil
	})
}

// Read runs f with the state under the read lock.
func (k *Keys) Read(f func(st *x3dh.State) error) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.state == nil {
		return backends.ErrPurged
	}
	return f(k.state)
}

func (k *Keys) write(f func(st *x3dh.State) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state == nil {
		return backends.ErrPurged
	}
	return f(k.state)
}

// NumVisiblePreKeys implements backends.Backend.
func (k *Keys) NumVisiblePreKeys() int {
	n := 0
	_ = k.Read(func(st *x3dh.State) error { n = st.NumVisiblePreKeys(); return nil })
	return n
}

// GeneratePreKeys implements backends.Backend.
func (k *Keys) GeneratePreKeys(n int) error {
	if n < 0 || n > 10000 {
		return fmt.Errorf("omemo: generating %d pre keys: out of range", n)
	}
	return k.write(func(st *x3dh.State) error { return st.GeneratePreKeys(n, k.Opts.Rand) })
}

func preKeyOf(s backends.Session) (uint32, bool) {
	if s == nil || s.Initiation() != backends.Passive {
		return 0, false
	}
	return s.KeyExchange().PreKeyID, true
}

// HidePreKey implements backends.Backend.
func (k *Keys) HidePreKey(s backends.Session) bool {
	id, ok := preKeyOf(s)
	if !ok {
		return false
	}
	done := false
	_ = k.write(func(st *x3dh.State) error { done = st.HidePreKey(id); return nil })
	return done
}

// DeletePreKey implements backends.Backend.
func (k *Keys) DeletePreKey(s backends.Session) bool {
	id, ok := preKeyOf(s)
	if !ok {
		return false
	}
	done := false
	_ = k.write(func(st *x3dh.State) error { done = st.DeletePreKey(id); return nil })
	return done
}

// DeletePreKeyID implements backends.Backend.
func (k *Keys) DeletePreKeyID(id uint32) bool {
	done := false
	_ = k.write(func(st *x3dh.State) error { done = st.DeletePreKey(id); return nil })
	return done
}

// HiddenPreKeys implements backends.Backend.
func (k *Keys) HiddenPreKeys() []uint32 {
	var ids []uint32
	_ = k.Read(func(st *x3dh.State) error {
		for id, pk := range st.PreKeys {
			if pk != nil && pk.Hidden {
				ids = append(ids, id)
			}
		}
		return nil
	})
	slices.Sort(ids)
	return ids
}

// DeleteHiddenPreKeys implements backends.Backend.
func (k *Keys) DeleteHiddenPreKeys() int {
	n := 0
	_ = k.write(func(st *x3dh.State) error { n = st.DeleteHiddenPreKeys(); return nil })
	return n
}

// SignedPreKeyAge implements backends.Backend.
func (k *Keys) SignedPreKeyAge() time.Duration {
	var age time.Duration
	_ = k.Read(func(st *x3dh.State) error { age = st.SignedPreKeyAge(k.Opts.Now()); return nil })
	return age
}

// RotateSignedPreKey implements backends.Backend.
func (k *Keys) RotateSignedPreKey() error {
	return k.write(func(st *x3dh.State) error { return st.RotateSignedPreKey(k.X3DH, k.Opts.Now(), k.Opts.Rand) })
}

// MarshalKeys implements backends.Backend.
func (k *Keys) MarshalKeys() ([]byte, error) {
	var out []byte
	err := k.Read(func(st *x3dh.State) error {
		var err error
		out, err = st.MarshalBinary()
		return err
	})
	return out, err
}

// Purge implements backends.Backend.
func (k *Keys) Purge() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state != nil {
		k.state.IdentityPriv = [32]byte{}
		k.state.SignedPreKey.Priv = [32]byte{}
		if k.state.OldSignedPreKey != nil {
			k.state.OldSignedPreKey.Priv = [32]byte{}
		}
		for _, pk := range k.state.PreKeys {
			pk.Priv = [32]byte{}
		}
	}
	k.state = nil
}
