#!/usr/bin/python3
"""
Self-test for smpeer.py: drives one smpeer.py process over its JSON-lines protocol exactly as the Go side
would. Alice's and Bob's accounts live in the same process but on different fake servers (worlds "a" and
"b"); device lists and bundles are carried between the worlds with server_get_* / server_put_*, as the Go
side does between its own world and the Python one.

Run with /usr/bin/python3; exit status 0 on success.
"""

import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional

TWO = "urn:xmpp:omemo:2"
OLD = "eu.siacs.conversations.axolotl"
HERE = os.path.dirname(os.path.abspath(__file__))


class Peer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "smpeer.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="utf-8",
        )
        self.next_id = 0

    def raw(self, line: str) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        resp = self.proc.stdout.readline()
        if not resp:
            raise AssertionError("peer exited")
        return json.loads(resp)

    def call(self, op: str, **kw: Any) -> Dict[str, Any]:
        self.next_id += 1
        req = {"id": self.next_id, "op": op, **kw}
        resp = self.raw(json.dumps(req))
        assert resp.get("id") == self.next_id, (req, resp)
        return resp

    def ok(self, op: str, **kw: Any) -> Dict[str, Any]:
        resp = self.call(op, **kw)
        if not resp.get("ok"):
            raise AssertionError(f"{op} {kw} failed: {resp}")
        return resp

    def fail(self, op: str, error_prefix: str, **kw: Any) -> Dict[str, Any]:
        resp = self.call(op, **kw)
        if resp.get("ok") or not resp.get("error", "").startswith(error_prefix):
            raise AssertionError(f"{op} {kw}: expected {error_prefix}, got {resp}")
        return resp

    def close(self) -> None:
        assert self.ok("quit")
        self.proc.wait(timeout=30)
        assert self.proc.returncode == 0, self.proc.returncode


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def has_kex(xml: str) -> bool:
    return re.search(r'\b(kex|prekey)="true"', xml) is not None


def ferry(p: Peer, jid: str, namespaces: List[str], src: str, dst: str, notify: Optional[str]) -> None:
    """Copy jid's device lists and bundles from world src to world dst (what the Go side does between the
    worlds), then optionally push the device lists to account `notify` like a PEP notification."""
    for ns in namespaces:
        devices = p.ok("server_get_device_list", server=src, ns=ns, jid=jid)["devices"]
        check(len(devices) >= 1, f"{jid} has no {ns} device list in {src}")
        p.ok("server_put_device_list", server=dst, ns=ns, jid=jid, devices=devices)
        for dev in devices:
            b = p.ok("server_get_bundle", server=src, ns=ns, jid=jid, device=int(dev))
            p.ok("server_put_bundle", server=dst, ns=ns, jid=jid, device=int(dev), bundle_xml=b["bundle_xml"])
        if notify is not None:
            p.ok("update_device_list", account=notify, ns=ns, jid=jid, devices=devices)


def make_pair(p: Peer, tag: str, a_ns: List[str], b_ns: List[str], **bob_kw: Any) -> Dict[str, Any]:
    alice, bob = f"alice-{tag}@a.example", f"bob-{tag}@b.example"
    a = p.ok("create", jid=alice, namespaces=a_ns, label="Alice's phone", server="a")
    b = p.ok("create", jid=bob, namespaces=b_ns, label=None, server="b", **bob_kw)
    # Bob's world → Alice's world, with a PEP-style notification for Alice.
    ferry(p, bob, b_ns, "b", "a", notify=alice)
    # Alice's world → Bob's world, no notification: Bob's SessionManager refreshes the unknown sender's
    # device list from its server during decrypt.
    ferry(p, alice, a_ns, "a", "b", notify=None)
    return {"alice": alice, "bob": bob, "a_dev": a["device_id"], "b_dev": b["device_id"],
            "a_ik": a["identity_key"], "b_ik": b["identity_key"]}


def single(resp: Dict[str, Any], ns: str) -> str:
    msgs = resp["messages"]
    check(len(msgs) == 1 and msgs[0]["ns"] == ns, f"expected one {ns} message, got {msgs}")
    check(resp["errors"] == [], f"unexpected encryption errors {resp['errors']}")
    return msgs[0]["xml"]


def handshake(
    p: Peer, s: Dict[str, Any], ns: str, order: Optional[List[str]] = None, bob_trust: str = "undecided"
) -> None:
    alice, bob = s["alice"], s["bob"]
    kw: Dict[str, Any] = {} if order is None else {"namespaces": order}
    xml = single(p.ok("encrypt", account=alice, to=[bob], plaintext="Hällo Bob 1", **kw), ns)
    check(has_kex(xml), "first message must carry the key exchange")
    check(p.ok("outbox", account=alice)["messages"] == [], "alice outbox must be empty")

    d = p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml)
    check(d["plaintext"] == "Hällo Bob 1", f"bad plaintext {d}")
    check(d["sender_device"] == s["a_dev"], "bad sender device")
    # decrypt makes no trust decision: Bob has not encrypted to Alice yet in a fresh pair.
    check(d["trust"] == bob_trust, f"expected trust {bob_trust}: {d}")

    # The automatic empty message completing the session.
    out = p.ok("outbox", account=bob)["messages"]
    check(len(out) == 1 and out[0]["to"] == alice and out[0]["ns"] == ns, f"bad bob outbox {out}")
    check(not has_kex(out[0]["xml"]), "bob's empty message must not carry a key exchange")
    check("<payload" not in out[0]["xml"], "empty message must have no payload")
    check(p.ok("outbox", account=bob)["messages"] == [], "outbox must be cleared")

    cl = p.ok("chain_lengths", account=alice, ns=ns, jid=bob, device=s["b_dev"])
    check(cl["confirmed"] is False and cl["initiation"] == "ACTIVE", f"{cl}")
    e = p.ok("decrypt", account=alice, ns=ns, sender_jid=bob, xml=out[0]["xml"])
    check(e["plaintext"] is None and e["plaintext_b64"] is None, f"empty message decrypted to {e}")
    check(e["sender_device"] == s["b_dev"], "bad sender device")
    cl = p.ok("chain_lengths", account=alice, ns=ns, jid=bob, device=s["b_dev"])
    check(cl["confirmed"] is True, f"alice's session must be confirmed: {cl}")
    check(p.ok("outbox", account=alice)["messages"] == [], "no empty reply to an empty message")

    # Confirmed: no more key exchange, and both directions work.
    xml = single(p.ok("encrypt", account=alice, to=[bob], plaintext="2", **kw), ns)
    check(not has_kex(xml), "key exchange still attached after confirmation")
    check(p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml)["plaintext"] == "2", "msg 2")
    xml = single(p.ok("encrypt", account=bob, to=[alice], plaintext="from bob", **kw), ns)
    check(not has_kex(xml), "passive side never attaches a key exchange")
    d = p.ok("decrypt", account=alice, ns=ns, sender_jid=bob, xml=xml)
    check(d["plaintext"] == "from bob" and d["trust"] == "trusted", f"{d}")
    check(p.ok("outbox", account=alice)["messages"] == [] and p.ok("outbox", account=bob)["messages"] == [],
          "no automatic messages in a normal exchange")


def heartbeat(p: Peer, s: Dict[str, Any], ns: str) -> None:
    alice, bob = s["alice"], s["bob"]
    beats: List[str] = []
    first = None
    for i in range(60):
        xml = single(p.ok("encrypt", account=alice, to=[bob], plaintext=f"m{i}"), ns)
        check(p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml)["plaintext"] == f"m{i}", f"m{i}")
        recv = p.ok("chain_lengths", account=bob, ns=ns, jid=alice, device=s["a_dev"])["receiving"]
        out = p.ok("outbox", account=bob)["messages"]
        check(len(out) == (1 if recv > 53 else 0), f"message {i}: receiving chain {recv}, outbox {out}")
        if out:
            check(out[0]["to"] == alice and out[0]["ns"] == ns, f"{out}")
            beats.append(out[0]["xml"])
            if first is None:
                first = i
    check(first is not None and len(beats) >= 6, f"heartbeats: first {first}, count {len(beats)}")
    for xml in beats:
        d = p.ok("decrypt", account=alice, ns=ns, sender_jid=bob, xml=xml)
        check(d["plaintext"] is None, "heartbeat must be empty")
    # Alice ratcheted on the heartbeat: Bob's next receiving chain starts again, no heartbeat.
    xml = single(p.ok("encrypt", account=alice, to=[bob], plaintext="after"), ns)
    check(p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml)["plaintext"] == "after", "after")
    check(p.ok("chain_lengths", account=bob, ns=ns, jid=alice, device=s["a_dev"])["receiving"] == 1, "chain")
    check(p.ok("outbox", account=bob)["messages"] == [], "no heartbeat on a fresh chain")
    print(f"  heartbeat ok ({ns}): first heartbeat after message index {first}, {len(beats)} heartbeats")


def history_sync(p: Peer, ns: str, tag: str, start_in_sync: bool) -> None:
    bob_kw = {"history_sync": True} if start_in_sync else {}
    s = make_pair(p, tag, [ns], [ns], **bob_kw)
    alice, bob = s["alice"], s["bob"]
    if not start_in_sync:
        p.ok("before_history_sync", account=bob)
    xml1 = single(p.ok("encrypt", account=alice, to=[bob], plaintext="h1"), ns)
    xml2 = single(p.ok("encrypt", account=alice, to=[bob], plaintext="h2"), ns)
    check(has_kex(xml1) and has_kex(xml2), "both carry the key exchange")
    check(p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml1)["plaintext"] == "h1", "h1")
    check(p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml2)["plaintext"] == "h2", "h2")
    check(p.ok("outbox", account=bob)["messages"] == [], "empty message must be queued during history sync")
    p.ok("after_history_sync", account=bob)
    out = p.ok("outbox", account=bob)["messages"]
    check(len(out) == 1 and out[0]["to"] == alice and out[0]["ns"] == ns, f"one queued message {out}")
    check(p.ok("decrypt", account=alice, ns=ns, sender_jid=bob, xml=out[0]["xml"])["plaintext"] is None, "e")
    check(p.ok("chain_lengths", account=alice, ns=ns, jid=bob, device=s["b_dev"])["confirmed"], "confirmed")
    print(f"  history sync ok ({ns}, start_in_sync={start_in_sync})")


def trust_and_errors(p: Peer, s: Dict[str, Any], ns: str) -> None:
    alice, bob = s["alice"], s["bob"]
    info = p.ok("device_info", account=alice, jid=bob)["devices"]
    check(len(info) == 1 and info[0]["device_id"] == s["b_dev"], f"{info}")
    check(info[0]["identity_key"] == s["b_ik"] and info[0]["trust"] == "trusted", f"{info}")
    check(ns in info[0]["namespaces"] and info[0]["active"][ns] is True, f"{info}")
    own = p.ok("device_info", account=alice, jid=alice)["devices"]
    check(own[0]["device_id"] == s["a_dev"] and own[0]["label"] == "Alice's phone", f"{own}")

    # Distrust: encrypt fails, decrypt refuses the sender.
    xml = single(p.ok("encrypt", account=bob, to=[alice], plaintext="x"), ns)
    p.ok("set_trust", account=alice, jid=bob, identity_key=s["b_ik"], level="distrusted")
    p.fail("encrypt", "NoEligibleDevices", account=alice, to=[bob], plaintext="no")
    p.fail("decrypt", "SenderDistrusted", account=alice, ns=ns, sender_jid=bob, xml=xml)
    p.ok("set_trust", account=alice, jid=bob, identity_key=s["b_ik"], level="trusted")
    check(p.ok("decrypt", account=alice, ns=ns, sender_jid=bob, xml=xml)["plaintext"] == "x", "x")
    p.fail("decrypt", "DecryptionFailed", account=alice, ns=ns, sender_jid=bob, xml=xml)  # replay

    # Bad requests do not break the peer.
    p.fail("set_trust", "PeerError", account=alice, jid=bob, identity_key=s["b_ik"], level="blind")
    p.fail("decrypt", "UnknownAccount", account="nobody@x", ns=ns, sender_jid=bob, xml=xml)
    p.fail("decrypt", "ParseError", account=alice, ns=ns, sender_jid=bob, xml="<encrypted")
    p.fail("server_get_bundle", "BundleNotFound", server="a", ns=ns, jid=bob, device=1)
    p.fail("server_put_bundle", "", server="a", ns=ns, jid=bob, device=1, bundle_xml="<bundle/>")
    p.fail("encrypt", "NoEligibleDevices", account=alice, to=["stranger@c.example"], plaintext="?")
    check(p.ok("server_get_device_list", server="a", ns=ns, jid="stranger@c.example")["devices"] == {}, "{}")
    resp = p.raw("not json")
    check(resp["ok"] is False and "id" not in resp, f"{resp}")
    # Still working afterwards.
    xml = single(p.ok("encrypt", account=alice, to=[bob], plaintext="still"), ns)
    check(p.ok("decrypt", account=bob, ns=ns, sender_jid=alice, xml=xml)["plaintext"] == "still", "still")


def no_auto_trust(p: Peer) -> None:
    alice, bob = "alice-strict@a.example", "bob-strict@b.example"
    a = p.ok("create", jid=alice, namespaces=[TWO], label=None, server="a", auto_trust=False)
    p.ok("create", jid=bob, namespaces=[TWO], label=None, server="b")
    ferry(p, bob, [TWO], "b", "a", notify=None)
    p.ok("refresh_device_list", account=alice, ns=TWO, jid=bob)
    p.fail("encrypt", "StillUndecided", account=alice, to=[bob], plaintext="?")
    info = p.ok("device_info", account=alice, jid=bob)["devices"]
    check(info[0]["trust"] == "undecided", f"{info}")
    p.ok("set_trust", account=alice, jid=bob, identity_key=info[0]["identity_key"], level="trusted")
    single(p.ok("encrypt", account=alice, to=[bob], plaintext="ok"), TWO)
    check(a["device_id"] > 0, "device id")


def main() -> None:
    p = Peer()
    try:
        # One backend each, and both with default priority / forced order.
        for tag, a_ns, b_ns, order, ns in [
            ("two", [TWO], [TWO], None, TWO),
            ("old", [OLD], [OLD], None, OLD),
            ("both", [TWO, OLD], [TWO, OLD], None, TWO),
            ("both-oldfirst", [OLD, TWO], [TWO, OLD], None, OLD),
            ("both-forced-old", [TWO, OLD], [TWO, OLD], [OLD], OLD),
            ("mixed", [TWO, OLD], [OLD], None, OLD),
        ]:
            s = make_pair(p, tag, a_ns, b_ns)
            handshake(p, s, ns, order)
            print(f"ok: handshake {tag} → {ns}")
            if tag == "both-forced-old":
                # Quirk: Bob learnt Alice's device only from the oldmemo device list (refreshed while
                # decrypting); decrypting a twomemo message from it would not add twomemo to its
                # namespaces, so Bob would answer with oldmemo. Deliver the twomemo list (PEP) first.
                info = p.ok("device_info", account=s["bob"], jid=s["alice"])["devices"]
                check(info[0]["namespaces"] == [OLD], f"bob knows alice only via oldmemo: {info}")
                ferry(p, s["alice"], [TWO], "a", "b", notify=s["bob"])
                info = p.ok("device_info", account=s["bob"], jid=s["alice"])["devices"]
                check(info[0]["namespaces"] == [OLD, TWO], f"{info}")
                # The same device pair then also gets a twomemo session (default priority).
                handshake(p, s, TWO, None, bob_trust="trusted")
                print("ok: second backend on the same device pair")
            if tag in ("two", "old"):
                heartbeat(p, s, ns)
                trust_and_errors(p, s, ns)
                print(f"ok: trust and errors {ns}")
        for ns in (TWO, OLD):
            history_sync(p, ns, f"hs-{ns[-3:]}", start_in_sync=False)
            history_sync(p, ns, f"hs0-{ns[-3:]}", start_in_sync=True)
        no_auto_trust(p)
        print("ok: auto_trust=false")
        p.close()
    except BaseException:
        p.proc.kill()
        raise
    print("smpeer selftest: all passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
