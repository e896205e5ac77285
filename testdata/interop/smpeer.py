#!/usr/bin/python3
"""
SessionManager-level OMEMO interop peer for the Go port, backed by a real python-omemo 1.0.2
``omemo.SessionManager`` with the twomemo and oldmemo backends (Debian packages, run by /usr/bin/python3).

Speaks JSON lines: one request per line on stdin, exactly one response per line on stdout. Logs go to
stderr only. Binary values are standard base64, XML is passed as strings. See the "smpeer.py" section of
README.md in this directory for the protocol.

The process hosts any number of Python accounts (one SessionManager + in-memory storage each, keyed by bare
JID) and one or more fake PubSub "servers" (worlds) that hold device lists and bundles. The SessionManager
hooks of an account talk to its world. Messages the SessionManager sends by itself (empty messages: session
completion, heartbeats, the history-sync queue) are serialised into the account's outbox. The Go side never
gets callbacks: it pulls and pushes data with explicit requests.
"""

import asyncio
import base64
import json
import logging
import sys
import traceback
import xml.etree.ElementTree as ET
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import omemo
from omemo.session_manager import (
    BundleNotFound, BundleUploadFailed, DeviceListUploadFailed, MessageSendingFailed, UnknownNamespace,
    UnknownTrustLevel,
)
import oldmemo
import oldmemo.etree
import oldmemo.oldmemo
import twomemo
import twomemo.etree
import twomemo.twomemo
from memstore import MemoryStorage


LOG = logging.getLogger("omemo-interop-smpeer")

NS_TWOMEMO = twomemo.twomemo.NAMESPACE  # "urn:xmpp:omemo:2"
NS_OLDMEMO = oldmemo.oldmemo.NAMESPACE  # "eu.siacs.conversations.axolotl"
ETREE = {NS_TWOMEMO: twomemo.etree, NS_OLDMEMO: oldmemo.etree}

TRUSTED = "trusted"
UNDECIDED = "undecided"
DISTRUSTED = "distrusted"
TRUST_LEVELS = {
    TRUSTED: omemo.TrustLevel.TRUSTED,
    UNDECIDED: omemo.TrustLevel.UNDECIDED,
    DISTRUSTED: omemo.TrustLevel.DISTRUSTED,
}

DEFAULT_WORLD = "default"


class PeerError(Exception):
    """A request error detected by the peer itself (bad arguments, unknown account, ...)."""


class UnknownAccount(PeerError):
    """The account was never created with the create op."""


def to_xml(ns: str, element: ET.Element) -> str:
    # register_namespace("", ns) drops the mapping of the other namespace, so register right before use.
    ET.register_namespace("", ns)
    return ET.tostring(element, encoding="unicode")


class World:
    """
    A fake PubSub service: device lists per (ns, jid) and bundles per (ns, jid, device), stored as the XML
    that would be published, so that everything read back goes through the real etree parsers (oldmemo
    drops labels, the legacy bundle signature carries the identity key sign bit, ...).
    """

    def __init__(self) -> None:
        self.device_lists: Dict[Tuple[str, str], str] = {}  # (ns, jid) -> <list>/<list> XML; absent = {}
        self.bundles: Dict[Tuple[str, str, int], str] = {}  # (ns, jid, device) -> <bundle> XML

    def put_device_list(self, ns: str, jid: str, devices: Dict[int, Optional[str]]) -> None:
        if not devices:
            # python-twomemo/oldmemo 1.0.x schemas reject empty lists; an empty node reads back as {}.
            self.device_lists.pop((ns, jid), None)
            return
        xml = to_xml(ns, ETREE[ns].serialize_device_list(devices))
        ETREE[ns].parse_device_list(ET.fromstring(xml))  # validates, e.g. label types
        self.device_lists[(ns, jid)] = xml

    def get_device_list(self, ns: str, jid: str) -> Dict[int, Optional[str]]:
        xml = self.device_lists.get((ns, jid))
        if xml is None:
            return {}
        return ETREE[ns].parse_device_list(ET.fromstring(xml))

    def put_bundle_xml(self, ns: str, jid: str, device: int, xml: str) -> None:
        ETREE[ns].parse_bundle(ET.fromstring(xml), jid, device)  # validate before storing
        self.bundles[(ns, jid, device)] = xml

    def get_bundle(self, ns: str, jid: str, device: int) -> omemo.Bundle:
        xml = self.bundles.get((ns, jid, device))
        if xml is None:
            raise BundleNotFound(f"no bundle for {ns} {jid}/{device}")
        return ETREE[ns].parse_bundle(ET.fromstring(xml), jid, device)


WORLDS: Dict[str, World] = {}


def get_world(name: Any) -> World:
    if name is None:
        name = DEFAULT_WORLD
    if not isinstance(name, str):
        raise PeerError("server must be a string")
    return WORLDS.setdefault(name, World())


class Account:
    """One Python OMEMO account: a SessionManager, its storage, its world and its outbox."""

    def __init__(self, jid: str, namespaces: List[str], world: World, auto_trust: bool) -> None:
        self.jid = jid
        self.namespaces = namespaces
        self.world = world
        self.auto_trust = auto_trust
        self.storage = MemoryStorage()
        self.backends: Dict[str, omemo.Backend] = {}
        for ns in namespaces:
            if ns == NS_TWOMEMO:
                self.backends[ns] = twomemo.Twomemo(self.storage)
            else:
                self.backends[ns] = oldmemo.Oldmemo(self.storage)
        self.outbox: List[Dict[str, Any]] = []
        self.sm: Any = None


ACCOUNTS: Dict[str, Account] = {}


def make_session_manager_class(acct: Account) -> type:
    """
    python-omemo 1.0.2 declares the XMPP hooks as staticmethods (no self), and create() calls some of them
    before the instance exists. Each account therefore gets its own subclass whose hooks close over it.
    """

    class AccountSessionManager(omemo.SessionManager):
        @staticmethod
        async def _upload_bundle(bundle: omemo.Bundle) -> None:
            ns = bundle.namespace
            if ns not in ETREE:
                raise UnknownNamespace(ns)
            try:
                acct.world.put_bundle_xml(
                    ns, acct.jid, bundle.device_id, to_xml(ns, ETREE[ns].serialize_bundle(bundle))
                )
            except Exception as e:
                raise BundleUploadFailed(f"{type(e).__name__}: {e}") from e
            LOG.info("%s: uploaded %s bundle of device %d", acct.jid, ns, bundle.device_id)

        @staticmethod
        async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
            if namespace not in ETREE:
                raise UnknownNamespace(namespace)
            return acct.world.get_bundle(namespace, bare_jid, device_id)

        @staticmethod
        async def _delete_bundle(namespace: str, device_id: int) -> None:
            acct.world.bundles.pop((namespace, acct.jid, device_id), None)

        @staticmethod
        async def _upload_device_list(namespace: str, device_list: Dict[int, Optional[str]]) -> None:
            if namespace not in ETREE:
                raise UnknownNamespace(namespace)
            try:
                acct.world.put_device_list(namespace, acct.jid, device_list)
            except Exception as e:
                raise DeviceListUploadFailed(f"{type(e).__name__}: {e}") from e
            LOG.info("%s: uploaded %s device list %s", acct.jid, namespace, sorted(device_list))

        @staticmethod
        async def _download_device_list(namespace: str, bare_jid: str) -> Dict[int, Optional[str]]:
            if namespace not in ETREE:
                raise UnknownNamespace(namespace)
            return acct.world.get_device_list(namespace, bare_jid)

        async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
            try:
                return TRUST_LEVELS[device.trust_level_name]
            except KeyError:
                raise UnknownTrustLevel(device.trust_level_name) from None

        async def _make_trust_decision(
            self, undecided: FrozenSet[omemo.DeviceInformation], identifier: Optional[str]
        ) -> None:
            if not acct.auto_trust:
                return  # the core raises StillUndecided
            for device in undecided:
                LOG.info("%s: auto-trusting %s/%d", acct.jid, device.bare_jid, device.device_id)
                await self.set_trust(device.bare_jid, device.identity_key, TRUSTED)

        @staticmethod
        async def _send_message(message: omemo.Message, bare_jid: str) -> None:
            ns = message.namespace
            try:
                xml = to_xml(ns, ETREE[ns].serialize_message(message))
            except Exception as e:
                raise MessageSendingFailed(f"{type(e).__name__}: {e}") from e
            acct.outbox.append({"to": bare_jid, "ns": ns, "xml": xml})
            LOG.info("%s: queued empty %s message to %s in outbox", acct.jid, ns, bare_jid)

    return AccountSessionManager


# ---------------------------------------------------------------------------------------------------------
# argument helpers

def b64d(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise PeerError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except Exception as e:
        raise PeerError(f"{what} is not valid standard base64: {e}") from e


def b64e(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else base64.b64encode(value).decode("ascii")


def req_str(req: Dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise PeerError(f"{key} must be a non-empty string")
    return value


def req_int(req: Dict[str, Any], key: str) -> int:
    value = req.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PeerError(f"{key} must be an integer")
    return value


def req_ns(req: Dict[str, Any], key: str = "ns") -> str:
    value = req.get(key)
    if value not in ETREE:
        raise PeerError(f"{key} must be {NS_TWOMEMO!r} or {NS_OLDMEMO!r}, got {value!r}")
    return value


def ns_list(value: Any, what: str) -> List[str]:
    if not isinstance(value, list) or not value or any(ns not in ETREE for ns in value):
        raise PeerError(f"{what} must be a non-empty list of known namespaces")
    if len(set(value)) != len(value):
        raise PeerError(f"{what} contains duplicates")
    return list(value)


def device_list_arg(value: Any) -> Dict[int, Optional[str]]:
    """{"id": label-or-null} with decimal string keys (JSON) → {int: label}."""
    if not isinstance(value, dict):
        raise PeerError("devices must be an object {\"device id\": label-or-null}")
    result: Dict[int, Optional[str]] = {}
    for k, v in value.items():
        try:
            dev = int(k)
        except ValueError:
            raise PeerError(f"device id {k!r} is not an integer") from None
        if str(dev) != k or not 1 <= dev <= 2 ** 31 - 1:
            raise PeerError(f"device id {k!r} out of range")
        if v is not None and not isinstance(v, str):
            raise PeerError(f"label of device {k} must be a string or null")
        result[dev] = v
    return result


def device_list_json(devices: Dict[int, Optional[str]]) -> Dict[str, Optional[str]]:
    return {str(k): v for k, v in sorted(devices.items())}


def get_account(req: Dict[str, Any]) -> Account:
    jid = req.get("account")
    if not isinstance(jid, str):
        raise PeerError("account must be a bare JID string")
    try:
        return ACCOUNTS[jid]
    except KeyError:
        raise UnknownAccount(f"no account {jid!r}; call create first") from None


def device_info_json(d: omemo.DeviceInformation) -> Dict[str, Any]:
    return {
        "jid": d.bare_jid,
        "device_id": d.device_id,
        "namespaces": sorted(d.namespaces),
        "active": {ns: active for ns, active in sorted(d.active)},
        "label": d.label,
        "identity_key": b64e(d.identity_key),
        "trust": d.trust_level_name,
    }


# ---------------------------------------------------------------------------------------------------------
# ops

async def op_create(req: Dict[str, Any]) -> Dict[str, Any]:
    jid = req_str(req, "jid")
    if jid in ACCOUNTS:
        raise PeerError(f"account {jid!r} exists already")
    namespaces = ns_list(req.get("namespaces"), "namespaces")
    label = req.get("label")
    if label is not None and not isinstance(label, str):
        raise PeerError("label must be a string or null")
    auto_trust = req.get("auto_trust", True)
    history_sync = req.get("history_sync", False)
    if not isinstance(auto_trust, bool) or not isinstance(history_sync, bool):
        raise PeerError("auto_trust and history_sync must be booleans")
    acct = Account(jid, namespaces, get_world(req.get("server")), auto_trust)
    cls = make_session_manager_class(acct)
    acct.sm = await cls.create(
        [acct.backends[ns] for ns in namespaces],
        acct.storage,
        jid,
        label,
        UNDECIDED,
        # Keep the default threshold of 99: with a lower one python-omemo 1.0.2 raises UnboundLocalError in
        # decrypt whenever a consumed pre key does not trigger a refill.
        pre_key_refill_threshold=99,
    )
    # A fresh SessionManager starts in history synchronisation mode. Leave it unless asked to stay in it.
    if not history_sync:
        await acct.sm.after_history_sync()
    ACCOUNTS[jid] = acct
    own, _ = await acct.sm.get_own_device_information()
    LOG.info("created %s device %d namespaces %s", jid, own.device_id, namespaces)
    return {"device_id": own.device_id, "identity_key": b64e(own.identity_key)}


async def op_server_get_device_list(req: Dict[str, Any]) -> Dict[str, Any]:
    ns = req_ns(req)
    jid = req_str(req, "jid")
    world = get_world(req.get("server"))
    return {
        "devices": device_list_json(world.get_device_list(ns, jid)),
        "device_list_xml": world.device_lists.get((ns, jid)),
    }


async def op_server_put_device_list(req: Dict[str, Any]) -> Dict[str, Any]:
    ns = req_ns(req)
    jid = req_str(req, "jid")
    world = get_world(req.get("server"))
    xml = req.get("device_list_xml")
    if xml is not None:
        if not isinstance(xml, str):
            raise PeerError("device_list_xml must be a string")
        devices = ETREE[ns].parse_device_list(ET.fromstring(xml))
    else:
        devices = device_list_arg(req.get("devices"))
    world.put_device_list(ns, jid, devices)
    return {"devices": device_list_json(world.get_device_list(ns, jid))}


async def op_server_get_bundle(req: Dict[str, Any]) -> Dict[str, Any]:
    ns = req_ns(req)
    jid = req_str(req, "jid")
    device = req_int(req, "device")
    world = get_world(req.get("server"))
    xml = world.bundles.get((ns, jid, device))
    if xml is None:
        raise BundleNotFound(f"no bundle for {ns} {jid}/{device}")
    bundle = world.get_bundle(ns, jid, device)
    return {"bundle_xml": xml, "identity_key": b64e(bundle.identity_key)}


async def op_server_put_bundle(req: Dict[str, Any]) -> Dict[str, Any]:
    ns = req_ns(req)
    jid = req_str(req, "jid")
    device = req_int(req, "device")
    xml = req.get("bundle_xml")
    if not isinstance(xml, str):
        raise PeerError("bundle_xml must be a string")
    world = get_world(req.get("server"))
    world.put_bundle_xml(ns, jid, device, xml)
    return {"identity_key": b64e(world.get_bundle(ns, jid, device).identity_key)}


async def op_update_device_list(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    await acct.sm.update_device_list(req_ns(req), req_str(req, "jid"), device_list_arg(req.get("devices")))
    return {}


async def op_refresh_device_list(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    await acct.sm.refresh_device_list(req_ns(req), req_str(req, "jid"))
    return {}


async def op_encrypt(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    to = req.get("to")
    if not isinstance(to, list) or not all(isinstance(j, str) and j for j in to):
        raise PeerError("to must be a list of bare JIDs")
    plaintext = req.get("plaintext")
    if not isinstance(plaintext, str):
        raise PeerError("plaintext must be a string")
    order = req.get("namespaces")
    if order is not None:
        order = ns_list(order, "namespaces")
    data = plaintext.encode("utf-8")
    messages, errors = await acct.sm.encrypt(
        frozenset(to), {ns: data for ns in acct.namespaces}, order
    )
    out = [
        {"ns": m.namespace, "xml": to_xml(m.namespace, ETREE[m.namespace].serialize_message(m))}
        for m in messages
    ]
    # Deterministic order: the account's priority order.
    out.sort(key=lambda m: acct.namespaces.index(m["ns"]))
    errs = [
        {
            "ns": e.namespace, "jid": e.bare_jid, "device": e.device_id,
            "error": f"{type(e.exception).__name__}: {e.exception}",
        }
        for e in errors
    ]
    return {"messages": out, "errors": errs}


async def op_decrypt(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    ns = req_ns(req)
    sender = req_str(req, "sender_jid")
    xml = req.get("xml")
    if not isinstance(xml, str):
        raise PeerError("xml must be a string")
    element = ET.fromstring(xml)
    if ns == NS_TWOMEMO:
        message = twomemo.etree.parse_message(element, sender)
    else:
        # Needs the SessionManager: the legacy wire format lacks the sign bit of the sender's identity key,
        # which is taken from the sender's known device (refreshing the device list / bundle if needed).
        message = await oldmemo.etree.parse_message(element, sender, acct.jid, acct.sm)
    plaintext, device, _ = await acct.sm.decrypt(message)
    text = None
    if plaintext is not None:
        try:
            text = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {
        "plaintext": text,
        "plaintext_b64": b64e(plaintext),
        "sender_device": device.device_id,
        "trust": device.trust_level_name,
    }


async def op_outbox(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    messages, acct.outbox = acct.outbox, []
    return {"messages": messages}


async def op_before_history_sync(req: Dict[str, Any]) -> Dict[str, Any]:
    get_account(req).sm.before_history_sync()
    return {}


async def op_after_history_sync(req: Dict[str, Any]) -> Dict[str, Any]:
    await get_account(req).sm.after_history_sync()
    return {}


async def op_device_info(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    jid = req_str(req, "jid")
    if jid == acct.jid:
        own, others = await acct.sm.get_own_device_information()
        devices = [own, *others]
    else:
        devices = list(await acct.sm.get_device_information(jid))
    devices.sort(key=lambda d: d.device_id)
    return {"devices": [device_info_json(d) for d in devices]}


async def op_set_trust(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    level = req.get("level")
    if level not in TRUST_LEVELS:
        raise PeerError(f"level must be one of {sorted(TRUST_LEVELS)}")
    ik = b64d(req.get("identity_key"), "identity_key")
    if len(ik) != 32:
        raise PeerError("identity_key must be a 32-byte Ed25519 public key")
    await acct.sm.set_trust(req_str(req, "jid"), ik, level)
    return {}


async def op_chain_lengths(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    ns = req_ns(req)
    backend = acct.backends.get(ns)
    if backend is None:
        raise UnknownNamespace(f"account {acct.jid} has no {ns} backend")
    session = await backend.load_session(req_str(req, "jid"), req_int(req, "device"))
    if session is None:
        raise omemo.NoSession(f"no {ns} session with {req['jid']}/{req['device']}")
    return {
        "sending": session.sending_chain_length,
        "receiving": session.receiving_chain_length,
        "confirmed": session.confirmed,
        "initiation": session.initiation.name,
    }


async def op_replace_sessions(req: Dict[str, Any]) -> Dict[str, Any]:
    acct = get_account(req)
    jid = req_str(req, "jid")
    device = req_int(req, "device")
    infos = [d for d in await acct.sm.get_device_information(jid) if d.device_id == device]
    if not infos:
        raise PeerError(f"unknown device {jid}/{device}")
    failed = await acct.sm.replace_sessions(infos[0])
    return {"failed": {ns: f"{type(e).__name__}: {e}" for ns, e in failed.items()}}


OPS = {
    "create": op_create,
    "server_get_device_list": op_server_get_device_list,
    "server_put_device_list": op_server_put_device_list,
    "server_get_bundle": op_server_get_bundle,
    "server_put_bundle": op_server_put_bundle,
    "update_device_list": op_update_device_list,
    "refresh_device_list": op_refresh_device_list,
    "encrypt": op_encrypt,
    "decrypt": op_decrypt,
    "outbox": op_outbox,
    "before_history_sync": op_before_history_sync,
    "after_history_sync": op_after_history_sync,
    "device_info": op_device_info,
    "set_trust": op_set_trust,
    "chain_lengths": op_chain_lengths,
    "replace_sessions": op_replace_sessions,
}


def error_response(e: BaseException) -> Dict[str, Any]:
    causes = []
    c: Optional[BaseException] = e.__cause__
    if c is None and not e.__suppress_context__:
        c = e.__context__
    while c is not None and len(causes) < 8:
        causes.append(f"{type(c).__name__}: {c}")
        c = c.__cause__
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "causes": causes}


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="smpeer.py %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("omemo").setLevel(logging.WARNING)
    logging.getLogger("omemo.core").setLevel(logging.WARNING)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req: Any = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise PeerError("request must be a JSON object")
            op = req.get("op")
            if op == "quit":
                resp: Dict[str, Any] = {"ok": True}
            elif op in OPS:
                resp = {"ok": True, **loop.run_until_complete(OPS[op](req))}
            else:
                raise PeerError(f"unknown op {op!r}")
        except BaseException as e:  # pylint: disable=broad-except
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            LOG.warning("request failed: %s", "".join(traceback.format_exception_only(type(e), e)).strip())
            LOG.debug("%s", traceback.format_exc())
            resp = error_response(e)
        if isinstance(req, dict) and "id" in req:
            resp["id"] = req["id"]
        out.write(json.dumps(resp) + "\n")
        out.flush()
        if isinstance(req, dict) and req.get("op") == "quit":
            break
    # The SessionManagers' signed pre key rotation loops never end by themselves (no shutdown() in 1.0.2).
    for task in asyncio.all_tasks(loop):
        task.cancel()
    try:
        loop.run_until_complete(asyncio.sleep(0))
    except Exception:  # pylint: disable=broad-except
        pass
    loop.close()


if __name__ == "__main__":
    main()
