#!/usr/bin/python3
"""
Live OMEMO interop peer for the Go port, backed by the Python reference stack (twomemo / oldmemo backends of
python-omemo, installed from Debian for /usr/bin/python3).

Speaks JSON lines: one request per line on stdin, exactly one response per line on stdout. Logs go to
stderr only. Binary values are standard base64. See README.md in this directory for the protocol.

The peer works at the *backend* level (omemo.Backend), mirroring what omemo.SessionManager.encrypt /
decrypt do in non-history-sync mode, with real randomness:

* encrypt: load the session with the peer device, or build an active session from the given bundle;
  attach the key exchange while the session is ACTIVE and unconfirmed; persist the session.
* decrypt: with a key exchange, reuse the stored PASSIVE session if KeyExchange.builds_same_session,
  otherwise build a new passive session (replacing any old one); without one, use the stored session.
  Decrypt the payload (unless empty), persist the session, then delete the used pre key and refill pre keys
  to 100 when at most 99 are visible, as the SessionManager does.
"""

import asyncio
import base64
import json
import logging
import sys
import traceback
import xml.etree.ElementTree as ET
from typing import Any, Dict, Optional, Tuple

import omemo
from omemo.session import Initiation
import oldmemo.etree
import oldmemo.oldmemo
import twomemo.etree
import twomemo.twomemo
from memstore import MemoryStorage


LOG = logging.getLogger("omemo-interop-peer")

NS_TWOMEMO = twomemo.twomemo.NAMESPACE  # "urn:xmpp:omemo:2"
NS_OLDMEMO = oldmemo.oldmemo.NAMESPACE  # "eu.siacs.conversations.axolotl"

NUM_PRE_KEYS = 100
PRE_KEY_REFILL_THRESHOLD = 99


class PeerError(Exception):
    """A request error detected by the peer itself (bad arguments, unknown identity, ...)."""


class NoSession(PeerError):
    """No session with the given device exists and none can be built from the request."""


class UnknownIdentity(PeerError):
    """The (ns, jid, device) identity was never initialised with the init op."""


class PublicDataInconsistency(PeerError):
    """The identity key in a key exchange differs from the one given by the caller."""


class Identity:
    """One OMEMO device (own identity) hosted by this peer."""

    def __init__(self, ns: str, jid: str, device_id: int) -> None:
        self.ns = ns
        self.jid = jid
        self.device_id = device_id
        self.storage = MemoryStorage()
        if ns == NS_TWOMEMO:
            self.mod: Any = twomemo.twomemo
            self.etree: Any = twomemo.etree
            self.backend: Any = twomemo.twomemo.Twomemo(self.storage)
        elif ns == NS_OLDMEMO:
            self.mod = oldmemo.oldmemo
            self.etree = oldmemo.etree
            self.backend = oldmemo.oldmemo.Oldmemo(self.storage)
        else:
            raise PeerError(f"unknown namespace {ns!r}")

    async def setup(self) -> None:
        # Creates the identity key pair (fresh random seed) and the X3DH state with a fresh SPK, then fills
        # the pre keys, like SessionManager.create does on first start.
        await self.backend.generate_pre_keys(NUM_PRE_KEYS)

    async def bundle_xml(self) -> Tuple[str, bytes]:
        bundle = await self.backend.get_bundle(self.jid, self.device_id)
        ET.register_namespace("", self.ns)
        return ET.tostring(self.etree.serialize_bundle(bundle), encoding="unicode"), bundle.identity_key


IDENTITIES: Dict[Tuple[str, str, int], Identity] = {}


def b64d(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise PeerError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except Exception as e:
        raise PeerError(f"{what} is not valid standard base64: {e}") from e


def b64e(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else base64.b64encode(value).decode("ascii")


def addr(value: Any, what: str) -> Tuple[str, int]:
    if (
        not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
        or not isinstance(value[1], int) or isinstance(value[1], bool)
    ):
        raise PeerError(f"{what} must be [JID, device id]")
    return value[0], value[1]


def get_identity(ns: Any, jid: str, device_id: int) -> Identity:
    try:
        return IDENTITIES[(ns, jid, device_id)]
    except KeyError:
        raise UnknownIdentity(f"no identity ({ns}, {jid}, {device_id}); call init first") from None


async def op_init(req: Dict[str, Any]) -> Dict[str, Any]:
    ns = req.get("ns")
    jid = req.get("jid")
    device = req.get("device")
    if ns not in (NS_TWOMEMO, NS_OLDMEMO):
        raise PeerError(f"unknown namespace {ns!r}")
    if not isinstance(jid, str) or not isinstance(device, int) or isinstance(device, bool):
        raise PeerError("init needs jid (string) and device (integer)")
    ident = Identity(ns, jid, device)
    await ident.setup()
    IDENTITIES[(ns, jid, device)] = ident
    bundle_xml, identity_key = await ident.bundle_xml()
    LOG.info("init %s %s/%d ik=%s", ns, jid, device, identity_key.hex())
    return {"ok": True, "bundle_xml": bundle_xml, "identity_key": b64e(identity_key)}


async def op_bundle(req: Dict[str, Any]) -> Dict[str, Any]:
    jid, device = addr(req.get("self"), "self")
    ident = get_identity(req.get("ns"), jid, device)
    bundle_xml, identity_key = await ident.bundle_xml()
    return {"ok": True, "bundle_xml": bundle_xml, "identity_key": b64e(identity_key)}


async def op_encrypt(req: Dict[str, Any]) -> Dict[str, Any]:
    own_jid, own_dev = addr(req.get("from"), "from")
    peer_jid, peer_dev = addr(req.get("to"), "to")
    ident = get_identity(req.get("ns"), own_jid, own_dev)
    backend = ident.backend

    plaintext_b64 = req.get("plaintext")
    plaintext = None if plaintext_b64 is None else b64d(plaintext_b64, "plaintext")

    session = await backend.load_session(peer_jid, peer_dev)
    bundle = None
    if session is None:
        bundle_xml = req.get("bundle_xml")
        if not isinstance(bundle_xml, str):
            raise NoSession(f"no session with {peer_jid}/{peer_dev} and no bundle_xml given")
        bundle = ident.etree.parse_bundle(ET.fromstring(bundle_xml), peer_jid, peer_dev)

    if plaintext is None:
        content, plain_key_material = await backend.encrypt_empty()
    else:
        content, plain_key_material = await backend.encrypt_plaintext(plaintext)

    if session is None:
        session, encrypted_key_material = await backend.build_session_active(
            peer_jid, peer_dev, bundle, plain_key_material
        )
        LOG.info("%s/%d: built active session with %s/%d", own_jid, own_dev, peer_jid, peer_dev)
    else:
        encrypted_key_material = await backend.encrypt_key_material(session, plain_key_material)

    kex = session.initiation is Initiation.ACTIVE and not session.confirmed
    authenticated = encrypted_key_material.serialize()
    if kex:
        key = session.key_exchange.serialize(authenticated)
        if ident.ns == NS_OLDMEMO:
            key = key[0]  # (bytes, sign bit); the sign bit is not transmitted
    else:
        key = authenticated

    await backend.store_session(session)

    payload = None if content.empty else content.ciphertext
    iv = content.initialization_vector if ident.ns == NS_OLDMEMO else None
    return {"ok": True, "key": b64e(key), "kex": kex, "payload": b64e(payload), "iv": b64e(iv)}


async def op_decrypt(req: Dict[str, Any]) -> Dict[str, Any]:
    own_jid, own_dev = addr(req.get("to"), "to")
    peer_jid, peer_dev = addr(req.get("from"), "from")
    ident = get_identity(req.get("ns"), own_jid, own_dev)
    backend = ident.backend
    mod = ident.mod

    key = b64d(req.get("key"), "key")
    kex = req.get("kex")
    if not isinstance(kex, bool):
        raise PeerError("kex must be a boolean")
    payload = None if req.get("payload") is None else b64d(req.get("payload"), "payload")
    iv = None if req.get("iv") is None else b64d(req.get("iv"), "iv")
    from_ik = req.get("from_identity_key")
    from_ik_bytes = None if from_ik is None else b64d(from_ik, "from_identity_key")
    if from_ik_bytes is not None and len(from_ik_bytes) != 32:
        raise PeerError("from_identity_key must be a 32-byte Ed25519 public key")

    if ident.ns == NS_TWOMEMO:
        content = mod.ContentImpl.make_empty() if payload is None else mod.ContentImpl(payload)
    else:
        if iv is None:
            raise PeerError("oldmemo messages need an iv")
        content = mod.ContentImpl(b"" if payload is None else payload, iv)

    if kex:
        if ident.ns == NS_TWOMEMO:
            key_exchange, authenticated = mod.KeyExchangeImpl.parse(key)
        else:
            if from_ik_bytes is None:
                raise PeerError(
                    "from_identity_key is required to parse an oldmemo key exchange (Ed25519 sign bit)"
                )
            key_exchange, authenticated = mod.KeyExchangeImpl.parse(key, bool(from_ik_bytes[31] >> 7))
        if from_ik_bytes is not None and key_exchange.identity_key != from_ik_bytes:
            raise PublicDataInconsistency(
                "the identity key in the key exchange differs from from_identity_key"
            )
        encrypted_key_material = mod.EncryptedKeyMaterialImpl.parse(authenticated, peer_jid, peer_dev)
        session = await backend.load_session(peer_jid, peer_dev)
        if (
            session is not None
            and session.initiation is Initiation.PASSIVE
            and session.key_exchange.builds_same_session(key_exchange)
        ):
            LOG.info("%s/%d: key exchange builds existing session", own_jid, own_dev)
            plain_key_material = await backend.decrypt_key_material(session, encrypted_key_material)
        else:
            if session is not None:
                LOG.warning("%s/%d: key exchange replaces existing session", own_jid, own_dev)
            session, plain_key_material = await backend.build_session_passive(
                peer_jid, peer_dev, key_exchange, encrypted_key_material
            )
    else:
        encrypted_key_material = mod.EncryptedKeyMaterialImpl.parse(key, peer_jid, peer_dev)
        session = await backend.load_session(peer_jid, peer_dev)
        if session is None:
            raise NoSession(f"no session with {peer_jid}/{peer_dev}")
        plain_key_material = await backend.decrypt_key_material(session, encrypted_key_material)

    plaintext = None if content.empty else await backend.decrypt_plaintext(content, plain_key_material)

    await backend.store_session(session)

    if kex:
        # Non-sync mode of the SessionManager: delete the used pre key, refill, (re-publish).
        if await backend.delete_pre_key(session):
            visible = await backend.get_num_visible_pre_keys()
            if visible <= PRE_KEY_REFILL_THRESHOLD:
                await backend.generate_pre_keys(NUM_PRE_KEYS - visible)

    return {"ok": True, "plaintext": b64e(plaintext)}


async def op_chain_lengths(req: Dict[str, Any]) -> Dict[str, Any]:
    own_jid, own_dev = addr(req.get("self"), "self")
    peer_jid, peer_dev = addr(req.get("peer"), "peer")
    ident = get_identity(req.get("ns"), own_jid, own_dev)
    session = await ident.backend.load_session(peer_jid, peer_dev)
    if session is None:
        raise NoSession(f"no session with {peer_jid}/{peer_dev}")
    return {
        "ok": True,
        "sending": session.sending_chain_length,
        "receiving": session.receiving_chain_length,
        "confirmed": session.confirmed,
        "initiation": session.initiation.name,
    }


OPS = {
    "init": op_init,
    "bundle": op_bundle,
    "encrypt": op_encrypt,
    "decrypt": op_decrypt,
    "chain_lengths": op_chain_lengths,
}


def error_response(e: BaseException) -> Dict[str, Any]:
    causes = []
    def nxt(x: BaseException) -> Optional[BaseException]:
        if x.__cause__ is not None:
            return x.__cause__
        return None if x.__suppress_context__ else x.__context__

    # Explicit causes (raise ... from ...) only; an implicit context is used only at the top level.
    c = nxt(e)
    while c is not None and len(causes) < 8:
        causes.append(f"{type(c).__name__}: {c}")
        c = c.__cause__
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "causes": causes}


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="peer.py %(levelname)s %(name)s: %(message)s"
    )
    # The libraries log a lot at DEBUG level; keep them quiet unless something is wrong.
    logging.getLogger("omemo").setLevel(logging.WARNING)

    loop = asyncio.new_event_loop()
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
                resp = loop.run_until_complete(OPS[op](req))
            else:
                raise PeerError(f"unknown op {op!r}")
        except Exception as e:  # pylint: disable=broad-except
            LOG.warning("request failed: %s", "".join(traceback.format_exception_only(type(e), e)).strip())
            LOG.debug("%s", traceback.format_exc())
            resp = error_response(e)
        if isinstance(req, dict) and "id" in req:
            resp["id"] = req["id"]
        out.write(json.dumps(resp) + "\n")
        out.flush()
        if isinstance(req, dict) and req.get("op") == "quit":
            break
    loop.close()


if __name__ == "__main__":
    main()
