#!/usr/bin/python3
"""
Deterministic known-answer vector generator for the Go OMEMO port.

Run as ``/usr/bin/python3 testdata/vectors/generate.py`` (from the repository root or anywhere else); it
re-executes itself with ``PYTHONHASHSEED=0`` when needed and writes ``xeddsa.json``, ``twomemo.json`` and
``oldmemo.json`` next to this file. The output is byte-identical on every run.

The oracle is the Python reference stack installed from Debian (xeddsa 1.0.2, x3dh 1.0.3, doubleratchet
1.0.3, twomemo 1.0.3, oldmemo 1.0.3, omemo 1.0.2). The libraries are only *called*; every random value they
consume is injected (monkeypatched ``secrets.token_bytes`` / ``secrets.choice`` and
``DiffieHellmanRatchet._generate_priv``), every private key is SHA-256(label), and every library result
is recomputed here independently (hashlib/hmac/cryptography/PyNaCl and a tiny protobuf encoder) and
asserted. See README.md for the JSON layout.
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

# pylint: disable=wrong-import-position
import asyncio
import base64
import copy
import hashlib
import hmac
import json
import secrets
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import nacl.bindings

import xeddsa
import x3dh
import doubleratchet
from doubleratchet.recommended import diffie_hellman_ratchet_curve25519
import omemo
from omemo.session import Initiation
import twomemo.twomemo
import twomemo.etree
import oldmemo.oldmemo
import oldmemo.etree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from memstore import MemoryStorage  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))

VERSIONS = {
    "xeddsa": xeddsa.__version__["short"] if isinstance(xeddsa.__version__, dict) else str(xeddsa.__version__),
    "x3dh": x3dh.__version__["short"] if isinstance(x3dh.__version__, dict) else str(x3dh.__version__),
    "doubleratchet": (
        doubleratchet.__version__["short"]
        if isinstance(doubleratchet.__version__, dict) else str(doubleratchet.__version__)
    ),
    "omemo": omemo.__version__["short"] if isinstance(omemo.__version__, dict) else str(omemo.__version__),
}

P = 2 ** 255 - 19
Q = 2 ** 252 + 27742317777372353535851937790883648493


###########
# helpers #
###########

def h(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else data.hex()


def sha256(label: str) -> bytes:
    return hashlib.sha256(label.encode("utf-8")).digest()


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def x25519(priv: bytes, pub: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))


def x25519_pub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def clamp(k: bytes) -> bytes:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def le_int(b: bytes) -> int:
    return int.from_bytes(b, "little")


def int_le(i: int) -> bytes:
    return i.to_bytes(32, "little")


def scalar_base(s: int) -> bytes:
    return nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(int_le(s % Q))


def curve_to_ed(u_bytes: bytes, sign: bool) -> bytes:
    u = le_int(u_bytes) % P
    y = (u - 1) * pow(u + 1, P - 2, P) % P
    out = bytearray(int_le(y))
    out[31] = (out[31] & 0x7F) | (0x80 if sign else 0)
    return bytes(out)


def ed_to_curve(ed: bytes) -> bytes:
    y = le_int(ed) & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % P, P - 2, P) % P
    return int_le(u)


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def ed25519_verify_independent(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except Exception:  # pylint: disable=broad-except
        return False


# Minimal protobuf (proto2) encoder used to recompute the wire bytes independently of the python
# protobuf runtime. Fields are emitted in the order given (python-protobuf uses field-number order).

def pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_uint(field: int, value: int) -> bytes:
    return pb_varint(field << 3 | 0) + pb_varint(value)


def pb_bytes(field: int, value: bytes) -> bytes:
    return pb_varint(field << 3 | 2) + pb_varint(len(value)) + value


def dump(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False))
        f.write("\n")


def xml_string(elt: ET.Element, namespace: str) -> str:
    # ElementTree's default_namespace= option rejects unqualified attribute names, so the namespace is
    # registered with the empty prefix instead, which yields <elt xmlns="namespace" ...>.
    ET.register_namespace("", namespace)
    return ET.tostring(elt, encoding="unicode")


##########################
# randomness injection   #
##########################

class Randomness:
    """
    Replaces secrets.token_bytes, secrets.choice and DiffieHellmanRatchet._generate_priv with queues of
    planned values. Each operation sets a plan; after the operation the plan must be fully consumed. The
    consumption log (in actual call order) is what the JSON records.
    """

    def __init__(self) -> None:
        self.token_queue: List[Tuple[str, bytes]] = []
        self.choice_queue: List[Tuple[str, Any, Dict[str, Any]]] = []
        self.ratchet_queue: List[Tuple[str, str, bytes]] = []
        self.log: List[Dict[str, Any]] = []
        self.active = False

    def plan(
        self,
        tokens: Optional[List[Tuple[str, bytes]]] = None,
        choices: Optional[List[Tuple[str, Any, Dict[str, Any]]]] = None,
        ratchets: Optional[List[Tuple[str, str, bytes]]] = None
    ) -> None:
        self.token_queue = list(tokens or [])
        self.choice_queue = list(choices or [])
        self.ratchet_queue = list(ratchets or [])
        self.log = []
        self.active = True

    def finish(self) -> List[Dict[str, Any]]:
        assert not self.token_queue, f"unconsumed token_bytes plan: {self.token_queue}"
        assert not self.choice_queue, f"unconsumed choice plan: {self.choice_queue}"
        assert not self.ratchet_queue, f"unconsumed ratchet plan: {self.ratchet_queue}"
        self.active = False
        log = self.log
        self.log = []
        return log

    def token_bytes(self, n: Optional[int] = None) -> bytes:
        assert self.active, "unplanned call to secrets.token_bytes"
        assert self.token_queue, f"unplanned call to secrets.token_bytes({n})"
        label, value = self.token_queue.pop(0)
        assert len(value) == n, f"planned {label} has {len(value)} bytes, library asked for {n}"
        self.log.append({"label": label, "source": f"secrets.token_bytes({n})", "value": h(value)})
        return value

    def choice(self, seq: Any) -> Any:
        assert self.active and self.choice_queue, "unplanned call to secrets.choice"
        label, value, extra = self.choice_queue.pop(0)
        seq = list(seq)
        assert value in seq, "planned choice not among the candidates"
        entry = {"label": label, "source": "secrets.choice", "value": h(value)}
        entry.update(extra)
        self.log.append(entry)
        return value

    def generate_priv(self) -> bytes:
        assert self.active and self.ratchet_queue, "unplanned call to DiffieHellmanRatchet._generate_priv"
        label, name, value = self.ratchet_queue.pop(0)
        self.log.append({
            "label": label,
            "name": name,
            "source": "DiffieHellmanRatchet._generate_priv",
            "value": h(value),
            "pub": h(x25519_pub(value))
        })
        return value


RAND = Randomness()
secrets.token_bytes = RAND.token_bytes  # type: ignore[assignment]
secrets.choice = RAND.choice  # type: ignore[assignment]
diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet._generate_priv = staticmethod(  # type: ignore
    RAND.generate_priv
)


class AEADCapture:
    """Wraps a backend's AEADImpl.encrypt/decrypt to capture the message key and associated data."""

    def __init__(self, module: Any) -> None:
        self.calls: List[Dict[str, bytes]] = []
        cls = module.AEADImpl
        orig_enc = cls.encrypt.__func__
        orig_dec = cls.decrypt.__func__
        capture = self

        async def enc(klass: Any, plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
            out = await orig_enc(klass, plaintext, key, associated_data)
            capture.calls.append({"op": b"enc", "key": key, "ad": associated_data, "in": plaintext, "out": out})
            return out

        async def dec(klass: Any, ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
            out = await orig_dec(klass, ciphertext, key, associated_data)
            capture.calls.append({"op": b"dec", "key": key, "ad": associated_data, "in": ciphertext, "out": out})
            return out

        cls.encrypt = classmethod(enc)
        cls.decrypt = classmethod(dec)

    def take(self) -> List[Dict[str, bytes]]:
        calls = self.calls
        self.calls = []
        return calls


CAPTURES = {
    "twomemo": AEADCapture(twomemo.twomemo),
    "oldmemo": AEADCapture(oldmemo.oldmemo),
}


#########
# XEdDSA #
#########

def xeddsa_sign_independent(priv: bytes, msg: bytes, nonce: bytes) -> Dict[str, bytes]:
    a = le_int(priv) % Q
    A = scalar_base(a)
    r = le_int(hashlib.sha512(b"\xFE" + b"\xFF" * 31 + priv + msg + nonce).digest()) % Q
    R = scalar_base(r)
    hh = le_int(hashlib.sha512(R + A + msg).digest()) % Q
    s = (r + hh * a) % Q
    return {"A": A, "r": int_le(r), "R": R, "h": int_le(hh), "s": int_le(s), "sig": R + int_le(s)}


def identity_from_seed(seed_label: str, want_sign: Optional[int] = None) -> Dict[str, Any]:
    """Derives an identity from SHA-256(label); if want_sign is given, appends '#k' until it matches."""
    label = seed_label
    k = 0
    while True:
        seed = sha256(label)
        ed = xeddsa.seed_to_ed25519_pub(seed)
        if want_sign is None or (ed[31] >> 7) == want_sign:
            break
        k += 1
        label = f"{seed_label}#{k}"
    priv = xeddsa.seed_to_priv(seed)
    curve = xeddsa.priv_to_curve25519_pub(priv)
    # Independent checks
    assert priv == clamp(hashlib.sha512(seed).digest()[:32])
    assert ed == Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert ed == xeddsa.priv_to_ed25519_pub(priv)
    assert ed == scalar_base(le_int(priv))
    assert curve == x25519_pub(priv)
    assert curve == ed_to_curve(ed) == xeddsa.ed25519_pub_to_curve25519_pub(ed)
    assert curve_to_ed(curve, bool(ed[31] >> 7)) == ed
    return {
        "seed_label": label,
        "seed": h(seed),
        "priv": h(priv),
        "ed25519_pub": h(ed),
        "curve25519_pub": h(curve),
        "ed25519_sign_bit": ed[31] >> 7,
    }


def gen_xeddsa() -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "description": "XEdDSA / key conversion vectors from python-xeddsa (libxeddsa), recomputed with"
                       " hashlib/cryptography/PyNaCl. See README.md.",
        "versions": VERSIONS,
    }

    keys = []
    for i in range(6):
        ident = identity_from_seed(f"xeddsa/seed/{i}", want_sign=i % 2)
        priv = bytes.fromhex(ident["priv"])
        f0 = xeddsa.priv_force_sign(priv, False)
        f1 = xeddsa.priv_force_sign(priv, True)
        a = le_int(priv) % Q
        for forced, sign in ((f0, 0), (f1, 1)):
            # Independent: the forced key is either priv itself or its negation mod q, and the point
            # forced*B (no clamping) has the requested sign bit.
            assert le_int(forced) % Q in (a, (-a) % Q)
            assert (le_int(forced) % Q == a) == (ident["ed25519_sign_bit"] == sign)
            assert scalar_base(le_int(forced))[31] >> 7 == sign
            # Signing with the forced key uses forced*B without clamping.
            sig = xeddsa.ed25519_priv_sign(forced, b"force", bytes(64))
            assert xeddsa.ed25519_verify(sig, scalar_base(le_int(forced)), b"force")
            # Quirk: priv_to_ed25519_pub clamps its input (crypto_scalarmult_ed25519_base), which is a
            # no-op for the clamped OMEMO keys but changes a negated key.
            assert xeddsa.priv_to_ed25519_pub(forced) == nacl.bindings.crypto_scalarmult_ed25519_base(forced)
        ident["priv_force_sign_false"] = h(f0)
        ident["priv_force_sign_false_ed25519_pub"] = h(scalar_base(le_int(f0)))
        ident["priv_force_sign_true"] = h(f1)
        ident["priv_force_sign_true_ed25519_pub"] = h(scalar_base(le_int(f1)))
        keys.append(ident)
    out["keys"] = keys

    # Curve25519 -> Ed25519 with both sign bits, Ed25519 -> Curve25519
    conv = []
    for i in range(4):
        priv = clamp(sha256(f"xeddsa/conversion/{i}"))
        u = xeddsa.priv_to_curve25519_pub(priv)
        e0 = xeddsa.curve25519_pub_to_ed25519_pub(u, False)
        e1 = xeddsa.curve25519_pub_to_ed25519_pub(u, True)
        assert e0 == curve_to_ed(u, False) and e1 == curve_to_ed(u, True)
        assert xeddsa.ed25519_pub_to_curve25519_pub(e0) == u == xeddsa.ed25519_pub_to_curve25519_pub(e1)
        assert ed_to_curve(e0) == u == ed_to_curve(e1)
        conv.append({
            "curve25519_pub": h(u),
            "ed25519_pub_sign_0": h(e0),
            "ed25519_pub_sign_1": h(e1),
        })
    out["curve25519_to_ed25519"] = conv

    invalid = []
    for label, ed in (
        ("identity point (y=1), small order", int_le(1)),
        ("y=-1 point, small order", int_le(P - 1)),
        ("all zero (y=0), order 4", bytes(32)),
    ):
        try:
            xeddsa.ed25519_pub_to_curve25519_pub(ed)
            err = None
        except xeddsa.XEdDSAException as e:
            err = f"XEdDSAException: {e}"
        assert err is not None, label
        invalid.append({"description": label, "ed25519_pub": h(ed), "error": err})
    out["ed25519_to_curve25519_invalid"] = invalid

    sigs = []
    messages = [
        b"",
        b"abc",
        bytes(range(33)),
        b"\x05" + x25519_pub(clamp(sha256("xeddsa/spk"))),
        "Grüße 👋".encode("utf-8") * 20,
    ]
    for i, msg in enumerate(messages):
        ident = keys[i % len(keys)]
        priv = bytes.fromhex(ident["priv"])
        nonce = hashlib.sha512(f"xeddsa/nonce/{i}".encode()).digest()
        sig = xeddsa.ed25519_priv_sign(priv, msg, nonce)
        ind = xeddsa_sign_independent(priv, msg, nonce)
        assert sig == ind["sig"], f"signature {i} mismatch"
        ed = bytes.fromhex(ident["ed25519_pub"])
        assert ind["A"] == ed
        assert xeddsa.ed25519_verify(sig, ed, msg)
        assert ed25519_verify_independent(ed, sig, msg)
        assert sig[63] & 0x80 == 0
        sigs.append({
            "priv": h(priv),
            "ed25519_pub": h(ed),
            "ed25519_sign_bit": ed[31] >> 7,
            "msg": h(msg),
            "nonce_label": f"SHA-512(\"xeddsa/nonce/{i}\")",
            "nonce": h(nonce),
            "r": h(ind["r"]),
            "R": h(ind["R"]),
            "h": h(ind["h"]),
            "s": h(ind["s"]),
            "signature": h(sig),
        })
    out["xeddsa_signatures"] = sigs

    # A signature must not verify under the other sign bit / a modified message.
    s0 = sigs[1]
    bad_pub = bytearray(bytes.fromhex(s0["ed25519_pub"]))
    bad_pub[31] ^= 0x80
    assert not xeddsa.ed25519_verify(bytes.fromhex(s0["signature"]), bytes(bad_pub), bytes.fromhex(s0["msg"]))
    out["xeddsa_signature_negative"] = [{
        "description": "signature xeddsa_signatures[1] checked against the public key with the sign bit flipped",
        "ed25519_pub": h(bytes(bad_pub)),
        "msg": s0["msg"],
        "signature": s0["signature"],
        "valid": False,
    }, {
        "description": "signature xeddsa_signatures[1] with msg 'abd'",
        "ed25519_pub": s0["ed25519_pub"],
        "msg": h(b"abd"),
        "signature": s0["signature"],
        "valid": xeddsa.ed25519_verify(bytes.fromhex(s0["signature"]), bytes.fromhex(s0["ed25519_pub"]), b"abd"),
    }]
    assert out["xeddsa_signature_negative"][1]["valid"] is False

    seed_sigs = []
    for i, msg in enumerate([b"", b"OMEMO label"]):
        seed = sha256(f"xeddsa/seed_sign/{i}")
        sig = xeddsa.ed25519_seed_sign(seed, msg)
        assert sig == Ed25519PrivateKey.from_private_bytes(seed).sign(msg)
        seed_sigs.append({"seed": h(seed), "ed25519_pub": h(xeddsa.seed_to_ed25519_pub(seed)),
                          "msg": h(msg), "signature": h(sig)})
    out["ed25519_seed_signatures"] = seed_sigs

    pairs = []
    for i in range(3):
        a = sha256(f"xeddsa/x25519/{i}/a")
        b = sha256(f"xeddsa/x25519/{i}/b")
        # Note: the private keys are NOT pre-clamped; X25519 clamps internally.
        b_pub = x25519_pub(b)
        shared = xeddsa.x25519(a, b_pub)
        assert shared == x25519(a, b_pub) == x25519(b, x25519_pub(a))
        pairs.append({"priv": h(a), "pub": h(b_pub), "peer_priv": h(b), "shared": h(shared)})
    out["x25519"] = pairs

    x_invalid = []
    for label, pub in (("u=0", bytes(32)), ("u=1", int_le(1))):
        try:
            xeddsa.x25519(sha256("xeddsa/x25519/invalid"), pub)
            err = None
        except xeddsa.XEdDSAException as e:
            err = f"XEdDSAException: {e}"
        assert err is not None
        x_invalid.append({"description": f"small-order public key {label}: all-zero shared secret",
                          "priv": h(sha256("xeddsa/x25519/invalid")), "pub": h(pub), "error": err})
    out["x25519_invalid"] = x_invalid

    return out


############################
# backend conversation    #
############################

class BackendSpec:
    """Per-namespace knowledge used to recompute library results independently."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "twomemo":
            self.mod = twomemo.twomemo
            self.etree = twomemo.etree
            self.ns = twomemo.twomemo.NAMESPACE
            self.x3dh_info = b"OMEMO X3DH"
            self.root_info = b"OMEMO Root Chain"
            self.aead_info = b"OMEMO Message Key Material"
            self.mac_len = 16
        else:
            self.mod = oldmemo.oldmemo
            self.etree = oldmemo.etree
            self.ns = oldmemo.oldmemo.NAMESPACE
            self.x3dh_info = b"WhisperText"
            self.root_info = b"WhisperRatchet"
            self.aead_info = b"WhisperMessageKeys"
            self.mac_len = 8

    def enc_pub(self, curve_pub: bytes) -> bytes:
        """Encoding of a public key in signed data / wire: twomemo raw, oldmemo 0x05-prefixed."""
        return curve_pub if self.name == "twomemo" else b"\x05" + curve_pub

    def enc_identity(self, ident: Dict[str, Any]) -> bytes:
        """Identity key encoding in the associated data."""
        if self.name == "twomemo":
            return bytes.fromhex(ident["ed25519_pub"])
        return b"\x05" + bytes.fromhex(ident["curve25519_pub"])

    def omemo_message(self, dh_pub: bytes, n: int, pn: int, ciphertext: bytes) -> bytes:
        if self.name == "twomemo":
            return pb_uint(1, n) + pb_uint(2, pn) + pb_bytes(3, dh_pub) + pb_bytes(4, ciphertext)
        return b"\x33" + pb_bytes(1, b"\x05" + dh_pub) + pb_uint(2, n) + pb_uint(3, pn) + pb_bytes(4, ciphertext)

    def authenticated(self, mac: bytes, msg: bytes) -> bytes:
        if self.name == "twomemo":
            return pb_bytes(1, mac) + pb_bytes(2, msg)
        return msg + mac

    def key_exchange(self, pk_id: int, spk_id: int, ik_ed: bytes, ek: bytes, auth: bytes) -> bytes:
        if self.name == "twomemo":
            return pb_uint(1, pk_id) + pb_uint(2, spk_id) + pb_bytes(3, ik_ed) + pb_bytes(4, ek) + pb_bytes(5, auth)
        return b"\x33" + (
            pb_uint(1, pk_id) + pb_bytes(2, b"\x05" + ek) + pb_bytes(3, b"\x05" + ed_to_curve(ik_ed))
            + pb_bytes(4, auth) + pb_uint(6, spk_id)
        )


def root_kdf(spec: BackendSpec, rk: bytes, dh: bytes) -> Tuple[bytes, bytes]:
    out = hkdf(dh, rk, spec.root_info, 64)
    return out[:32], out[32:]


def chain_kdf(ck: bytes) -> Tuple[bytes, bytes]:
    """Returns (next chain key, message key)."""
    return hmac256(ck, b"\x02"), hmac256(ck, b"\x01")


def snapshot(session: Any) -> Optional[Dict[str, Any]]:
    if session is None:
        return None
    model = session.double_ratchet.model
    dh = model.diffie_hellman_ratchet
    skr = dh.symmetric_key_ratchet
    return {
        "initiation": session.initiation.name,
        "confirmed": session.confirmed,
        "root_key": h(dh.root_chain.key),
        "root_chain_length": dh.root_chain.length,
        "own_ratchet_priv": h(dh.own_ratchet_priv),
        "own_ratchet_pub": h(x25519_pub(dh.own_ratchet_priv)),
        "other_ratchet_pub": h(dh.other_ratchet_pub),
        "sending_chain_key": None if skr.sending_chain is None else h(skr.sending_chain.key),
        "sending_chain_length": None if skr.sending_chain is None else skr.sending_chain.length,
        "receiving_chain_key": None if skr.receiving_chain is None else h(skr.receiving_chain.key),
        "receiving_chain_length": None if skr.receiving_chain is None else skr.receiving_chain.length,
        "previous_sending_chain_length": skr.previous_sending_chain_length,
        "skipped_message_keys": [
            {"ratchet_pub": h(smk.ratchet_pub), "n": smk.index, "message_key": h(smk.message_key)}
            for smk in model.skipped_message_keys
        ],
    }


class Shadow:
    """Independent re-implementation of the ratchet state transitions over snapshot dicts."""

    def __init__(self, spec: BackendSpec, snap: Dict[str, Any]) -> None:
        self.spec = spec
        self.s = copy.deepcopy(snap)

    def b(self, key: str) -> Optional[bytes]:
        v = self.s[key]
        return None if v is None else bytes.fromhex(v)

    def send(self) -> Tuple[bytes, Tuple[bytes, int, int]]:
        ck, mk = chain_kdf(self.b("sending_chain_key"))
        header = (self.b("own_ratchet_pub"), self.s["sending_chain_length"], self.s["previous_sending_chain_length"] or 0)
        self.s["sending_chain_key"] = h(ck)
        self.s["sending_chain_length"] += 1
        return mk, header

    def _recv_step(self) -> bytes:
        ck, mk = chain_kdf(self.b("receiving_chain_key"))
        self.s["receiving_chain_key"] = h(ck)
        self.s["receiving_chain_length"] += 1
        return mk

    def _root_step(self, other: bytes) -> bytes:
        rk, ck = root_kdf(self.spec, self.b("root_key"), x25519(self.b("own_ratchet_priv"), other))
        self.s["root_key"] = h(rk)
        self.s["root_chain_length"] += 1
        return ck

    def receive(self, dh_pub: bytes, n: int, pn: int, new_priv: Optional[bytes]) -> Tuple[bytes, bool, bool]:
        """Returns (message key, used skipped key, performed DH step)."""
        for i, smk in enumerate(self.s["skipped_message_keys"]):
            if smk["ratchet_pub"] == h(dh_pub) and smk["n"] == n:
                del self.s["skipped_message_keys"][i]
                return bytes.fromhex(smk["message_key"]), True, False
        stepped = False
        if h(dh_pub) != self.s["other_ratchet_pub"]:
            stepped = True
            if self.s["receiving_chain_length"] is not None:
                while self.s["receiving_chain_length"] < pn:
                    idx = self.s["receiving_chain_length"]
                    mk = self._recv_step()
                    self.s["skipped_message_keys"].append(
                        {"ratchet_pub": self.s["other_ratchet_pub"], "n": idx, "message_key": h(mk)}
                    )
            self.s["other_ratchet_pub"] = h(dh_pub)
            self.s["receiving_chain_key"] = h(self._root_step(dh_pub))
            self.s["receiving_chain_length"] = 0
            assert new_priv is not None
            self.s["own_ratchet_priv"] = h(new_priv)
            self.s["own_ratchet_pub"] = h(x25519_pub(new_priv))
            self.s["previous_sending_chain_length"] = self.s["sending_chain_length"]
            self.s["sending_chain_key"] = h(self._root_step(dh_pub))
            self.s["sending_chain_length"] = 0
        while self.s["receiving_chain_length"] < n:
            idx = self.s["receiving_chain_length"]
            mk = self._recv_step()
            self.s["skipped_message_keys"].append(
                {"ratchet_pub": self.s["other_ratchet_pub"], "n": idx, "message_key": h(mk)}
            )
        assert self.s["receiving_chain_length"] == n, "duplicate in shadow"
        return self._recv_step(), False, stepped

    def compare(self, snap: Dict[str, Any], what: str) -> None:
        for key in (
            "root_key", "root_chain_length", "own_ratchet_priv", "own_ratchet_pub", "other_ratchet_pub",
            "sending_chain_key", "sending_chain_length", "receiving_chain_key", "receiving_chain_length",
            "previous_sending_chain_length"
        ):
            assert self.s[key] == snap[key], f"{what}: shadow {key} {self.s[key]} != library {snap[key]}"
        mine = sorted((k["ratchet_pub"], k["n"], k["message_key"]) for k in self.s["skipped_message_keys"])
        theirs = sorted((k["ratchet_pub"], k["n"], k["message_key"]) for k in snap["skipped_message_keys"])
        assert mine == theirs, f"{what}: skipped keys differ"


class Party:
    def __init__(self, name: str, jid: str, device_id: int, ident: Dict[str, Any], spec: BackendSpec) -> None:
        self.name = name
        self.jid = jid
        self.device_id = device_id
        self.ident = ident
        self.storage = MemoryStorage()
        self.backend = (
            twomemo.twomemo.Twomemo(self.storage) if spec.name == "twomemo" else oldmemo.oldmemo.Oldmemo(self.storage)
        )


SPK_TIMESTAMP = 1700000000


async def inject_state(
    spec: BackendSpec,
    party: Party,
    spk: Optional[Dict[str, Any]],
    pre_keys: List[Dict[str, Any]]
) -> None:
    """Stores an X3DH state with fixed keys, plus fixed SPK / pre key ids, in the party's storage."""
    seed = bytes.fromhex(party.ident["seed"])
    if spk is None:
        # A party that never publishes a bundle in the vectors still needs a valid SPK in its state.
        spk_priv = sha256(f"{spec.name}/{party.name}/signed_pre_key/priv")
        nonce = hashlib.sha512(f"{spec.name}/{party.name}/signed_pre_key/nonce".encode()).digest()
        sig = xeddsa.ed25519_priv_sign(
            bytes.fromhex(party.ident["priv"]), spec.enc_pub(x25519_pub(spk_priv)), nonce
        )
        spk = {"priv": h(spk_priv), "signature": h(sig), "id": 1}
    model = x3dh.models.BaseStateModel(
        identity_key=x3dh.models.IdentityKeyPairModel(secret=seed, secret_type=x3dh.types.SecretType.SEED),
        signed_pre_key=x3dh.models.SignedPreKeyPairModel(
            priv=bytes.fromhex(spk["priv"]),
            sig=bytes.fromhex(spk["signature"]),
            timestamp=SPK_TIMESTAMP
        ),
        old_signed_pre_key=None,
        pre_keys=frozenset(bytes.fromhex(pk["priv"]) for pk in pre_keys)
    )
    state = spec.mod.StateImpl.from_model(
        model, x3dh.IdentityKeyFormat.ED_25519, x3dh.HashFunction.SHA_256, spec.mod.StateImpl.INFO
    )
    await party.storage.store(f"/{spec.ns}/x3dh", state.json)
    await party.storage.store(f"/{spec.ns}/signed_pre_key_ids", {
        base64.b64encode(x25519_pub(bytes.fromhex(spk["priv"]))).decode("ascii"): spk["id"]
    })
    await party.storage.store(f"/{spec.ns}/pre_key_ids", {
        base64.b64encode(bytes.fromhex(pk["pub"])).decode("ascii"): pk["id"] for pk in pre_keys
    })
    await party.storage.store(f"/{spec.ns}/pre_key_id_counter", max([pk["id"] for pk in pre_keys], default=0))
    # Identity key as python-omemo's SessionManager would store it (not needed by the backends once the
    # x3dh state exists, kept for completeness).
    await party.storage.store("/ikp/is_seed", True)
    await party.storage.store_bytes("/ikp/key", seed)


def exc_info(e: BaseException) -> Dict[str, Any]:
    out: Dict[str, Any] = {"error_class": type(e).__name__, "error_message": str(e)}
    chain = []
    c = e.__cause__
    while c is not None:
        chain.append({"class": type(c).__name__, "module": type(c).__module__, "message": str(c)})
        c = c.__cause__
    out["cause_chain"] = chain
    return out


async def gen_backend(name: str) -> Dict[str, Any]:
    spec = BackendSpec(name)
    mod = spec.mod
    capture = CAPTURES[name]

    # Identities. For oldmemo both identities are chosen with Ed25519 sign bit 1, so that the sign-bit
    # transport tricks (bundle signature bit 7 of byte 63, key exchange sign bit from the known IK) matter.
    want = 1 if name == "oldmemo" else None
    alice = Party("alice", "alice@example.org", 1234567 if name == "twomemo" else 7654321,
                  identity_from_seed(f"{name}/alice/identity_seed", want), spec)
    bob = Party("bob", "bob@example.net", 987654321 if name == "twomemo" else 123456789,
                identity_from_seed(f"{name}/bob/identity_seed", want), spec)
    parties = {"alice": alice, "bob": bob}
    assert alice.ident != bob.ident

    # Bob's signed pre key
    bob_ik_priv = bytes.fromhex(bob.ident["priv"])
    spk_priv = sha256(f"{name}/bob/signed_pre_key/priv")
    spk_pub = x25519_pub(spk_priv)
    assert spk_pub == xeddsa.priv_to_curve25519_pub(spk_priv)
    spk_nonce = hashlib.sha512(f"{name}/bob/signed_pre_key/nonce".encode()).digest()
    signed_bytes = spec.enc_pub(spk_pub)
    spk_sig = xeddsa.ed25519_priv_sign(bob_ik_priv, signed_bytes, spk_nonce)
    assert spk_sig == xeddsa_sign_independent(bob_ik_priv, signed_bytes, spk_nonce)["sig"]
    bob_ed = bytes.fromhex(bob.ident["ed25519_pub"])
    assert ed25519_verify_independent(bob_ed, spk_sig, signed_bytes)
    spk = {
        "id": 1,
        "priv_label": f"SHA-256(\"{name}/bob/signed_pre_key/priv\")",
        "priv": h(spk_priv),
        "pub": h(spk_pub),
        "signature_nonce_label": f"SHA-512(\"{name}/bob/signed_pre_key/nonce\")",
        "signature_nonce": h(spk_nonce),
        "signed_bytes": h(signed_bytes),
        "signature": h(spk_sig),
        "timestamp": SPK_TIMESTAMP,
    }
    if name == "oldmemo":
        wire = bytearray(spk_sig)
        wire[63] |= bob_ed[31] & 0x80
        spk["signature_on_wire"] = h(bytes(wire))

    pre_keys = []
    for pk_id in (1, 2, 3):
        priv = sha256(f"{name}/bob/pre_key/{pk_id}/priv")
        pre_keys.append({
            "id": pk_id,
            "priv_label": f"SHA-256(\"{name}/bob/pre_key/{pk_id}/priv\")",
            "priv": h(priv),
            "pub": h(x25519_pub(priv)),
        })
    chosen_pk = pre_keys[1]

    await inject_state(spec, bob, spk, pre_keys)
    await inject_state(spec, alice, None, [])

    # Bundle XML as the backend serialises it
    bob_bundle = await bob.backend.get_bundle(bob.jid, bob.device_id)
    assert bob_bundle.signed_pre_key_id == 1
    assert bob_bundle.pre_key_ids == {bytes.fromhex(pk["pub"]): pk["id"] for pk in pre_keys}
    bundle_elt = spec.etree.serialize_bundle(bob_bundle)
    bundle_xml = xml_string(bundle_elt, spec.ns)
    parsed_bundle = spec.etree.parse_bundle(ET.fromstring(bundle_xml), bob.jid, bob.device_id)
    assert parsed_bundle == bob_bundle
    # Independent check of the bundle contents
    bundle_pre_keys = []
    if name == "twomemo":
        assert bundle_elt.find(f"{{{spec.ns}}}spk").get("id") == "1"
        assert base64.b64decode(bundle_elt.find(f"{{{spec.ns}}}spk").text) == spk_pub
        assert base64.b64decode(bundle_elt.find(f"{{{spec.ns}}}spks").text) == spk_sig
        assert base64.b64decode(bundle_elt.find(f"{{{spec.ns}}}ik").text) == bob_ed
        for pk_elt in bundle_elt.iter(f"{{{spec.ns}}}pk"):
            bundle_pre_keys.append(int(pk_elt.get("id")))
    else:
        ns = f"{{{spec.ns}}}"
        assert bundle_elt.find(f"{ns}signedPreKeyPublic").get("signedPreKeyId") == "1"
        assert base64.b64decode(bundle_elt.find(f"{ns}signedPreKeyPublic").text) == b"\x05" + spk_pub
        assert base64.b64decode(bundle_elt.find(f"{ns}signedPreKeySignature").text).hex() == spk["signature_on_wire"]
        assert base64.b64decode(bundle_elt.find(f"{ns}identityKey").text) == \
            b"\x05" + bytes.fromhex(bob.ident["curve25519_pub"])
        for pk_elt in bundle_elt.iter(f"{ns}preKeyPublic"):
            bundle_pre_keys.append(int(pk_elt.get("preKeyId")))
    assert sorted(bundle_pre_keys) == [1, 2, 3]

    device_list_input = {bob.device_id: "Bob's phone", 31415926: None}
    device_list_xml = xml_string(spec.etree.serialize_device_list(device_list_input), spec.ns)
    parsed_dl = spec.etree.parse_device_list(ET.fromstring(device_list_xml))
    if name == "twomemo":
        assert parsed_dl == device_list_input
    else:
        assert parsed_dl == {k: None for k in device_list_input}

    out: Dict[str, Any] = {
        "namespace": spec.ns,
        "backend": f"{name} (python-{name}), see versions",
        "versions": VERSIONS,
        "api_level": (
            f"{name}.{'Twomemo' if name == 'twomemo' else 'Oldmemo'} backend over an in-memory omemo.Storage;"
            " X3DH state injected via x3dh.BaseStateModel / StateImpl.from_model stored under"
            f" /{spec.ns}/x3dh, SPK/pre key ids injected via /{spec.ns}/signed_pre_key_ids and"
            f" /{spec.ns}/pre_key_ids; message handling follows omemo.SessionManager.encrypt/decrypt"
            " (non-sync mode) at the backend level."
        ),
        "xml_serialisation": "ET.register_namespace('', NS); xml.etree.ElementTree.tostring(element, encoding='unicode')",
        "constants": {
            "x3dh_info": h(spec.x3dh_info),
            "root_chain_info": h(spec.root_info),
            "message_key_info": h(spec.aead_info),
            "message_chain_constant": h(b"\x02\x01"),
            "payload_info": h(b"OMEMO Payload") if name == "twomemo" else None,
            "ratchet_mac_length": spec.mac_len,
        },
        "alice": {"jid": alice.jid, "device_id": alice.device_id, "identity": alice.ident,
                  "signed_pre_key_note": "Alice's own SPK is irrelevant here (she never publishes a bundle)."},
        "bob": {
            "jid": bob.jid,
            "device_id": bob.device_id,
            "identity": bob.ident,
            "signed_pre_key": spk,
            "pre_keys": pre_keys,
        },
        "bundle_xml": bundle_xml,
        "bundle_pre_key_order": bundle_pre_keys,
        "device_list_input": [{"id": k, "label": v} for k, v in device_list_input.items()],
        "device_list_xml": device_list_xml,
    }

    # ------------------------------------------------------------------------------------------------
    # Conversation
    # ------------------------------------------------------------------------------------------------
    script = [
        ("send", "A1"), ("receive", "A1"), ("replay", "A1"),
        ("send", "B1"), ("receive", "B1"),
        ("send", "A2"), ("send", "A3"), ("send", "A4"),
        ("tamper_mac", "A4"), ("receive", "A4"), ("receive", "A2"), ("receive", "A3"), ("replay", "A2"),
        ("send", "B2"), ("receive", "B2"),
        ("send", "B3"), ("receive", "B3"),
        ("send", "A5"), ("tamper_payload", "A5"), ("receive", "A5"),
        ("send", "B4"), ("receive", "B4"),
    ]
    plaintexts: Dict[str, Optional[str]] = {
        "A1": "Hi Bob! This is the first message, carrying the key exchange.",
        "B1": "Hi Alice.",
        "A2": "exactly 16 bytes",
        "A3": "Grüße aus Köln 👋 (UTF-8)",
        "A4": "A4 is delivered before A2 and A3, so those two come from skipped message keys. " * 2,
        "B2": None,
        "B3": "B3 follows the empty message B2 on the same sending chain.",
        "A5": "x",
        "B4": "Last message, after the third DH ratchet step on each side.",
    }
    senders = {m: ("alice" if m[0] == "A" else "bob") for m in plaintexts}

    # Ratchet private keys in consumption order, with who consumes them when.
    ratchet_plan: Dict[Tuple[str, str], List[Tuple[str, str, bytes]]] = {}

    def rp(label: str, name_: str) -> Tuple[str, str, bytes]:
        return (f"SHA-256(\"{name}/{label}\")", name_, sha256(f"{name}/{label}"))

    ratchet_plan[("send", "A1")] = [rp("alice/ratchet_priv/1", "ratchet_priv")]
    ratchet_plan[("receive", "A1")] = [rp("bob/ratchet_priv/1", "ratchet_priv")]
    ratchet_plan[("receive", "B1")] = [rp("alice/ratchet_priv/2", "ratchet_priv")]
    ratchet_plan[("receive", "A4")] = [rp("bob/ratchet_priv/2", "ratchet_priv")]
    ratchet_plan[("receive", "B2")] = [rp("alice/ratchet_priv/3", "ratchet_priv")]
    ratchet_plan[("receive", "A5")] = [rp("bob/ratchet_priv/3", "ratchet_priv")]
    ratchet_plan[("receive", "B4")] = [rp("alice/ratchet_priv/4", "ratchet_priv")]

    messages: Dict[str, Dict[str, Any]] = {}
    events: List[Dict[str, Any]] = []
    negative: List[Dict[str, Any]] = []
    x3dh_record: Dict[str, Any] = {}
    ik = {"alice": alice.ident, "bob": bob.ident}

    def payload_plan(msg: str, empty: bool) -> List[Tuple[str, bytes]]:
        if name == "twomemo":
            if empty:
                return []
            return [(f"SHA-256(\"{name}/{msg}/payload_key\")", sha256(f"{name}/{msg}/payload_key"))]
        key = sha256(f"{name}/{msg}/payload_key")[:16]
        iv = sha256(f"{name}/{msg}/payload_iv")[:12]
        if empty:
            # oldmemo encrypt_empty: ContentImpl.make_empty() (IV) runs before PlainKeyMaterialImpl.make_empty()
            return [
                (f"SHA-256(\"{name}/{msg}/payload_iv\")[0:12]", iv),
                (f"SHA-256(\"{name}/{msg}/payload_key\")[0:16]", key),
            ]
        return [
            (f"SHA-256(\"{name}/{msg}/payload_key\")[0:16]", key),
            (f"SHA-256(\"{name}/{msg}/payload_iv\")[0:12]", iv),
        ]

    async def decrypt_at(
        receiver: Party, sender: Party, rec: Dict[str, Any], key_element: bytes, payload: Optional[bytes]
    ) -> Tuple[Any, Any, Optional[bytes], Optional[str]]:
        """Backend-level version of SessionManager.decrypt. Returns (session, pkm, plaintext, kex handling)."""
        kex = rec["kex"]
        handling = None
        if kex:
            if name == "twomemo":
                kex_obj, auth = mod.KeyExchangeImpl.parse(key_element)
            else:
                sign = bool(bytes.fromhex(sender.ident["ed25519_pub"])[31] >> 7)
                kex_obj, auth = mod.KeyExchangeImpl.parse(key_element, sign)
            assert kex_obj.identity_key == bytes.fromhex(sender.ident["ed25519_pub"])
            ekm = mod.EncryptedKeyMaterialImpl.parse(auth, sender.jid, sender.device_id)
            session = await receiver.backend.load_session(sender.jid, sender.device_id)
            if (
                session is not None
                and session.initiation is Initiation.PASSIVE
                and session.key_exchange.builds_same_session(kex_obj)
            ):
                handling = "reused existing passive session"
                pkm = await receiver.backend.decrypt_key_material(session, ekm)
            else:
                handling = "built new passive session"
                session, pkm = await receiver.backend.build_session_passive(
                    sender.jid, sender.device_id, kex_obj, ekm
                )
        else:
            ekm = mod.EncryptedKeyMaterialImpl.parse(key_element, sender.jid, sender.device_id)
            session = await receiver.backend.load_session(sender.jid, sender.device_id)
            assert session is not None
            pkm = await receiver.backend.decrypt_key_material(session, ekm)
        if name == "twomemo":
            content = mod.ContentImpl(payload) if payload is not None else mod.ContentImpl.make_empty()
        else:
            content = mod.ContentImpl(payload or b"", bytes.fromhex(rec["payload"]["iv"]))
        plaintext = None if content.empty else await receiver.backend.decrypt_plaintext(content, pkm)
        return session, pkm, plaintext, handling

    for op, msg in script:
        s_name = senders[msg]
        r_name = "bob" if s_name == "alice" else "alice"
        sender, receiver = parties[s_name], parties[r_name]
        event: Dict[str, Any] = {"op": op, "message": msg}

        if op == "send":
            pt = plaintexts[msg]
            empty = pt is None
            tokens = payload_plan(msg, empty)
            choices = []
            if msg == "A1":
                choices = [(
                    "pre_key_choice",
                    bytes.fromhex(chosen_pk["pub"]),
                    {"pre_key_id": chosen_pk["id"]}
                )]
                tokens = tokens + [(
                    f"SHA-256(\"{name}/alice/ephemeral_priv\")", sha256(f"{name}/alice/ephemeral_priv")
                )]
            RAND.plan(tokens, choices, ratchet_plan.get((op, msg)))
            capture.take()
            session = await sender.backend.load_session(receiver.jid, receiver.device_id)
            before = snapshot(session)
            if empty:
                content, pkm = await sender.backend.encrypt_empty()
            else:
                content, pkm = await sender.backend.encrypt_plaintext(pt.encode("utf-8"))
            if session is None:
                bundle = spec.etree.parse_bundle(ET.fromstring(bundle_xml), bob.jid, bob.device_id)
                session, ekm = await sender.backend.build_session_active(
                    receiver.jid, receiver.device_id, bundle, pkm
                )
            else:
                ekm = await sender.backend.encrypt_key_material(session, pkm)
            randomness = RAND.finish()
            kex = session.initiation is Initiation.ACTIVE and not session.confirmed
            auth = ekm.serialize()
            if kex:
                key_element = session.key_exchange.serialize(auth)
                if name == "oldmemo":
                    key_element, kex_sign_bit = key_element
                    assert kex_sign_bit == bool(sender.ident["ed25519_sign_bit"])
            else:
                key_element = auth
            await sender.backend.store_session(session)
            after = snapshot(session)
            calls = capture.take()
            assert len(calls) == 1 and calls[0]["op"] == b"enc"
            mk = calls[0]["key"]
            lib_ad = calls[0]["ad"]

            # -- payload, independently
            pt_bytes = None if empty else pt.encode("utf-8")
            payload_rec: Dict[str, Any] = {}
            if name == "twomemo":
                if empty:
                    key_material = bytes(32)
                    assert pkm.key == bytes(32) and pkm.auth_tag == b"" and content.empty
                    payload_rec = {"key": h(bytes(32)), "ciphertext": None, "auth_tag": None,
                                   "key_material": h(key_material), "hkdf": None}
                else:
                    pkey = tokens[0][1]
                    okm = hkdf(pkey, bytes(32), b"OMEMO Payload", 80)
                    enc_k, auth_k, iv = okm[:32], okm[32:64], okm[64:]
                    ct = aes_cbc_encrypt(enc_k, iv, pt_bytes)
                    tag = hmac256(auth_k, ct)[:16]
                    assert content.ciphertext == ct and pkm.key == pkey and pkm.auth_tag == tag
                    key_material = pkey + tag
                    payload_rec = {"key": h(pkey), "hkdf": {"enc_key": h(enc_k), "auth_key": h(auth_k), "iv": h(iv)},
                                   "ciphertext": h(ct), "auth_tag": h(tag), "key_material": h(key_material)}
            else:
                pkey = sha256(f"{name}/{msg}/payload_key")[:16]
                iv = sha256(f"{name}/{msg}/payload_iv")[:12]
                assert pkm.key == pkey and content.initialization_vector == iv
                if empty:
                    assert pkm.auth_tag == b"" and content.empty
                    key_material = pkey
                    payload_rec = {"key": h(pkey), "iv": h(iv), "ciphertext": None, "auth_tag": None,
                                   "key_material": h(key_material)}
                else:
                    full = AESGCM(pkey).encrypt(iv, pt_bytes, None)
                    ct, tag = full[:-16], full[-16:]
                    assert content.ciphertext == ct and pkm.auth_tag == tag
                    key_material = pkey + tag
                    payload_rec = {"key": h(pkey), "iv": h(iv), "ciphertext": h(ct), "auth_tag": h(tag),
                                   "key_material": h(key_material)}
            assert calls[0]["in"] == key_material

            # -- double ratchet, independently
            if before is None:
                # Active session initiation: RK0 = SK, DH with Bob's SPK as the peer ratchet key.
                hdr = session.key_exchange.header
                ek_priv = sha256(f"{name}/alice/ephemeral_priv")
                assert hdr.ephemeral_key == x25519_pub(ek_priv)
                assert hdr.pre_key == bytes.fromhex(chosen_pk["pub"]) and hdr.signed_pre_key == spk_pub
                a_priv = bytes.fromhex(alice.ident["priv"])
                dh1 = x25519(a_priv, spk_pub)
                dh2 = x25519(ek_priv, bytes.fromhex(bob.ident["curve25519_pub"]))
                dh3 = x25519(ek_priv, spk_pub)
                dh4 = x25519(ek_priv, hdr.pre_key)
                ikm = b"\xFF" * 32 + dh1 + dh2 + dh3 + dh4
                sk = hkdf(ikm, bytes(32), spec.x3dh_info, 32)
                ad = spec.enc_identity(alice.ident) + spec.enc_identity(bob.ident)
                assert session.associated_data == ad
                # Library passive computation on Bob's state (no randomness consumed)
                bob_state = mod.StateImpl.from_json(
                    bob.storage.data[f"/{spec.ns}/x3dh"],
                    x3dh.IdentityKeyFormat.ED_25519, x3dh.HashFunction.SHA_256, mod.StateImpl.INFO
                )[0]
                lib_sk, lib_ad_x3dh, _ = await bob_state.get_shared_secret_passive(hdr)
                assert lib_sk == sk and lib_ad_x3dh == ad
                x3dh_record = {
                    "pre_key_choice": {"id": chosen_pk["id"], "pub": chosen_pk["pub"],
                                       "note": "secrets.choice patched to return this pre key"},
                    "ephemeral_priv_label": f"SHA-256(\"{name}/alice/ephemeral_priv\")",
                    "ephemeral_priv": h(ek_priv),
                    "ephemeral_pub": h(x25519_pub(ek_priv)),
                    "dh1": h(dh1), "dh2": h(dh2), "dh3": h(dh3), "dh4": h(dh4),
                    "hkdf_ikm": h(ikm),
                    "shared_secret": h(sk),
                    "associated_data": h(ad),
                    "header": {
                        "identity_key_ed25519": h(hdr.identity_key),
                        "ephemeral_key": h(hdr.ephemeral_key),
                        "signed_pre_key": h(hdr.signed_pre_key),
                        "signed_pre_key_id": session.key_exchange.signed_pre_key_id,
                        "pre_key": h(hdr.pre_key),
                        "pre_key_id": session.key_exchange.pre_key_id,
                    },
                }
                a1_priv = sha256(f"{name}/alice/ratchet_priv/1")
                rk1, ck0 = root_kdf(spec, sk, x25519(a1_priv, spk_pub))
                init = {
                    "initiation": "ACTIVE", "confirmed": False, "root_key": h(rk1), "root_chain_length": 1,
                    "own_ratchet_priv": h(a1_priv), "own_ratchet_pub": h(x25519_pub(a1_priv)),
                    "other_ratchet_pub": h(spk_pub), "sending_chain_key": h(ck0), "sending_chain_length": 0,
                    "receiving_chain_key": None, "receiving_chain_length": None,
                    "previous_sending_chain_length": None, "skipped_message_keys": [],
                }
                shadow = Shadow(spec, init)
                init_state = init
            else:
                shadow = Shadow(spec, before)
                init_state = None
            smk, (dh_pub, n, pn) = shadow.send()
            shadow.compare(after, f"{msg} send")
            assert smk == mk

            # -- ratchet AEAD, independently
            okm = hkdf(mk, bytes(32), spec.aead_info, 80)
            r_enc, r_auth, r_iv = okm[:32], okm[32:64], okm[64:]
            r_ct = aes_cbc_encrypt(r_enc, r_iv, key_material)
            omsg = spec.omemo_message(dh_pub, n, pn, r_ct)
            mac_ad = spec.enc_identity(sender.ident) + spec.enc_identity(receiver.ident)
            if name == "twomemo":
                mac_ad = spec.enc_identity(alice.ident) + spec.enc_identity(bob.ident)
            assert lib_ad[:len(mac_ad)] == mac_ad
            mac = hmac256(r_auth, mac_ad + omsg)[:spec.mac_len]
            auth_ind = spec.authenticated(mac, omsg)
            assert auth_ind == auth, f"{msg}: authenticated message mismatch"
            kex_rec = None
            if kex:
                kh = session.key_exchange
                kex_ind = spec.key_exchange(kh.pre_key_id, kh.signed_pre_key_id, kh.header.identity_key,
                                            kh.header.ephemeral_key, auth)
                assert kex_ind == key_element, f"{msg}: key exchange mismatch"
                kex_rec = {
                    "pk_id": kh.pre_key_id,
                    "spk_id": kh.signed_pre_key_id,
                    "ik": h(kh.header.identity_key if name == "twomemo" else b"\x05" + ed_to_curve(kh.header.identity_key)),
                    "ek": h(kh.header.ephemeral_key if name == "twomemo" else b"\x05" + kh.header.ephemeral_key),
                    "identity_key_ed25519": h(kh.header.identity_key),
                }
                if name == "oldmemo":
                    kex_rec["ik_sign_bit_not_transmitted"] = sender.ident["ed25519_sign_bit"]

            # -- <encrypted> element
            message_obj = omemo.Message(spec.ns, sender.jid, sender.device_id, content,
                                        frozenset([(ekm, session.key_exchange if kex else None)]))
            enc_elt = spec.etree.serialize_message(message_obj)
            enc_xml = xml_string(enc_elt, spec.ns)

            rec = {
                "name": msg,
                "sender": s_name,
                "receiver": r_name,
                "sender_jid": sender.jid,
                "sender_device_id": sender.device_id,
                "receiver_jid": receiver.jid,
                "receiver_device_id": receiver.device_id,
                "empty": empty,
                "plaintext": pt,
                "plaintext_hex": h(pt_bytes),
                "send_randomness": randomness,
                "dh_step_at_send": before is None,
                "payload": payload_rec,
                "plain_key_material": h(key_material),
                "header": {"dh_pub": h(dh_pub), "n": n, "pn": pn},
                "message_key": h(mk),
                "ratchet_aead": {
                    "enc_key": h(r_enc), "auth_key": h(r_auth), "iv": h(r_iv),
                    "ciphertext": h(r_ct),
                    "mac_associated_data": h(mac_ad),
                    "omemo_message": h(omsg),
                    "mac": h(mac),
                },
                "kex": kex,
                "key_exchange": kex_rec,
                "key_element": h(key_element),
                "key_element_b64": base64.b64encode(key_element).decode("ascii"),
                "encrypted_xml": enc_xml,
                "sender_state_before": before,
                "sender_state_initial": init_state,
                "sender_state_after": after,
            }
            messages[msg] = rec
            event["result"] = "ok"

        elif op == "receive":
            rec = messages[msg]
            key_element = bytes.fromhex(rec["key_element"])
            payload = None if rec["payload"]["ciphertext"] is None else bytes.fromhex(rec["payload"]["ciphertext"])
            RAND.plan([], [], ratchet_plan.get((op, msg)))
            capture.take()
            existing = await receiver.backend.load_session(sender.jid, sender.device_id)
            before = snapshot(existing)
            session, pkm, plaintext, handling = await decrypt_at(receiver, sender, rec, key_element, payload)
            await receiver.backend.store_session(session)
            deleted = None
            if rec["kex"]:
                deleted = await receiver.backend.delete_pre_key(session)
            randomness = RAND.finish()
            after = snapshot(session)
            calls = capture.take()
            assert len(calls) == 1 and calls[0]["op"] == b"dec"
            mk = calls[0]["key"]
            assert mk.hex() == rec["message_key"]
            expected_pt = None if rec["plaintext"] is None else rec["plaintext"].encode("utf-8")
            assert plaintext == expected_pt
            assert (pkm.key + pkm.auth_tag).hex() == rec["plain_key_material"]

            # Independent shadow of the receive
            if before is None:
                init = {
                    "initiation": "PASSIVE", "confirmed": False,
                    "root_key": x3dh_record["shared_secret"], "root_chain_length": 0,
                    "own_ratchet_priv": spk["priv"], "own_ratchet_pub": spk["pub"],
                    "other_ratchet_pub": None, "sending_chain_key": None, "sending_chain_length": None,
                    "receiving_chain_key": None, "receiving_chain_length": None,
                    "previous_sending_chain_length": None, "skipped_message_keys": [],
                }
                shadow = Shadow(spec, init)
            else:
                shadow = Shadow(spec, before)
            plan = ratchet_plan.get((op, msg))
            new_priv = plan[0][2] if plan else None
            hdr = rec["header"]
            smk, used_skipped, stepped = shadow.receive(bytes.fromhex(hdr["dh_pub"]), hdr["n"], hdr["pn"], new_priv)
            shadow.compare(after, f"{msg} receive")
            assert smk == mk
            assert stepped == bool(plan)
            assert after["confirmed"] is True or after["initiation"] == "PASSIVE"

            rec["receive"] = {
                "receive_randomness": randomness,
                "dh_step_at_receive": stepped,
                "used_skipped_message_key": used_skipped,
                "kex_handling": handling,
                "pre_key_deleted": deleted,
                "decrypted_plaintext_hex": h(plaintext),
                "receiver_state_before": before,
                "receiver_state_after": after,
            }
            event["result"] = "ok"
            event["decrypted"] = None if plaintext is None else plaintext.decode("utf-8")
            event["used_skipped_message_key"] = used_skipped

        else:
            # Negative vectors: must fail and must not change the stored state.
            rec = messages[msg]
            key_element = bytes.fromhex(rec["key_element"])
            payload = None if rec["payload"]["ciphertext"] is None else bytes.fromhex(rec["payload"]["ciphertext"])
            mutation = None
            if op == "tamper_mac":
                ke = bytearray(key_element)
                if name == "twomemo":
                    # OMEMOAuthenticatedMessage: 0a 10 <mac 16 bytes> ...; flip the first MAC byte.
                    assert not rec["kex"] and ke[0] == 0x0A and ke[1] == 0x10
                    ke[2] ^= 0x01
                    mutation = "key_element byte 2 (first MAC byte) XOR 0x01"
                else:
                    ke[-1] ^= 0x01
                    mutation = "key_element last byte (last MAC byte) XOR 0x01"
                key_element = bytes(ke)
            elif op == "tamper_payload":
                pl = bytearray(payload)
                pl[0] ^= 0x01
                payload = bytes(pl)
                mutation = "payload byte 0 XOR 0x01"
            else:
                mutation = "none (identical replay of an already decrypted message)"
            stored_before = copy.deepcopy(receiver.storage.data)
            # If the message starts a new receiving chain, the library performs the DH ratchet step on a
            # copy of the ratchet before authenticating, which draws a fresh ratchet private key that is
            # discarded together with the copy when decryption fails.
            discard = rp(f"{r_name}/discarded_ratchet_priv/{op}/{msg}", "discarded_ratchet_priv")
            RAND.plan([], [], [discard])
            capture.take()
            error = None
            try:
                await decrypt_at(receiver, sender, rec, key_element, payload)
            except Exception as e:  # pylint: disable=broad-except
                error = exc_info(e)
            RAND.ratchet_queue = []
            neg_randomness = RAND.finish()
            capture.take()
            assert error is not None, f"{op} {msg} did not fail"
            assert error["error_class"] == "DecryptionFailed"
            causes = [c["class"] for c in error["cause_chain"]]
            if op == "replay":
                assert causes == ["DuplicateMessageException"], causes
            elif op == "tamper_mac":
                assert causes == ["AuthenticationFailedException"], causes
            elif name == "twomemo":
                assert causes == [] and error["error_message"] == "Authentication tag verification failed."
            else:
                assert causes == ["InvalidTag"], causes
            assert receiver.storage.data == stored_before
            neg = {
                "name": f"{op}_{msg}",
                "op": op,
                "message": msg,
                "receiver": r_name,
                "mutation": mutation,
                "key_element": h(key_element),
                "kex": rec["kex"],
                "payload": h(payload),
                "iv": rec["payload"].get("iv"),
                "state_unchanged": True,
                "attempt_randomness": neg_randomness,
            }
            neg.update(error)
            negative.append(neg)
            event["result"] = "error"
            event["error_class"] = error["error_class"]
            event["cause_chain"] = [c["class"] for c in error["cause_chain"]]

        events.append(event)

    # Sanity checks on the conversation shape
    order = [(e["op"], e["message"]) for e in events]
    assert order.index(("receive", "A4")) < order.index(("receive", "A2")) < order.index(("receive", "A3"))
    assert messages["A2"]["receive"]["used_skipped_message_key"] and messages["A3"]["receive"]["used_skipped_message_key"]
    assert messages["A1"]["kex"] and not any(messages[m]["kex"] for m in messages if m != "A1")

    out["x3dh"] = x3dh_record
    out["ratchet_private_keys"] = [
        {"consumed_at": f"{op} {msg}", "label": lst[0][0], "priv": h(lst[0][2]), "pub": h(x25519_pub(lst[0][2]))}
        for (op, msg), lst in ratchet_plan.items()
    ]
    out["events"] = events
    out["messages"] = [messages[m] for m in plaintexts]
    out["negative"] = negative
    return out


def main() -> None:
    dump(os.path.join(HERE, "xeddsa.json"), gen_xeddsa())
    for name in ("twomemo", "oldmemo"):
        dump(os.path.join(HERE, f"{name}.json"), asyncio.run(gen_backend(name)))
    print("wrote xeddsa.json, twomemo.json, oldmemo.json", file=sys.stderr)


if __name__ == "__main__":
    main()
