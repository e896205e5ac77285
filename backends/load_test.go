package backends_test

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/internal/x3dh"
	"mellium.im/omemo/internal/xeddsa"
)

// storedAccount is what a restart reads for one account: its identity and
// the key state of each backend.
type storedAccount struct {
	id               *backends.IdentityKeyPair
	identityRaw      []byte
	twomemo, oldmemo []byte
}

// keyPool is a pool of X25519 key pairs from which synthetic accounts draw
// their keys, so that synthesising thousands of accounts does not cost
// hundreds of scalar multiplications each.
type keyPool struct {
	priv, pub [][32]byte
}

func newKeyPool(n int, r *rand.ChaCha8) *keyPool {
	p := &keyPool{priv: make([][32]byte, n), pub: make([][32]byte, n)}
	for i := range n {
		r.Read(p.priv[i][:])
		p.pub[i] = xeddsa.Curve25519PubFromPriv(p.priv[i])
	}
	return p
}

// synthState builds a consistent key state as a backend stores it: a
// signed pre key, an old one, and preKeys pre keys, drawn from the pool.
func synthState(p *keyPool, cfg *x3dh.Config, id *backends.IdentityKeyPair, preKeys int, r *rand.Rand, cr *rand.ChaCha8) *x3dh.State {
	spk := func(sid uint32) x3dh.SignedPreKey {
		i := r.IntN(len(p.priv))
		var nonce [64]byte
		cr.Read(nonce[:])
		return x3dh.SignedPreKey{
			ID: sid, Priv: p.priv[i], Pub: p.pub[i], Created: 1700000000,
			Signature: xeddsa.Sign(id.PrivateScalar(), cfg.EncodePublicKey(p.pub[i]), nonce),
		}
	}
	old := spk(1)
	st := &x3dh.State{
		IdentityPriv:       id.PrivateScalar(),
		IdentityPub:        id.PublicKey(),
		SignedPreKey:       spk(2),
		OldSignedPreKey:    &old,
		PreKeys:            make(map[uint32]*x3dh.PreKey, preKeys),
		NextSignedPreKeyID: 3,
		NextPreKeyID:       uint32(preKeys) + 1,
	}
	off := r.IntN(len(p.priv))
	for i := range preKeys {
		j := (off + i) % len(p.priv)
		pid := uint32(i + 1)
		st.PreKeys[pid] = &x3dh.PreKey{ID: pid, Priv: p.priv[j], Pub: p.pub[j]}
	}
	return st
}

// synthAccounts synthesises n accounts with 100 pre keys per backend, as
// the store of a process serving n accounts holds them: distinct identities
// and records, with consistent key pairs from a shared pool.
func synthAccounts(tb testing.TB, n int) []storedAccount {
	tb.Helper()
	cr := rand.NewChaCha8(sha256.Sum256([]byte("synthetic accounts")))
	r := rand.New(cr)
	pool := newKeyPool(1000, cr)
	out := make([]storedAccount, n)
	for i := range out {
		var seed [32]byte
		binary.BigEndian.PutUint64(seed[:], uint64(i))
		seed = sha256.Sum256(seed[:])
		a := &out[i]
		a.id = backends.IdentityKeyPairFromSeed(seed)
		a.identityRaw, _ = a.id.MarshalBinary()
		var err error
		if a.twomemo, err = synthState(pool, twomemo.X3DHConfig, a.id, 100, r, cr).MarshalBinary(); err != nil {
			tb.Fatal(err)
		}
		if a.oldmemo, err = synthState(pool, oldmemo.X3DHConfig, a.id, 100, r, cr).MarshalBinary(); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

var (
	accountsOnce sync.Once
	accounts     []storedAccount
)

// tenThousandAccounts synthesises the accounts once per process.
func tenThousandAccounts(b *testing.B) []storedAccount {
	accountsOnce.Do(func() {
		accounts = synthAccounts(b, 10000)
		// The synthetic states must be as good as real ones.
		a := &accounts[len(accounts)-1]
		for _, k := range kinds {
			raw := a.twomemo
			if k.name == "oldmemo" {
				raw = a.oldmemo
			}
			be, err := k.new(a.id, raw, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := be.(backends.KeyVerifier).VerifyKeys(); err != nil {
				b.Fatal(err)
			}
		}
	})
	return accounts
}

// BenchmarkLoadAccounts measures the CPU a restart spends loading the key
// state of accounts with both backends and 100 pre keys per backend. One op
// is one account, on one goroutine, taken in turn from 10,000 distinct
// accounts; the s/10k-accounts metric is the total for 10,000 accounts.
// "backends" loads the backend states (twomemo.New and oldmemo.New from the
// stored bytes, as the session manager does at start) for an identity
// already in memory; "identity" decodes the stored identity key pair, which
// the session manager does once per account.
//
// The states are stored in the current format. With the version-1 format,
// which stored no public keys, "backends" took about 40 s for 10,000
// accounts on the machine where it now takes about 0.2 s (see
// internal/x3dh.BenchmarkUnmarshalState for the per-state comparison).
func BenchmarkLoadAccounts(b *testing.B) {
	accts := tenThousandAccounts(b)
	opts := &backends.Options{Now: func() time.Time { return time.Unix(1700000000, 0) }}
	per10k := func(b *testing.B) {
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N)*1e4, "s/10k-accounts")
	}
	b.Run("backends", func(b *testing.B) {
		i := 0
		for b.Loop() {
			a := &accts[i%len(accts)]
			i++
			if _, err := twomemo.New(a.id, a.twomemo, opts); err != nil {
				b.Fatal(err)
			}
			if _, err := oldmemo.New(a.id, a.oldmemo, opts); err != nil {
				b.Fatal(err)
			}
		}
		per10k(b)
	})
	b.Run("identity", func(b *testing.B) {
		i := 0
		for b.Loop() {
			var id backends.IdentityKeyPair
			if err := id.UnmarshalBinary(accts[i%len(accts)].identityRaw); err != nil {
				b.Fatal(err)
			}
			i++
		}
		per10k(b)
	})
}
