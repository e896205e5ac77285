#!/usr/bin/python3
"""
Self-test of peer.py: one peer process hosts two identities per namespace (alice and bob) and they talk to
each other through the JSON-lines protocol only. Covers, for both urn:xmpp:omemo:2 and
eu.siacs.conversations.axolotl: key exchange, repeated key exchange until confirmation, DH ratchet steps,
out-of-order delivery (skipped message keys, including a late key exchange message), an empty message,
replay rejection, tampering rejection, chain lengths, and error responses for malformed requests.

Run: /usr/bin/python3 testdata/interop/selftest.py   (exit status 0 on success)
"""

import base64
import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


class Peer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "peer.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if os.environ.get("SELFTEST_QUIET") else None,
            text=True,
        )
        self.n = 0

    def raw(self, line: str) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        resp = self.proc.stdout.readline()
        assert resp, "peer closed stdout"
        return json.loads(resp)

    def call(self, /, **req: Any) -> Dict[str, Any]:
        self.n += 1
        req["id"] = self.n
        resp = self.raw(json.dumps(req))
        assert resp.get("id") == self.n, resp
        return resp

    def ok(self, /, **req: Any) -> Dict[str, Any]:
        resp = self.call(**req)
        assert resp["ok"] is True, (req, resp)
        return resp

    def fail(self, /, **req: Any) -> Dict[str, Any]:
        resp = self.call(**req)
        assert resp["ok"] is False and isinstance(resp["error"], str), (req, resp)
        return resp

    def close(self) -> None:
        resp = self.call(op="quit")
        assert resp["ok"] is True
        assert self.proc.wait(timeout=10) == 0


def b64(s: Optional[str]) -> Optional[str]:
    return None if s is None else base64.b64encode(s.encode("utf-8")).decode("ascii")


def run_namespace(peer: Peer, ns: str) -> None:
    alice = ["alice@example.org", 1001 if ns == "urn:xmpp:omemo:2" else 2001]
    bob = ["bob@example.net", 3003 if ns == "urn:xmpp:omemo:2" else 4004]

    a_init = peer.ok(op="init", ns=ns, jid=alice[0], device=alice[1])
    b_init = peer.ok(op="init", ns=ns, jid=bob[0], device=bob[1])
    assert "<bundle" in b_init["bundle_xml"] and len(base64.b64decode(b_init["identity_key"])) == 32
    a_ik, b_ik = a_init["identity_key"], b_init["identity_key"]
    assert a_ik != b_ik

    def send(frm: list, to: list, text: Optional[str], bundle: Optional[str] = None) -> Dict[str, Any]:
        r = peer.ok(op="encrypt", ns=ns, **{"from": frm}, to=to, bundle_xml=bundle, plaintext=b64(text))
        r["_text"] = text
        r["_from"] = frm
        r["_to"] = to
        if text is None:
            assert r["payload"] is None
        else:
            assert r["payload"] is not None
        if ns == "eu.siacs.conversations.axolotl":
            assert r["iv"] is not None and len(base64.b64decode(r["iv"])) == 12
        else:
            assert r["iv"] is None
        return r

    def recv(msg: Dict[str, Any], expect_ok: bool = True, key: Optional[str] = None,
             payload: Any = "same") -> Dict[str, Any]:
        frm, to = msg["_from"], msg["_to"]
        ik = a_ik if frm == alice else b_ik
        req = dict(op="decrypt", ns=ns, to=to, **{"from": frm}, from_identity_key=ik,
                   key=key or msg["key"], kex=msg["kex"],
                   payload=msg["payload"] if payload == "same" else payload, iv=msg["iv"])
        if not expect_ok:
            r = peer.fail(**req)
            assert r["error"].startswith("DecryptionFailed: "), r
            return r
        r = peer.ok(**req)
        got = None if r["plaintext"] is None else base64.b64decode(r["plaintext"]).decode("utf-8")
        assert got == msg["_text"], (got, msg["_text"])
        return r

    def lengths(me: list, other: list) -> Dict[str, Any]:
        return peer.ok(op="chain_lengths", ns=ns, self=me, peer=other)

    # No session and no bundle: clean error
    e = peer.fail(op="encrypt", ns=ns, **{"from": alice}, to=bob, bundle_xml=None, plaintext=b64("x"))
    assert e["error"].startswith("NoSession"), e

    # Key exchange, repeated until confirmed
    a1 = send(alice, bob, "A1: hello with key exchange", b_init["bundle_xml"])
    assert a1["kex"] is True
    a2 = send(alice, bob, "A2: still carries the key exchange")
    assert a2["kex"] is True
    assert lengths(alice, bob) == {"ok": True, "sending": 2, "receiving": None, "confirmed": False,
                                   "initiation": "ACTIVE", "id": peer.n}
    recv(a1)
    r = recv(a1, expect_ok=False)  # replay of the key exchange message
    assert r["causes"][0].startswith("DuplicateMessageException"), r
    l_b = lengths(bob, alice)
    assert l_b["sending"] == 0 and l_b["receiving"] == 1 and l_b["initiation"] == "PASSIVE"

    # Bob answers: Alice performs a DH ratchet step and the session is confirmed
    b1 = send(bob, alice, "B1: reply")
    assert b1["kex"] is False
    recv(b1)
    l_a = lengths(alice, bob)
    assert l_a["confirmed"] is True and l_a["sending"] == 0 and l_a["receiving"] == 1, l_a

    # New chain from Alice, delivered out of order; A2 (old chain, kex) arrives last
    a3 = send(alice, bob, "A3")
    a4 = send(alice, bob, "A4: Grüße 👋")
    a5 = send(alice, bob, "A5: arrives first")
    assert not (a3["kex"] or a4["kex"] or a5["kex"])
    # tampered MAC (last byte of the key element is inside the MAC for both formats) must fail
    k = bytearray(base64.b64decode(a5["key"]))
    k[-1] ^= 1
    r = recv(a5, expect_ok=False, key=base64.b64encode(bytes(k)).decode("ascii"))
    assert r["causes"][0].startswith("AuthenticationFailedException"), r
    recv(a5)
    recv(a3)
    recv(a4)
    recv(a2)  # reuses the passive session (builds_same_session), key from the skipped keys
    r = recv(a4, expect_ok=False)  # replay of a message decrypted with a skipped key
    assert r["causes"][0].startswith("DuplicateMessageException"), r
    # A key exchange claiming a different identity key is rejected before any crypto
    r = peer.fail(op="decrypt", ns=ns, to=bob, **{"from": alice}, from_identity_key=b_ik, key=a1["key"],
                  kex=True, payload=a1["payload"], iv=a1["iv"])
    assert r["error"].startswith("PublicDataInconsistency"), r
    l_b = lengths(bob, alice)
    assert l_b["receiving"] == 3 and l_b["sending"] == 0, l_b

    # Empty message from Bob (new DH step on Alice's side), then normal traffic again
    b2 = send(bob, alice, None)
    r = recv(b2)
    assert r["plaintext"] is None
    b3 = send(bob, alice, "B3 after the empty message")
    recv(b3)
    a6 = send(alice, bob, "A6")
    # tampered payload must fail and leave the session untouched
    pl = bytearray(base64.b64decode(a6["payload"]))
    pl[0] ^= 1
    recv(a6, expect_ok=False, payload=base64.b64encode(bytes(pl)).decode("ascii"))
    recv(a6)

    # Errors never crash the peer
    peer.fail(op="decrypt", ns=ns, to=bob, **{"from": alice}, from_identity_key=a_ik,
              key=base64.b64encode(b"garbage").decode("ascii"), kex=False, payload=None, iv=a6["iv"])
    peer.fail(op="decrypt", ns=ns, to=bob, **{"from": alice}, from_identity_key=a_ik,
              key=base64.b64encode(b"garbage").decode("ascii"), kex=True, payload=None, iv=a6["iv"])
    peer.fail(op="decrypt", ns=ns, to=bob, **{"from": alice}, key="!!!", kex=False, payload=None, iv=None)
    peer.fail(op="chain_lengths", ns=ns, self=bob, peer=["nobody@example.com", 1])
    peer.fail(op="encrypt", ns=ns, **{"from": ["unknown@example.com", 5]}, to=bob, bundle_xml=None,
              plaintext=None)

    # After the errors the conversation still works
    b4 = send(bob, alice, "B4: still alive")
    recv(b4)
    print(f"selftest {ns}: ok", file=sys.stderr)


def main() -> None:
    peer = Peer()
    try:
        # Protocol-level errors
        r = peer.raw("this is not json")
        assert r["ok"] is False and r["error"].startswith("JSONDecodeError"), r
        r = peer.raw("[1,2,3]")
        assert r["ok"] is False, r
        peer.fail(op="no-such-op")
        peer.fail(op="init", ns="urn:example:unknown", jid="x@example.org", device=1)
        for ns in ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"):
            run_namespace(peer, ns)
    finally:
        if peer.proc.poll() is None:
            peer.close()
    print("selftest: all ok", file=sys.stderr)


if __name__ == "__main__":
    main()
