# Produces the known answers hard-coded in kdf_test.go and ratchet_test.go
# (TestRootKDFKnownAnswer, TestChainKDFKnownAnswer, TestPythonConversation)
# with python-doubleratchet 1.0.3. Run: /usr/bin/python3 testdata/python_kat.py
# Ratchet private keys are fixed by overriding _generate_priv; the "AEAD"
# returns the message key as ciphertext so that message keys become visible.
import asyncio
from doubleratchet.recommended import HashFunction, kdf_hkdf, kdf_separate_hmacs, diffie_hellman_ratchet_curve25519
from doubleratchet import DoubleRatchet, AEAD
from doubleratchet.types import EncryptedMessage

class Root(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function(): return HashFunction.SHA_256
    @staticmethod
    def _get_info(): return b"OMEMO Root Chain"
class RootLegacy(Root):
    @staticmethod
    def _get_info(): return b"WhisperRatchet"
class Msg(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function(): return HashFunction.SHA_256

async def kdfs():
    rk = bytes(range(32)); dh = bytes(range(32, 64))
    o = await Root.derive(rk, dh, 64); print("root omemo2", o[:32].hex(), o[32:].hex())
    o = await RootLegacy.derive(rk, dh, 64); print("root legacy", o[:32].hex(), o[32:].hex())
    ck = bytes(range(64, 96))
    o = await Msg.derive(ck, b"\x02\x01", 64); print("chain ck'", o[:32].hex(), "mk", o[32:].hex())

PRIVS = []
class DH(diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet):
    @staticmethod
    def _generate_priv():
        return PRIVS.pop(0)

class KeyAEAD(AEAD):
    @staticmethod
    async def encrypt(plaintext, key, ad): return key
    @staticmethod
    async def decrypt(ct, key, ad):
        if ct != key: raise Exception("mismatch")
        return b"ok"

class DR(DoubleRatchet):
    @staticmethod
    def _build_associated_data(ad, header): return ad

args = (DH, Root, Msg, b"\x02\x01", 1000, 1000, KeyAEAD)

def p(tag, m):
    h = m.header
    print(tag, h.ratchet_pub.hex(), h.previous_sending_chain_length, h.sending_chain_length, m.ciphertext.hex())

async def conv():
    sk = bytes(range(32))
    spk_priv = bytes([0x11])*32
    spk_pub = DH._derive_pub(spk_priv)
    print("spk_pub", spk_pub.hex())
    PRIVS.append(bytes([0x21])*32)
    alice, a0 = await DR.encrypt_initial_message(*args, sk, spk_pub, b"", b"")
    p("A0", a0)
    a1 = await alice.encrypt_message(b"", b""); p("A1", a1)
    a2 = await alice.encrypt_message(b"", b""); p("A2", a2)
    PRIVS.append(bytes([0x31])*32)
    bob, _ = await DR.decrypt_initial_message(*args, sk, spk_priv, a0, b"")
    await bob.decrypt_message(a2, b""); await bob.decrypt_message(a1, b"")
    b0 = await bob.encrypt_message(b"", b""); p("B0", b0)
    b1 = await bob.encrypt_message(b"", b""); p("B1", b1)
    PRIVS.append(bytes([0x22])*32)
    await alice.decrypt_message(b1, b""); await alice.decrypt_message(b0, b"")
    a3 = await alice.encrypt_message(b"", b""); p("A3", a3)
    PRIVS.append(bytes([0x32])*32)
    await bob.decrypt_message(a3, b"")
    b2 = await bob.encrypt_message(b"", b""); p("B2", b2)
    print("remaining privs", len(PRIVS))

asyncio.run(kdfs()); asyncio.run(conv())
