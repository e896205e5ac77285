#!/usr/bin/python3
"""
Python half of the end-to-end OMEMO benchmark (scripts/bench-e2e.sh): the same workloads as bench/e2e (Go),
run by the reference implementation, python-omemo 1.0.2 with the twomemo and oldmemo backends, on slixmpp
1.8.3 (Debian packages; run with /usr/bin/python3).

There is no slixmpp-omemo here, so this file is the integration: an ``omemo.SessionManager`` subclass per
device whose hooks use slixmpp's XEP-0060 plugin against the account's PEP service (nodes, item ids and
publish-options as in XEP-0384: access_model=open, persist_items=true), and slixmpp message handlers that
parse, decrypt, encrypt and serialise with the twomemo/oldmemo ``etree`` modules. OMEMO 2 plaintexts are
XEP-0420 envelopes (content/body, rpad, time, to, from) like the Go plugin's; legacy OMEMO encrypts the body.

Workloads (same meaning and output as the Go program):
  * first-message latency: the contact <prefix>bob has -devices devices online, each a separate process
    (role "recv"; a device is a separate machine in reality, and one asyncio loop would serialise their
    decryptions); for each run a fresh sender (<prefix>send<i>, empty storage) sends one message; the time from
    starting the send until the last device decrypted it (CLOCK_MONOTONIC, shared by the processes); median.
  * ping-pong: <prefix>ping and <prefix>pong answer each other until -messages messages were decrypted.

Results go to stdout as "key value" lines, diagnostics to stderr.
"""

import argparse
import asyncio
import base64
import datetime
import logging
import os
import secrets
import ssl
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, FrozenSet, List, Optional

import omemo
from omemo.session_manager import BundleNotFound, BundleDownloadFailed, UnknownNamespace
import oldmemo
import oldmemo.etree
import oldmemo.oldmemo
import twomemo
import twomemo.etree
import twomemo.twomemo
import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "testdata", "interop"))
from memstore import MemoryStorage  # noqa: E402

NS2 = twomemo.twomemo.NAMESPACE  # urn:xmpp:omemo:2
NS1 = oldmemo.oldmemo.NAMESPACE  # eu.siacs.conversations.axolotl
ETREE = {NS2: twomemo.etree, NS1: oldmemo.etree}
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_SCE = "urn:xmpp:sce:1"
NS_CLIENT = "jabber:client"

LOG = logging.getLogger("pyclient")


def devices_node(ns: str) -> str:
    return "urn:xmpp:omemo:2:devices" if ns == NS2 else "eu.siacs.conversations.axolotl.devicelist"


def bundle_node_item(ns: str, device_id: int) -> (str, str):
    if ns == NS2:
        return "urn:xmpp:omemo:2:bundles", str(device_id)
    return f"eu.siacs.conversations.axolotl.bundles:{device_id}", "current"


class IQLog:
    """Records the PEP downloads made during a measured operation, to compute their critical path."""

    def __init__(self) -> None:
        self.on = False
        self.calls: List[List[Any]] = []  # [label, start, end]

    def begin(self) -> None:
        self.on, self.calls = True, []

    def start(self, label: str) -> Optional[List[Any]]:
        if not self.on:
            return None
        c = [label, time.monotonic(), None]
        self.calls.append(c)
        return c

    def end(self) -> List[Any]:
        self.on = False
        # depth: one more than the deepest call that finished before this one started
        out = []
        for i, (label, s, e) in enumerate(self.calls):
            d = 1
            for pl, ps, pe, pd in out:
                if pe is not None and pe <= s:
                    d = max(d, pd + 1)
            out.append((label, s, e, d))
        return out


def sce_envelope(body: str, frm: str, to: str) -> bytes:
    env = ET.Element(f"{{{NS_SCE}}}envelope")
    content = ET.SubElement(env, f"{{{NS_SCE}}}content")
    ET.SubElement(content, f"{{{NS_CLIENT}}}body").text = body
    ET.SubElement(env, f"{{{NS_SCE}}}rpad").text = secrets.token_urlsafe(secrets.randbelow(150) // 4 + 1)
    ET.SubElement(env, f"{{{NS_SCE}}}time", stamp=datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))
    ET.SubElement(env, f"{{{NS_SCE}}}to", jid=to)
    ET.SubElement(env, f"{{{NS_SCE}}}from", jid=frm)
    return ET.tostring(env)


def sce_body(raw: bytes, sender: str, own: str) -> str:
    env = ET.fromstring(raw)
    if env.tag != f"{{{NS_SCE}}}envelope" or env.find(f"{{{NS_SCE}}}rpad") is None:
        raise ValueError("not an SCE envelope")
    frm = env.find(f"{{{NS_SCE}}}from")
    to = env.find(f"{{{NS_SCE}}}to")
    if (frm is not None and frm.get("jid") != sender) or (to is not None and to.get("jid") != own):
        raise ValueError("SCE affixes do not match the stanza")
    body = env.find(f"{{{NS_SCE}}}content/{{{NS_CLIENT}}}body")
    return "" if body is None or body.text is None else body.text


class Device(slixmpp.ClientXMPP):
    """One OMEMO device: a slixmpp client with its own SessionManager and in-memory storage."""

    def __init__(self, account: str, password: str, presence: bool, on_body) -> None:
        super().__init__(account, password)
        self.presence = presence
        self.on_body = on_body  # async (device, sender bare JID, body) -> None
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE  # loopback server, throw-away certificate
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0060")
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("message", self._message)
        self.storage = MemoryStorage()
        self.sm: Any = None
        self.lock = asyncio.Lock()  # one OMEMO operation at a time per device (like the Go plugin's worker)
        self.known_lists: set = set()
        self.iqlog = IQLog()

    async def _session_start(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_result(True)

    # -- PEP ----------------------------------------------------------------------------------------------

    async def pep_publish(self, node: str, item_id: str, payload: ET.Element, max_items: str) -> None:
        form = self["xep_0004"].make_form("submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
        form.add_field(var="pubsub#persist_items", value="true")
        form.add_field(var="pubsub#access_model", value="open")
        form.add_field(var="pubsub#max_items", value=max_items)
        await self["xep_0060"].publish(None, node, id=item_id, payload=payload, options=form)

    async def pep_item(self, owner: str, node: str, item_id: str) -> Optional[ET.Element]:
        c = self.iqlog.start(f"{node}#{item_id}" if not node.endswith("devices") and "devicelist" not in node
                             else node)
        try:
            iq = await self["xep_0060"].get_item(owner, node, item_id)
        except IqError as e:
            if e.condition == "item-not-found":
                return None
            raise
        finally:
            if c is not None:
                c[2] = time.monotonic()
        item = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items/{{{NS_PUBSUB}}}item")
        if item is None or len(item) == 0:
            return None
        return item[0]

    # -- SessionManager -----------------------------------------------------------------------------------

    async def start_omemo(self, label: str) -> None:
        dev = self

        class SM(omemo.SessionManager):
            @staticmethod
            async def _upload_bundle(bundle: omemo.Bundle) -> None:
                node, item = bundle_node_item(bundle.namespace, bundle.device_id)
                await dev.pep_publish(node, item, ETREE[bundle.namespace].serialize_bundle(bundle),
                                      "max" if bundle.namespace == NS2 else "1")

            @staticmethod
            async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
                if namespace not in ETREE:
                    raise UnknownNamespace(namespace)
                node, item = bundle_node_item(namespace, device_id)
                try:
                    el = await dev.pep_item(bare_jid, node, item)
                except (IqError, IqTimeout) as e:
                    raise BundleDownloadFailed(str(e)) from e
                if el is None:
                    raise BundleNotFound(f"{namespace} {bare_jid}/{device_id}")
                return ETREE[namespace].parse_bundle(el, bare_jid, device_id)

            @staticmethod
            async def _delete_bundle(namespace: str, device_id: int) -> None:
                node, item = bundle_node_item(namespace, device_id)
                try:
                    await dev["xep_0060"].retract(None, node, item, notify=True)
                except IqError:
                    pass

            @staticmethod
            async def _upload_device_list(namespace: str, device_list: Dict[int, Optional[str]]) -> None:
                await dev.pep_publish(devices_node(namespace), "current",
                                      ETREE[namespace].serialize_device_list(device_list), "1")

            @staticmethod
            async def _download_device_list(namespace: str, bare_jid: str) -> Dict[int, Optional[str]]:
                if namespace not in ETREE:
                    raise UnknownNamespace(namespace)
                el = await dev.pep_item(bare_jid, devices_node(namespace), "current")
                if el is None:
                    return {}
                return ETREE[namespace].parse_device_list(el)

            async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
                return {"trusted": omemo.TrustLevel.TRUSTED, "distrusted": omemo.TrustLevel.DISTRUSTED}.get(
                    device.trust_level_name, omemo.TrustLevel.UNDECIDED)

            async def _make_trust_decision(self, undecided: FrozenSet[omemo.DeviceInformation],
                                           identifier: Optional[str]) -> None:
                # Blind trust before verification, like the Go plugin's default (trust.BTBV).
                for d in undecided:
                    await self.set_trust(d.bare_jid, d.identity_key, "trusted")

            @staticmethod
            async def _send_message(message: omemo.Message, bare_jid: str) -> None:
                # Empty messages of the session manager (session completion, heartbeats).
                dev.send_encrypted(bare_jid, [message], None)

        self.sm = await SM.create(
            [twomemo.Twomemo(self.storage), oldmemo.Oldmemo(self.storage)],
            self.storage, self.boundjid.bare, label, "undecided",
            pre_key_refill_threshold=99,  # see smpeer.py: lower values trip a python-omemo 1.0.2 bug
        )
        await self.sm.after_history_sync()

    # -- messages -----------------------------------------------------------------------------------------

    def send_encrypted(self, to: str, messages: List[omemo.Message], fallback: Optional[str]) -> None:
        msg = self.make_message(mto=to, mtype="chat")
        msgs = sorted(messages, key=lambda m: 0 if m.namespace == NS2 else 1)
        for m in msgs:
            msg.xml.append(ETREE[m.namespace].serialize_message(m))
        ET.SubElement(msg.xml, "{urn:xmpp:eme:0}encryption", namespace=msgs[0].namespace,
                      name="OMEMO 2" if msgs[0].namespace == NS2 else "OMEMO")
        ET.SubElement(msg.xml, "{urn:xmpp:hints}store")
        if fallback:
            msg["body"] = fallback
        msg.send()

    async def send_body(self, to: str, body: str) -> int:
        """Encrypts and sends body to the bare JID to; returns the number of recipient devices."""
        async with self.lock:
            if to not in self.known_lists:
                # The contact's device lists, both namespaces in parallel (python-omemo leaves this to the
                # client; its own device lists were fetched by create()).
                lists = await asyncio.gather(*(self.sm._download_device_list(ns, to) for ns in (NS2, NS1)))
                for ns, devices in zip((NS2, NS1), lists):
                    await self.sm.update_device_list(ns, to, devices)
                self.known_lists.add(to)
            own = self.boundjid.bare
            messages, _errors = await self.sm.encrypt(
                frozenset([to]), {NS2: sce_envelope(body, own, to), NS1: body.encode()})
            self.send_encrypted(to, list(messages.keys()), "I sent you an OMEMO encrypted message")
            return sum(len(m.keys) for m in messages)

    async def _message(self, msg: slixmpp.Message) -> None:
        if msg["type"] not in ("chat", "normal"):
            return
        enc2 = msg.xml.find(f"{{{NS2}}}encrypted")
        enc1 = msg.xml.find(f"{{{NS1}}}encrypted")
        if (enc2 is None and enc1 is None) or self.sm is None:
            return
        sender = msg["from"].bare
        own = self.boundjid.bare
        try:
            async with self.lock:
                if enc2 is not None:
                    message = twomemo.etree.parse_message(enc2, sender)
                else:
                    message = await oldmemo.etree.parse_message(enc1, sender, own, self.sm)
                plaintext, _device, _ = await self.sm.decrypt(message)
        except Exception as e:  # a benchmark peer reports and goes on
            LOG.warning("%s: rejected message from %s: %s: %s", own, sender, type(e).__name__, e)
            return
        if plaintext is None:
            return  # empty OMEMO message
        body = sce_body(plaintext, sender, own) if message.namespace == NS2 else plaintext.decode()
        if body:
            await self.on_body(self, sender, body)


async def connect(args: argparse.Namespace, account: str, presence: bool, on_body) -> Device:
    host, port = args.addr.rsplit(":", 1)
    dev = Device(f"{account}@{args.domain}", args.password, presence, on_body)
    dev.connect(address=(host, int(port)))
    await asyncio.wait_for(dev.started, args.timeout)
    await dev.start_omemo(account)
    if presence:
        dev.send_presence()
    return dev


async def disconnect(dev: Device) -> None:
    try:
        await asyncio.wait_for(dev.disconnect(wait=1.0), 5)
    except Exception:
        pass


# -- roles ------------------------------------------------------------------------------------------------

async def role_recv(args: argparse.Namespace) -> None:
    """A device of the contact: prints "got <monotonic seconds> <body>" for every decrypted message."""

    async def on_body(_dev: Device, _sender: str, body: str) -> None:
        print(f"got {time.monotonic():.6f} {body}", flush=True)

    dev = await connect(args, args.account, True, on_body)
    print("ready", flush=True)
    # Until the parent closes stdin.
    loop = asyncio.get_event_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await disconnect(dev)


async def first_message(args: argparse.Namespace) -> float:
    bob = f"{args.prefix}bob@{args.domain}"
    procs = []
    got: Dict[str, List[float]] = {}
    arrived = asyncio.Event()

    async def read(proc) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            parts = line.decode().rstrip("\n").split(" ", 2)
            if parts[0] == "got" and len(parts) == 3:
                got.setdefault(parts[2], []).append(float(parts[1]))
                arrived.set()

    readers = []
    try:
        # One after the other: each device extends the device list the previous one published.
        for _ in range(args.devices):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), "-role", "recv", "-account", f"{args.prefix}bob",
                "-addr", args.addr, "-domain", args.domain, "-password", args.password,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            line = await asyncio.wait_for(proc.stdout.readline(), args.timeout)
            if line.strip() != b"ready":
                raise RuntimeError(f"recipient device did not start: {line!r}")
            readers.append(asyncio.create_task(read(proc)))
        lats = []
        for i in range(1, args.runs + 1):
            sender = await connect(args, f"{args.prefix}send{i}", False, None)
            body = f"first message {i}"
            sender.iqlog.begin()
            start = time.monotonic()
            n = await sender.send_body(bob, body)
            sent = time.monotonic()
            calls = sender.iqlog.end()
            deadline = time.monotonic() + args.timeout
            while len(got.get(body, [])) < args.devices:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), max(0.01, deadline - time.monotonic()))
            lat = max(got[body]) - start
            lats.append(lat)
            depth = max((c[3] for c in calls), default=0)
            print(f"py run {i}: latency {lat * 1e3:.2f} ms (send returned after {(sent - start) * 1e3:.2f} ms,"
                  f" {n} recipient devices); {len(calls)} PEP IQs, critical path {depth} sequential round trips",
                  file=sys.stderr)
            for d in range(1, depth + 1):
                cs = [c for c in calls if c[3] == d]
                print(f"    round {d}: {len(cs)} IQ(s) [{', '.join(sorted(c[0] for c in cs))}],"
                      f" +{(min(c[1] for c in cs) - start) * 1e3:.2f} → +{(max(c[2] for c in cs) - start) * 1e3:.2f} ms",
                      file=sys.stderr)
            print(f"py_run_latency_ms {lat * 1e3:.2f}", flush=True)
            print(f"py_run_pep_iqs {len(calls)}", flush=True)
            print(f"py_run_pep_rounds {depth}", flush=True)
            await disconnect(sender)
            if n != args.devices:
                raise RuntimeError(f"sent to {n} devices, want {args.devices}")
        return statistics.median(lats)
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        for r in readers:
            r.cancel()


async def ping_pong(args: argparse.Namespace) -> float:
    n = args.messages
    state = {"k": 0}
    done = asyncio.get_event_loop().create_future()
    a_jid = f"{args.prefix}ping@{args.domain}"
    b_jid = f"{args.prefix}pong@{args.domain}"

    async def on_body(dev: Device, sender: str, body: str) -> None:
        try:
            got = int(body.split(" ", 1)[1])
        except (IndexError, ValueError):
            return
        if got != state["k"]:
            if not done.done():
                done.set_exception(RuntimeError(f"got {got}, want {state['k']}"))
            return
        state["k"] += 1
        if state["k"] == n:
            if not done.done():
                done.set_result(time.monotonic())
            return
        await dev.send_body(sender, f"ping {state['k']}")

    a = await connect(args, f"{args.prefix}ping", True, on_body)
    b = await connect(args, f"{args.prefix}pong", True, on_body)
    try:
        start = time.monotonic()
        await a.send_body(b_jid, "ping 0")
        end = await asyncio.wait_for(done, 4 * args.timeout)
        print(f"py ping-pong: {n} messages in {(end - start) * 1e3:.1f} ms", file=sys.stderr)
        return n / (end - start)
    finally:
        await disconnect(a)
        await disconnect(b)


async def main(args: argparse.Namespace) -> None:
    if args.role == "recv":
        await role_recv(args)
        return
    lat = await first_message(args)
    mps = await ping_pong(args)
    print(f"latency_ms {lat * 1e3:.2f}")
    print(f"pingpong_mps {mps:.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-addr", default="127.0.0.1:5222")
    p.add_argument("-domain", default="localhost")
    p.add_argument("-password", default="password")
    p.add_argument("-prefix", default="py")
    p.add_argument("-runs", type=int, default=5)
    p.add_argument("-messages", type=int, default=200)
    p.add_argument("-devices", type=int, default=3)
    p.add_argument("-timeout", type=float, default=30.0)
    p.add_argument("-role", default="bench", choices=["bench", "recv"])
    p.add_argument("-account", default="")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # python-omemo warns about expected events of a fresh device (own device not yet listed, sender device
    # list fetched on first contact); keep the output readable.
    logging.getLogger("omemo").setLevel(logging.ERROR)
    asyncio.run(main(p.parse_args()))
