#!/usr/bin/python3
"""
A scriptable OMEMO chat client on the Python reference stack, for live cross-client tests of the Go plugin
through a real XMPP server (integration_test/python_test.go).

python-omemo 1.0.2 with the twomemo and/or oldmemo backends, on slixmpp 1.8.3 (Debian packages; run with
/usr/bin/python3). The slixmpp integration (PEP hooks, message parsing and serialisation) follows
bench/e2e/pyclient.py. One process is one device with in-memory storage and blind trust (every device is
trusted). OMEMO 2 plaintexts are XEP-0420 envelopes (content/body, rpad, time, to, from); legacy OMEMO
encrypts the UTF-8 body.

Control: JSON lines. Every request on stdin gets exactly one response on stdout; requests are handled one at
a time, in order; "id" is echoed. Events that are not responses (received messages, rejected messages,
device-list notifications) are also written to stdout as they happen. Logs go to stderr only.

Requests:
  {"op":"connect","jid":BARE,"password":PW,"address":"HOST:PORT","backends":[NS,...],"timeout":SECONDS}
      logs in (STARTTLS without certificate verification), creates the SessionManager with the backends in
      priority order (it publishes the device lists and bundles), checks that the own device is listed on the
      server for every backend, sends presence (with entity capabilities announcing +notify for the device
      list nodes), then answers
      {"event":"ready","jid":FULL,"device":ID,"namespaces":[NS,...]}
  {"op":"send","to":BARE,"body":TEXT}
      refreshes the recipient's device lists (every backend) before the first message to it, encrypts and
      sends a chat message; answers {"event":"sent","to":BARE,"recipients":[{"jid","device","namespace"}]}
  {"op":"devices","jid":BARE}
      downloads the device lists of BARE and gives them to the SessionManager;
      answers {"event":"devices","jid":BARE,"devices":{NS:[ID,...]}}
  {"op":"join","room":ROOM_BARE,"nick":NICK}
      joins an XEP-0045 room (slixmpp's xep_0045, no join history: maxstanzas 0), waits for the own presence
      (and the subject), then reads the owner, admin and member lists (XEP-0045 §10.5, §10.8, §9.5; a list the
      room refuses leaves the affiliations seen in presences) and from then on tracks the occupants with their
      real JIDs and the affiliations from the room's presences; answers
      {"event":"joined","room":ROOM,"nick":NICK,"occupants":{NICK:REAL_BARE,...},
       "affiliations":{REAL_BARE:"owner"|"admin"|"member",...}}
      (an occupant whose real JID the room hides maps to null)
  {"op":"send_room","room":ROOM_BARE,"body":TEXT}
      encrypts for the room (XEP-0384 §6.3): for the real bare JIDs of the owners, admins and members, present
      or not, plus the occupants present, plus the own account (python-omemo adds it and leaves out this
      device); their device lists (every backend) are downloaded again first; fails if an occupant's real JID
      is hidden. Sends one groupchat message to the room with one <encrypted> element per namespace in use
      (both when the devices need it), the EME hint, a store hint, an origin-id (also the stanza id) and a
      fallback body. OMEMO 2 plaintexts are XEP-0420 envelopes with <to> the room and <from> the own bare JID.
      Answers {"event":"sent_room","room":ROOM,"origin_id":ID,"recipients":[{"jid","device","namespace","kex"}]}
      (kex: the key carries a key exchange)
  {"op":"send_file","to":BARE,"path":FILE,"service":UPLOAD_JID,"cafile":PEM}
      shares FILE encrypted as XEP-0454 says, written from the XEP with cryptography's AESGCM (a fresh 32-byte
      key and 12-byte IV, the 16-byte tag appended): requests an XEP-0363 slot from UPLOAD_JID, PUTs the
      ciphertext over HTTPS (verified against the certificate in PEM) with the slot's headers, then sends
      aesgcm://HOST/PATH#hex(IV||key) as the body of an OMEMO message to BARE (as "send" does); answers
      {"event":"sent_file","to":BARE,"size":N,"sha256":HEX}
  {"op":"download","url":AESGCM_URL,"path":FILE,"cafile":PEM}
      fetches the https URL the aesgcm one stands for, decrypts and authenticates it (IV of 12 or 16 bytes),
      writes FILE; answers {"event":"downloaded","size":N,"sha256":HEX}
  {"op":"quit"}
      disconnects; answers {"event":"bye"} and exits with status 0 (also at EOF on stdin)
  A failed request answers {"event":"error","op":OP,"error":"Class: message"}.

Events:
  {"event":"message","from":BARE,"device":ID,"namespace":NS,"body":TEXT}     a decrypted message with a body
  {"event":"rejected","from":BARE,"namespace":NS,"error":"Class: message"}    a message that failed
  {"event":"devicelist","jid":BARE,"namespace":NS,"devices":[ID,...]}        a device-list notification
  {"event":"room_message","room":ROOM,"nick":NICK,"from":REAL_BARE,"device":ID,"namespace":NS,"body":TEXT,
   "kex":BOOL}
      a decrypted groupchat message of a joined room with a body: REAL_BARE is the real JID the room's
      presences gave for NICK when the message arrived (never anything the message says); kex tells whether
      the key for this device carried a key exchange. An OMEMO 2 envelope must name the room in <to>.
  {"event":"reflected","room":ROOM,"origin_id":ID}
      the room's copy of a message this device sent with send_room (own nick, own device id): not decrypted.
      The origin-id is under "origin_id", not "id", which is the request-id echo of responses.
  {"event":"rejected","room":ROOM,"nick":NICK,"from":REAL_BARE|null,"namespace":NS,"error":"Class: message"}
      a groupchat message that failed (an unknown occupant, a failed decryption, a bad envelope, a message from
      the own nick and device that this device did not send)

Set XMPPCLIENT_DEBUG=1 in the environment to log slixmpp's stream traffic to stderr. Anything else written to
sys.stdout (slixmpp 1.8.3 prints during MUC joins) goes to stderr: only emit writes to the real stdout.
"""

import asyncio
import datetime
import hashlib
import json
import logging
import os
import secrets
import ssl
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import omemo
from omemo.session_manager import BundleDownloadFailed, BundleNotFound, UnknownNamespace
import oldmemo
import oldmemo.etree
import oldmemo.oldmemo
import twomemo
import twomemo.etree
import twomemo.twomemo
import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback, CoroutineCallback
from slixmpp.xmlstream.matcher import MatchXPath
sys.dont_write_bytecode = True  # no __pycache__ of memstore in the checkout
from memstore import MemoryStorage  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

NS2 = twomemo.twomemo.NAMESPACE  # urn:xmpp:omemo:2
NS1 = oldmemo.oldmemo.NAMESPACE  # eu.siacs.conversations.axolotl
ETREE = {NS2: twomemo.etree, NS1: oldmemo.etree}
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_SCE = "urn:xmpp:sce:1"
NS_CLIENT = "jabber:client"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_SID = "urn:xmpp:sid:0"
NS_UPLOAD = "urn:xmpp:http:upload:0"
AFFILIATIONS = ("owner", "admin", "member")  # the affiliations that make a real JID a recipient

LOG = logging.getLogger("xmppclient")


def devices_node(ns: str) -> str:
    return "urn:xmpp:omemo:2:devices" if ns == NS2 else "eu.siacs.conversations.axolotl.devicelist"


def bundle_node_item(ns: str, device_id: int) -> Tuple[str, str]:
    if ns == NS2:
        return "urn:xmpp:omemo:2:bundles", str(device_id)
    return f"eu.siacs.conversations.axolotl.bundles:{device_id}", "current"


OUT = sys.stdout  # the protocol stream; main points sys.stdout at stderr


def emit(obj: Dict[str, Any]) -> None:
    """Writes one JSON line to stdout (the only writer; everything runs on the event loop thread)."""
    OUT.write(json.dumps(obj, ensure_ascii=False) + "\n")
    OUT.flush()


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def sce_envelope(body: str, frm: str, to: str) -> bytes:
    """The XEP-0420 envelope of a chat message body, with all affixes."""
    env = ET.Element(f"{{{NS_SCE}}}envelope")
    content = ET.SubElement(env, f"{{{NS_SCE}}}content")
    ET.SubElement(content, f"{{{NS_CLIENT}}}body").text = body
    ET.SubElement(env, f"{{{NS_SCE}}}rpad").text = secrets.token_urlsafe(secrets.randbelow(150) // 4 + 1)
    ET.SubElement(env, f"{{{NS_SCE}}}time", stamp=datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))
    ET.SubElement(env, f"{{{NS_SCE}}}to", jid=to)
    ET.SubElement(env, f"{{{NS_SCE}}}from", jid=frm)
    return ET.tostring(env, encoding="utf-8", xml_declaration=False)


def sce_body(raw: bytes, sender: str, own: str, require_to: bool = False) -> Optional[str]:
    """The body of an XEP-0420 envelope; rpad is required, present from/to affixes must match (own is the
    expected <to>: the own bare JID, or the room); require_to: a <to> affix is required (group chats)."""
    env = ET.fromstring(raw)
    if env.tag != f"{{{NS_SCE}}}envelope":
        raise ValueError(f"not an SCE envelope: {env.tag}")
    if env.find(f"{{{NS_SCE}}}rpad") is None:
        raise ValueError("SCE envelope without rpad")
    content = env.find(f"{{{NS_SCE}}}content")
    if content is None:
        raise ValueError("SCE envelope without content")
    frm = env.find(f"{{{NS_SCE}}}from")
    to = env.find(f"{{{NS_SCE}}}to")
    if frm is not None and frm.get("jid") != sender:
        raise ValueError(f"SCE from affix {frm.get('jid')!r} does not match the sender {sender!r}")
    if to is not None and to.get("jid") != own:
        raise ValueError(f"SCE to affix {to.get('jid')!r} does not match {own!r}")
    if to is None and require_to:
        raise ValueError(f"SCE envelope without the to affix (must name {own!r})")
    body = content.find(f"{{{NS_CLIENT}}}body")
    if body is None:
        return None
    return body.text or ""


def has_key_for(enc: ET.Element, ns: str, own: str, device_id: int) -> bool:
    """Whether an <encrypted> element carries a key for this device."""
    rid = str(device_id)
    header = enc.find(f"{{{ns}}}header")
    if header is None:
        return False
    if ns == NS2:
        for keys in header.findall(f"{{{ns}}}keys"):
            if keys.get("jid") == own and any(k.get("rid") == rid for k in keys.findall(f"{{{ns}}}key")):
                return True
        return False
    return any(k.get("rid") == rid for k in header.findall(f"{{{ns}}}key"))


def sender_device(enc: ET.Element, ns: str) -> Optional[int]:
    """The sending device id (sid) of an <encrypted> element."""
    header = enc.find(f"{{{ns}}}header")
    try:
        return int(header.get("sid", "")) if header is not None else None
    except ValueError:
        return None


class Room:
    """The state of a joined room: occupants with their real bare JIDs, and the affiliations."""

    def __init__(self, jid: str, nick: str) -> None:
        self.jid = jid
        self.nick = nick
        self.joined = False
        self.occupants: Dict[str, Optional[str]] = {}  # nick → real bare JID (None: hidden)
        self.affiliations: Dict[str, str] = {}  # real bare JID → owner, admin or member
        self.sent: set = set()  # origin-ids sent and not reflected yet

    def set_affiliation(self, real: str, affiliation: Optional[str]) -> None:
        if affiliation in AFFILIATIONS:
            self.affiliations[real] = affiliation
        elif affiliation is not None:  # none, outcast
            self.affiliations.pop(real, None)

    def recipients(self) -> FrozenSet[str]:
        """The real bare JIDs a message to the room is encrypted for (XEP-0384 §6.3)."""
        hidden = sorted(n for n, j in self.occupants.items() if j is None)
        if hidden:
            raise RuntimeError(f"the real JIDs of occupants {hidden} of {self.jid} are hidden")
        return frozenset(self.affiliations) | frozenset(j for j in self.occupants.values() if j)


def muc_item(x: ET.Element) -> Tuple[Optional[str], Optional[str]]:
    """The real bare JID and the affiliation of the first muc#user item."""
    item = x.find(f"{{{NS_MUC_USER}}}item")
    if item is None:
        return None, None
    real = item.get("jid")
    return (slixmpp.JID(real).bare if real else None), item.get("affiliation")


class Client(slixmpp.ClientXMPP):
    """One OMEMO device: a slixmpp client with its own SessionManager and in-memory storage."""

    def __init__(self, account: str, password: str, namespaces: List[str]) -> None:
        super().__init__(account, password)
        self.namespaces = namespaces
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE  # loopback test server, throw-away certificate
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0060")
        self.register_plugin("xep_0115")
        self.register_plugin("xep_0045")
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._session_start)
        # Every message stanza: slixmpp's "message" event only covers messages with a <body>, which leaves
        # out empty OMEMO messages (session completion, heartbeats) and PEP notifications.
        self.register_handler(CoroutineCallback("OMEMO messages", MatchXPath(f"{{{NS_CLIENT}}}message"),
                                                self._message))
        # Room presences and groupchat messages, handled at once (in stream order): a room message takes the
        # sender's real JID from the occupants as they are when it arrives.
        self.rooms: Dict[str, Room] = {}
        self.register_handler(Callback("MUC occupants",
                                       MatchXPath(f"{{{NS_CLIENT}}}presence/{{{NS_MUC_USER}}}x"),
                                       self._room_presence))
        self.register_handler(Callback("OMEMO room messages", MatchXPath(f"{{{NS_CLIENT}}}message"),
                                       self._room_message_arrived))
        self.add_event_handler("disconnected", self._disconnected)
        self.storage = MemoryStorage()
        self.sm: Any = None
        self.device_id = 0
        self.lock = asyncio.Lock()  # one OMEMO operation at a time
        self.known_lists: set = set()

    async def _session_start(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_result(True)

    def _disconnected(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError("disconnected before the session started"))

    # -- PEP ----------------------------------------------------------------------------------------------

    async def pep_publish(self, node: str, item_id: str, payload: ET.Element, max_items: str) -> None:
        form = self["xep_0004"].make_form("submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
        form.add_field(var="pubsub#persist_items", value="true")
        form.add_field(var="pubsub#access_model", value="open")
        form.add_field(var="pubsub#max_items", value=max_items)
        await self["xep_0060"].publish(None, node, id=item_id, payload=payload, options=form, timeout=15)

    async def pep_item(self, owner: str, node: str, item_id: str) -> Optional[ET.Element]:
        try:
            iq = await self["xep_0060"].get_item(owner, node, item_id, timeout=15)
        except IqError as e:
            if e.condition == "item-not-found":
                return None
            raise
        item = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items/{{{NS_PUBSUB}}}item")
        if item is None or len(item) == 0:
            return None
        return item[0]

    async def download_device_list(self, namespace: str, bare_jid: str) -> Dict[int, Optional[str]]:
        el = await self.pep_item(bare_jid, devices_node(namespace), "current")
        if el is None:
            return {}
        return ETREE[namespace].parse_device_list(el)

    # -- SessionManager -----------------------------------------------------------------------------------

    async def start_omemo(self) -> None:
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
                except (IqError, IqTimeout):
                    pass

            @staticmethod
            async def _upload_device_list(namespace: str, device_list: Dict[int, Optional[str]]) -> None:
                await dev.pep_publish(devices_node(namespace), "current",
                                      ETREE[namespace].serialize_device_list(device_list), "1")

            @staticmethod
            async def _download_device_list(namespace: str, bare_jid: str) -> Dict[int, Optional[str]]:
                if namespace not in ETREE:
                    raise UnknownNamespace(namespace)
                return await dev.download_device_list(namespace, bare_jid)

            async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
                return {"trusted": omemo.TrustLevel.TRUSTED, "distrusted": omemo.TrustLevel.DISTRUSTED}.get(
                    device.trust_level_name, omemo.TrustLevel.UNDECIDED)

            async def _make_trust_decision(self, undecided: FrozenSet[omemo.DeviceInformation],
                                           identifier: Optional[str]) -> None:
                # Blind trust: everything is trusted.
                for d in undecided:
                    await self.set_trust(d.bare_jid, d.identity_key, "trusted")

            @staticmethod
            async def _send_message(message: omemo.Message, bare_jid: str) -> None:
                # Empty messages of the session manager (session completion, heartbeats).
                LOG.info("sending an empty %s message to %s", message.namespace, bare_jid)
                dev.send_encrypted(bare_jid, [message], None)

        backends = []
        for ns in self.namespaces:
            backends.append(twomemo.Twomemo(self.storage) if ns == NS2 else oldmemo.Oldmemo(self.storage))
        self.sm = await SM.create(
            backends, self.storage, self.boundjid.bare, "xmppclient", "undecided",
            pre_key_refill_threshold=99,  # lower values trip a python-omemo 1.0.2 bug (see smpeer.py)
        )
        await self.sm.after_history_sync()
        own, _ = await self.sm.get_own_device_information()
        self.device_id = own.device_id

    async def check_published(self) -> None:
        """Fails unless the own device is in the own device list on the server, for every backend."""
        own = self.boundjid.bare
        for ns in self.namespaces:
            devices = await self.download_device_list(ns, own)
            if self.device_id not in devices:
                raise RuntimeError(f"own device {self.device_id} missing from the {ns} device list: {devices}")
            node, item = bundle_node_item(ns, self.device_id)
            if await self.pep_item(own, node, item) is None:
                raise RuntimeError(f"own {ns} bundle not published")

    async def refresh(self, bare_jid: str) -> Dict[str, List[int]]:
        """Downloads the device lists of bare_jid (every backend, in parallel) into the SessionManager."""
        lists = await asyncio.gather(*(self.download_device_list(ns, bare_jid) for ns in self.namespaces))
        out = {}
        for ns, devices in zip(self.namespaces, lists):
            await self.sm.update_device_list(ns, bare_jid, devices)
            out[ns] = sorted(devices)
        self.known_lists.add(bare_jid)
        return out

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

    async def send_body(self, to: str, body: str) -> List[Dict[str, Any]]:
        async with self.lock:
            if to not in self.known_lists:
                # python-omemo encrypts to cached device lists only.
                await self.refresh(to)
            own = self.boundjid.bare
            plaintexts = {NS2: sce_envelope(body, own, to), NS1: body.encode("utf-8")}
            messages, errors = await self.sm.encrypt(
                frozenset([to]), {ns: plaintexts[ns] for ns in self.namespaces})
            for e in errors:
                LOG.warning("encryption error: %s", describe(e))
            if not messages:
                raise RuntimeError("nothing encrypted")
            self.send_encrypted(to, list(messages.keys()), "I sent you an OMEMO encrypted message")
            return [{"jid": k.bare_jid, "device": k.device_id, "namespace": m.namespace}
                    for m in messages for k, _kex in m.keys]

    # -- rooms --------------------------------------------------------------------------------------------

    async def join_room(self, room: str, nick: str, timeout: float) -> Room:
        room = slixmpp.JID(room).bare
        if room in self.rooms:
            raise RuntimeError(f"already in {room}")
        state = Room(room, nick)
        self.rooms[room] = state  # before the join: its presences are tracked
        try:
            pres, _subject, _occupants, _history = await self["xep_0045"].join_muc_wait(
                slixmpp.JID(room), nick, maxstanzas=0, timeout=int(timeout))
        except BaseException:
            del self.rooms[room]
            raise
        state.nick = pres["from"].resource  # the room may change the nick
        state.joined = True

        async def read(affiliation: str) -> Tuple[str, Optional[List[str]]]:
            try:
                jids = await self["xep_0045"].get_affiliation_list(slixmpp.JID(room), affiliation, timeout=15)
            except IqError as e:
                if e.condition in ("forbidden", "not-allowed", "not-authorized"):
                    LOG.info("%s refuses its %s list: %s", room, affiliation, e.condition)
                    return affiliation, None
                raise
            return affiliation, [slixmpp.JID(j).bare for j in jids]

        for affiliation, jids in await asyncio.gather(*(read(a) for a in AFFILIATIONS)):
            for j in jids or []:
                state.affiliations[j] = affiliation
        LOG.info("joined %s as %s: occupants %s, affiliations %s", room, state.nick, state.occupants,
                 state.affiliations)
        return state

    def _room_presence(self, pres: slixmpp.Presence) -> None:
        frm = pres["from"]
        state = self.rooms.get(frm.bare)
        x = pres.xml.find(f"{{{NS_MUC_USER}}}x")
        if state is None or x is None or not frm.resource or pres["type"] == "error":
            return
        real, affiliation = muc_item(x)
        nick = frm.resource
        if pres["type"] == "unavailable":
            state.occupants.pop(nick, None)
        else:
            state.occupants[nick] = real
        if real is not None:
            state.set_affiliation(real, affiliation)
        codes = {s.get("code") for s in x.findall(f"{{{NS_MUC_USER}}}status")}
        if "110" in codes and pres["type"] != "unavailable":
            state.nick = nick

    def _room_message_arrived(self, msg: slixmpp.Message) -> None:
        """Runs in stream order: snapshots the sender's real JID, then decrypts in a task."""
        if msg["type"] != "groupchat" or self.sm is None:
            return
        frm = msg["from"]
        state = self.rooms.get(frm.bare)
        if state is None:
            return
        if not frm.resource:
            # The room's status messages: affiliation changes of those not present (XEP-0045 §9.3, 101).
            x = msg.xml.find(f"{{{NS_MUC_USER}}}x")
            if x is not None:
                for item in x.findall(f"{{{NS_MUC_USER}}}item"):
                    if item.get("jid"):
                        state.set_affiliation(slixmpp.JID(item.get("jid")).bare, item.get("affiliation"))
            return
        if not any(msg.xml.find(f"{{{ns}}}encrypted") is not None for ns in ETREE):
            return
        nick = frm.resource
        asyncio.ensure_future(self._room_message(msg, state, nick, state.occupants.get(nick)))

    async def _room_message(self, msg: slixmpp.Message, state: Room, nick: str, real: Optional[str]) -> None:
        own = self.boundjid.bare
        room = state.jid
        encs = [(ns, msg.xml.find(f"{{{ns}}}encrypted")) for ns in self.namespaces]
        encs = [(ns, enc) for ns, enc in encs if enc is not None]
        if nick == state.nick and any(sender_device(enc, ns) == self.device_id for ns, enc in encs):
            # The room's reflection of a message of this device.
            oid = msg.xml.find(f"{{{NS_SID}}}origin-id")
            origin = oid.get("id") if oid is not None else msg["id"]
            if origin in state.sent:
                state.sent.discard(origin)
                emit({"event": "reflected", "room": room, "origin_id": origin})
            else:
                emit({"event": "rejected", "room": room, "nick": nick, "from": own,
                      "namespace": encs[0][0] if encs else "",
                      "error": f"ForgedReflection: own nick and device, origin-id {origin!r} not sent"})
            return
        chosen = next(((ns, enc) for ns, enc in encs if has_key_for(enc, ns, own, self.device_id)), None)
        if chosen is None:
            LOG.info("OMEMO message in %s from %s without a key for this device", room, nick)
            return
        ns, enc = chosen
        try:
            if real is None:
                raise LookupError(f"no real JID known for the occupant {nick!r} of {room}")
            async with self.lock:
                if ns == NS2:
                    message = twomemo.etree.parse_message(enc, real)
                else:
                    message = await oldmemo.etree.parse_message(enc, real, own, self.sm)
                kex = any(k.bare_jid == own and k.device_id == self.device_id and x is not None
                          for k, x in message.keys)
                plaintext, device, _ = await self.sm.decrypt(message)
            if plaintext is None:
                LOG.info("empty %s message in %s from %s/%d", ns, room, real, device.device_id)
                return
            body = sce_body(plaintext, real, room, require_to=True) if ns == NS2 else plaintext.decode("utf-8")
        except Exception as e:
            LOG.warning("rejected %s message in %s from %s (%s): %s", ns, room, nick, real, describe(e))
            emit({"event": "rejected", "room": room, "nick": nick, "from": real, "namespace": ns,
                  "error": describe(e)})
            return
        if body is None:
            return
        emit({"event": "room_message", "room": room, "nick": nick, "from": real, "device": device.device_id,
              "namespace": ns, "body": body, "kex": kex})

    async def refresh_many(self, bare_jids: FrozenSet[str]) -> None:
        """Downloads the device lists of all bare_jids (every backend, all in parallel) into the
        SessionManager; a list that cannot be downloaded is logged (encrypt then reports the recipient)."""
        pairs = [(j, ns) for j in sorted(bare_jids) for ns in self.namespaces]
        lists = await asyncio.gather(*(self.download_device_list(ns, j) for j, ns in pairs),
                                     return_exceptions=True)
        for (j, ns), devices in zip(pairs, lists):
            if isinstance(devices, BaseException):
                LOG.warning("device list %s of %s: %s", ns, j, describe(devices))
                continue
            await self.sm.update_device_list(ns, j, devices)
            self.known_lists.add(j)

    async def send_room(self, room: str, body: str) -> Tuple[str, List[Dict[str, Any]]]:
        room = slixmpp.JID(room).bare
        state = self.rooms.get(room)
        if state is None or not state.joined:
            raise RuntimeError(f"not in {room}")
        async with self.lock:
            own = self.boundjid.bare
            recipients = state.recipients() | {own}
            await self.refresh_many(recipients)
            plaintexts = {NS2: sce_envelope(body, own, room), NS1: body.encode("utf-8")}
            messages, errors = await self.sm.encrypt(
                recipients, {ns: plaintexts[ns] for ns in self.namespaces})
            for e in errors:
                LOG.warning("encryption error: %s", describe(e))
            if not messages:
                raise RuntimeError("nothing encrypted")
            origin = secrets.token_hex(12)
            msg = self.make_message(mto=room, mtype="groupchat")
            msg["id"] = origin
            msgs = sorted(messages.keys(), key=lambda m: 0 if m.namespace == NS2 else 1)
            for m in msgs:
                msg.xml.append(ETREE[m.namespace].serialize_message(m))
            ET.SubElement(msg.xml, "{urn:xmpp:eme:0}encryption", namespace=msgs[0].namespace,
                          name="OMEMO 2" if msgs[0].namespace == NS2 else "OMEMO")
            ET.SubElement(msg.xml, "{urn:xmpp:hints}store")
            ET.SubElement(msg.xml, f"{{{NS_SID}}}origin-id", id=origin)
            msg["body"] = "I sent an OMEMO encrypted message"
            state.sent.add(origin)
            msg.send()
            return origin, [{"jid": k.bare_jid, "device": k.device_id, "namespace": m.namespace,
                             "kex": kex is not None}
                            for m in msgs for k, kex in m.keys]

    async def _device_list_event(self, event: ET.Element, sender: str) -> None:
        for items in event.findall(f"{{{NS_PUBSUB_EVENT}}}items"):
            for ns in self.namespaces:
                if items.get("node") != devices_node(ns):
                    continue
                item = items.find(f"{{{NS_PUBSUB_EVENT}}}item")
                if item is None or len(item) == 0:
                    continue
                try:
                    devices = ETREE[ns].parse_device_list(item[0])
                    async with self.lock:
                        await self.sm.update_device_list(ns, sender, devices)
                except Exception as e:  # a bad notification is logged, not fatal
                    LOG.warning("device list notification from %s: %s", sender, describe(e))
                    continue
                emit({"event": "devicelist", "jid": sender, "namespace": ns, "devices": sorted(devices)})

    async def _message(self, msg: slixmpp.Message) -> None:
        if self.sm is None:
            return
        sender = msg["from"].bare
        own = self.boundjid.bare
        event = msg.xml.find(f"{{{NS_PUBSUB_EVENT}}}event")
        if event is not None:
            await self._device_list_event(event, sender or own)
            return
        if msg["type"] not in ("chat", "normal"):
            return
        chosen = None
        for ns in self.namespaces:
            enc = msg.xml.find(f"{{{ns}}}encrypted")
            if enc is not None and has_key_for(enc, ns, own, self.device_id):
                chosen = (ns, enc)
                break
        if chosen is None:
            if any(msg.xml.find(f"{{{ns}}}encrypted") is not None for ns in ETREE):
                LOG.info("OMEMO message from %s without a key for this device", sender)
            return
        ns, enc = chosen
        try:
            async with self.lock:
                if ns == NS2:
                    message = twomemo.etree.parse_message(enc, sender)
                else:
                    message = await oldmemo.etree.parse_message(enc, sender, own, self.sm)
                plaintext, device, _ = await self.sm.decrypt(message)
            if plaintext is None:
                LOG.info("empty %s message from %s/%d", ns, sender, device.device_id)
                return
            body = sce_body(plaintext, sender, own) if ns == NS2 else plaintext.decode("utf-8")
        except Exception as e:
            LOG.warning("rejected %s message from %s: %s", ns, sender, describe(e))
            emit({"event": "rejected", "from": sender, "namespace": ns, "error": describe(e)})
            return
        if body is None:
            return
        emit({"event": "message", "from": sender, "device": device.device_id, "namespace": ns, "body": body})


def https_request(method: str, url: str, cafile: str, data: Optional[bytes] = None,
                  headers: Optional[Dict[str, str]] = None) -> bytes:
    """One HTTPS request, verified against cafile (blocking: run it in a thread)."""
    if urllib.parse.urlsplit(url).scheme != "https":
        raise ValueError("not an https URL")
    ctx = ssl.create_default_context(cafile=cafile)
    r = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(r, context=ctx, timeout=30) as resp:
        return resp.read()


async def send_file(client: "Client", req: Dict[str, Any]) -> Dict[str, Any]:
    """XEP-0454: encrypt, upload (XEP-0363), send the aesgcm link."""
    with open(req["path"], "rb") as f:
        data = f.read()
    name = os.path.basename(req["path"])
    key, iv = secrets.token_bytes(32), secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(iv, data, None)  # ciphertext || 16-byte tag
    iq = client.Iq()
    iq["type"] = "get"
    iq["to"] = req["service"]
    iq.append(ET.Element(f"{{{NS_UPLOAD}}}request",
                         {"filename": name, "size": str(len(sealed)), "content-type": "application/octet-stream"}))
    answer = await iq.send(timeout=20)
    slot = answer.xml.find(f"{{{NS_UPLOAD}}}slot")
    put = slot.find(f"{{{NS_UPLOAD}}}put")
    get = slot.find(f"{{{NS_UPLOAD}}}get").get("url")
    headers = {h.get("name"): (h.text or "") for h in put.findall(f"{{{NS_UPLOAD}}}header")
               if h.get("name") in ("Authorization", "Cookie", "Expires")}
    headers["Content-Type"] = "application/octet-stream"
    await asyncio.to_thread(https_request, "PUT", put.get("url"), req["cafile"], sealed, headers)
    if not get.startswith("https://"):
        raise ValueError("slot GET URL is not https")
    link = "aesgcm://" + get[len("https://"):] + "#" + (iv + key).hex()
    await client.send_body(req["to"], link)
    return {"event": "sent_file", "to": req["to"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def download(req: Dict[str, Any]) -> Dict[str, Any]:
    url, _, fragment = str(req["url"]).partition("#")
    if not url.startswith("aesgcm://") or len(fragment) not in (88, 96):
        raise ValueError("not an aesgcm link")
    secret = bytes.fromhex(fragment)
    iv, key = secret[:-32], secret[-32:]
    sealed = await asyncio.to_thread(https_request, "GET", "https://" + url[len("aesgcm://"):], req["cafile"])
    data = AESGCM(key).decrypt(iv, sealed, None)
    with open(req["path"], "wb") as f:
        f.write(data)
    return {"event": "downloaded", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def do_connect(req: Dict[str, Any]) -> Tuple[Client, Dict[str, Any]]:
    namespaces = list(req.get("backends") or [NS2, NS1])
    if not namespaces or any(ns not in ETREE for ns in namespaces) or len(set(namespaces)) != len(namespaces):
        raise ValueError(f"bad backends {namespaces!r}")
    timeout = float(req.get("timeout", 20))
    host, port = str(req["address"]).rsplit(":", 1)
    client = Client(req["jid"], req["password"], namespaces)
    client.connect(address=(host, int(port)))
    await asyncio.wait_for(client.started, timeout)
    # After resource binding: slixmpp keeps disco data per full JID.
    for ns in namespaces:
        client["xep_0030"].add_feature(devices_node(ns) + "+notify")
    await asyncio.wait_for(client.start_omemo(), timeout)
    await asyncio.wait_for(client.check_published(), timeout)
    await client["xep_0115"].update_caps(broadcast=False)
    client.send_presence()
    return client, {"event": "ready", "jid": str(client.boundjid), "device": client.device_id,
                    "namespaces": namespaces}


async def disconnect(client: Optional[Client]) -> None:
    if client is None:
        return
    try:
        await asyncio.wait_for(client.disconnect(wait=1.0), 5)
    except Exception:
        pass


async def main() -> None:
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client: Optional[Client] = None
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if not line.strip():
                continue
            req: Dict[str, Any] = {}
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "connect":
                    if client is not None:
                        raise RuntimeError("already connected")
                    client, resp = await do_connect(req)
                elif op == "send":
                    if client is None:
                        raise RuntimeError("not connected")
                    recipients = await asyncio.wait_for(client.send_body(req["to"], req["body"]), 30)
                    resp = {"event": "sent", "to": req["to"], "recipients": recipients}
                elif op == "join":
                    if client is None:
                        raise RuntimeError("not connected")
                    state = await asyncio.wait_for(
                        client.join_room(req["room"], req["nick"], 20), 30)
                    resp = {"event": "joined", "room": state.jid, "nick": state.nick,
                            "occupants": dict(state.occupants), "affiliations": dict(state.affiliations)}
                elif op == "send_room":
                    if client is None:
                        raise RuntimeError("not connected")
                    origin, recipients = await asyncio.wait_for(client.send_room(req["room"], req["body"]), 30)
                    resp = {"event": "sent_room", "room": slixmpp.JID(req["room"]).bare, "origin_id": origin,
                            "recipients": recipients}
                elif op == "devices":
                    if client is None:
                        raise RuntimeError("not connected")
                    async with client.lock:
                        devices = await asyncio.wait_for(client.refresh(req["jid"]), 30)
                    resp = {"event": "devices", "jid": req["jid"], "devices": devices}
                elif op == "send_file":
                    if client is None:
                        raise RuntimeError("not connected")
                    resp = await asyncio.wait_for(send_file(client, req), 60)
                elif op == "download":
                    resp = await asyncio.wait_for(download(req), 60)
                elif op == "quit":
                    await disconnect(client)
                    client = None
                    emit({"event": "bye", **({"id": req["id"]} if "id" in req else {})})
                    return
                else:
                    raise ValueError(f"unknown op {op!r}")
            except Exception as e:
                LOG.warning("request %s failed: %s", req.get("op"), describe(e))
                resp = {"event": "error", "op": req.get("op"), "error": describe(e)}
            if "id" in req:
                resp["id"] = req["id"]
            emit(resp)
    finally:
        await disconnect(client)


if __name__ == "__main__":
    sys.stdout = sys.stderr  # stray prints (slixmpp's MUC join) must not corrupt the protocol stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("slixmpp").setLevel(logging.DEBUG if os.environ.get("XMPPCLIENT_DEBUG") else logging.WARNING)
    # python-omemo warns about expected events of a fresh device.
    logging.getLogger("omemo").setLevel(logging.ERROR)
    asyncio.run(main())
