package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"filippo.io/edwards25519"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
)

// crowdDomain is the domain of the synthetic peer accounts.
const crowdDomain = "@crowd.example"

// crowd is a session.Network in which any number of peer accounts exist
// only as OMEMO 2 device lists and bundles computed on demand: it holds no
// memory per device, so that the live heap of the process is the Manager's
// (and the store's). The own account's calls, and those about any other
// account, go to an embedded Network (an in-memory sessiontest server).
//
// Device i (0-based; account i/perJID, device id i%perJID+1) has identity
// key a_i·B with a_i = a_0 + i, and its bundle is the template's signed
// pre key and pre keys (building a session never changes a bundle, and a
// device cannot tell that others publish the same ones) with a signature
// of its own. Synthesising a device costs no scalar multiplication: a_i·B
// is the sum of two points of precomputed tables, and the signature (plain
// Ed25519, which is what XEdDSA signatures verify as) uses one fixed nonce
// point R = r·B for every device, s_i = r + H(R, A_i, SPK)·a_i. A fixed
// nonce with distinct keys and one message is harmless here; it would not
// be for real keys.
type crowd struct {
	session.Network
	perJID  int
	devices int

	tmpl bundle.Bundle // signed pre key and pre keys of every device
	a0   *edwards25519.Scalar
	r    *edwards25519.Scalar
	rEnc []byte
	hi   []*edwards25519.Point // (a_0 + 1024·h)·B
	lo   []*edwards25519.Point // l·B
}

const tableBits = 10

// newCrowd makes devices synthetic peer devices, perJID per account.
func newCrowd(own session.Network, devices, perJID int) (*crowd, error) {
	if perJID < 1 || devices < 1 {
		return nil, errors.New("crowd: no devices")
	}
	id, err := backends.GenerateIdentityKeyPair(rand.Reader)
	if err != nil {
		return nil, err
	}
	be, err := twomemo.New(id, nil, nil)
	if err != nil {
		return nil, err
	}
	tmpl, err := be.Bundle()
	if err != nil {
		return nil, err
	}
	tmpl.PreKeys = tmpl.PreKeys[:4:4]
	c := &crowd{Network: own, perJID: perJID, devices: devices, tmpl: tmpl}
	var seed [64]byte
	randScalar := func() *edwards25519.Scalar {
		if _, err := rand.Read(seed[:]); err != nil {
			panic(err)
		}
		s, _ := new(edwards25519.Scalar).SetUniformBytes(seed[:])
		return s
	}
	c.a0, c.r = randScalar(), randScalar()
	c.rEnc = new(edwards25519.Point).ScalarBaseMult(c.r).Bytes()

	B := edwards25519.NewGeneratorPoint()
	c.lo = make([]*edwards25519.Point, 1<<tableBits)
	c.lo[0] = edwards25519.NewIdentityPoint()
	for l := 1; l < len(c.lo); l++ {
		c.lo[l] = new(edwards25519.Point).Add(c.lo[l-1], B)
	}
	step := new(edwards25519.Point).Add(c.lo[len(c.lo)-1], B) // 1024·B
	c.hi = make([]*edwards25519.Point, (devices>>tableBits)+1)
	c.hi[0] = new(edwards25519.Point).ScalarBaseMult(c.a0)
	for h := 1; h < len(c.hi); h++ {
		c.hi[h] = new(edwards25519.Point).Add(c.hi[h-1], step)
	}
	// The synthetic bundles must be as good as real ones.
	for _, i := range []int{0, devices / 2, devices - 1} {
		b := c.bundle(i)
		if !ed25519.Verify(b.IdentityKey[:], b.SignedPreKey[:], b.SignedPreKeySignature[:]) {
			return nil, fmt.Errorf("crowd: the synthetic bundle of device %d does not verify", i)
		}
		if _, err := be.BundleIdentityKey(b); err != nil {
			return nil, fmt.Errorf("crowd: device %d: %w", i, err)
		}
	}
	return c, nil
}

// jid is the JID of a synthetic account.
func (c *crowd) jid(account int) string { return "p" + strconv.Itoa(account) + crowdDomain }

// accounts is the number of synthetic accounts.
func (c *crowd) accounts() int { return (c.devices + c.perJID - 1) / c.perJID }

// account parses a synthetic account's JID.
func (c *crowd) account(jid string) (int, bool) {
	rest, ok := strings.CutSuffix(jid, crowdDomain)
	if !ok || !strings.HasPrefix(rest, "p") {
		return 0, false
	}
	n, err := strconv.Atoi(rest[1:])
	if err != nil || n < 0 || n >= c.accounts() {
		return 0, false
	}
	return n, true
}

// list is the device list of an account.
func (c *crowd) list(account int) devicelist.List {
	l := devicelist.List{Namespace: twomemo.Namespace}
	for d := range c.perJID {
		if account*c.perJID+d < c.devices {
			l.Devices = append(l.Devices, devicelist.Device{ID: uint32(d + 1)})
		}
	}
	return l
}

// bundle synthesises the bundle of device i.
func (c *crowd) bundle(i int) bundle.Bundle {
	A := new(edwards25519.Point).Add(c.hi[i>>tableBits], c.lo[i&(1<<tableBits-1)])
	pub := A.Bytes()
	var le [32]byte
	binary.LittleEndian.PutUint64(le[:], uint64(i))
	si, _ := new(edwards25519.Scalar).SetCanonicalBytes(le[:])
	a := new(edwards25519.Scalar).Add(c.a0, si)
	h := sha512.New()
	h.Write(c.rEnc)
	h.Write(pub)
	h.Write(c.tmpl.SignedPreKey[:])
	k, _ := new(edwards25519.Scalar).SetUniformBytes(h.Sum(nil))
	s := new(edwards25519.Scalar).MultiplyAdd(k, a, c.r)
	b := c.tmpl
	copy(b.IdentityKey[:], pub)
	copy(b.SignedPreKeySignature[:32], c.rEnc)
	copy(b.SignedPreKeySignature[32:], s.Bytes())
	b.PreKeys = slices.Clone(c.tmpl.PreKeys)
	return b
}

func (c *crowd) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	n, ok := c.account(jid)
	if !ok {
		return c.Network.DownloadBundle(ctx, ns, jid, id)
	}
	i := n*c.perJID + int(id) - 1
	if ns != twomemo.Namespace || id < 1 || int(id) > c.perJID || i >= c.devices {
		return bundle.Bundle{}, session.ErrBundleNotFound
	}
	return c.bundle(i), nil
}

func (c *crowd) DownloadDeviceList(ctx context.Context, ns, jid string) (devicelist.List, error) {
	n, ok := c.account(jid)
	if !ok {
		return c.Network.DownloadDeviceList(ctx, ns, jid)
	}
	if ns != twomemo.Namespace {
		return devicelist.List{Namespace: ns}, nil
	}
	return c.list(n), nil
}
