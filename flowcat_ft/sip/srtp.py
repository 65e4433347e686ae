"""SRTP and SRTCP (RFC 3711) with the suites SDES offers (RFC 4568), Sans-I/O.

:class:`SrtpContext` protects the packets one side sends, or checks and decrypts the
packets the other side sends, with one master key and salt (from an SDP ``a=crypto``
line: :class:`Suite`, :func:`new_key`). The suites are ``AES_CM_128_HMAC_SHA1_80`` and
``AES_CM_128_HMAC_SHA1_32``: AES-128 in counter mode and an HMAC-SHA1 tag of 80 or 32
bits on RTP (RTCP's is always 80), session keys derived once (key derivation rate 0),
no MKI. What RFC 3711 asks of a receiver is here: the rollover counter guessed from the
sequence number (appendix A), a replay window of 64 packets (section 3.3.2), the tag
checked before anything is decrypted.

Why our own code: pylibsrtp (libsrtp's binding) ships no build for free-threaded 3.13 and
``cryptography`` cannot be built here. The cryptography itself is not ours: AES comes from
the OpenSSL that Python's ``ssl`` module already loads (its EVP API, through ``ctypes``),
HMAC-SHA1 from ``hmac``. What is written here is RFC 3711's packet format and bookkeeping,
checked against the RFC's test vectors and against baresip's SRTP.

Threading contract: a context keeps state (the index, the replay window, an OpenSSL cipher
context): each is used by one thread at a time (a call's media loop).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import hmac
import secrets
import struct
from dataclasses import dataclass

__all__ = ["SUITES", "SrtpContext", "SrtpError", "Suite", "new_key"]

KEY_BYTES = 16
SALT_BYTES = 14
_AUTH_KEY_BYTES = 20
_RTCP_TAG_BYTES = 10
_REPLAY_WINDOW = 64
_LABELS = {"rtp": (0, 1, 2), "rtcp": (3, 4, 5)}  # cipher key, auth key, salt (section 4.3.1)


class SrtpError(ValueError):
    """A packet that is not SRTP we can accept: too short, a bad tag, a replay."""


@dataclass(frozen=True, slots=True)
class Suite:
    """An SDES crypto suite: its name in ``a=crypto`` and its SRTP tag length."""

    name: str
    rtp_tag_bytes: int


SUITES = {
    suite.name: suite
    for suite in (Suite("AES_CM_128_HMAC_SHA1_80", 10), Suite("AES_CM_128_HMAC_SHA1_32", 4))
}
"""The suites we offer and accept, in order of preference."""


def new_key() -> str:
    """A fresh master key and salt, base64 as in ``inline:`` (RFC 4568 section 6.1)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES + SALT_BYTES)).decode("ascii")


def decode_key(inline: str) -> bytes:
    """The 30 bytes of master key and salt in ``inline``'s base64 (a ``|lifetime`` or
    ``|MKI:length`` after it is not supported); :class:`SrtpError` if it is not that."""
    key, bar, _ = inline.partition("|")
    if bar:
        raise SrtpError("key lifetimes and MKIs are not supported")
    try:
        material = base64.b64decode(key, validate=True)
    except ValueError:
        raise SrtpError("the key is not base64") from None
    if len(material) != KEY_BYTES + SALT_BYTES:
        raise SrtpError(f"the key and salt are {len(material)} bytes, not 30")
    return material


class SrtpContext:
    """One direction of one SRTP session: :meth:`protect` / :meth:`protect_rtcp` what we
    send, or :meth:`unprotect` / :meth:`unprotect_rtcp` what we receive (see the module
    docstring). ``inline`` is the ``a=crypto`` line's key (base64 of key and salt)."""

    def __init__(self, suite: Suite, inline: str) -> None:
        material = decode_key(inline)
        master_key, master_salt = material[:KEY_BYTES], material[KEY_BYTES:]
        self.suite = suite
        self._rtp = _SessionKeys(master_key, master_salt, "rtp")
        self._rtcp = _SessionKeys(master_key, master_salt, "rtcp")
        # Sending: the rollover counter and the last sequence number sent.
        self._roc = 0
        self._last_seq: int | None = None
        self._rtcp_index = 0
        # Receiving: the highest packet index accepted, and the replay window (bit n: the
        # packet ``_highest - n`` was accepted); the same for SRTCP's index.
        self._highest = -1
        self._window = 0
        self._rtcp_highest = -1
        self._rtcp_window = 0

    # -- RTP -------------------------------------------------------------------------------

    def protect(self, packet: bytes) -> bytes:
        """An RTP packet, encrypted and tagged."""
        seq, ssrc = _seq_ssrc(packet)
        if self._last_seq is not None and seq < self._last_seq and self._last_seq - seq > 0x8000:
            self._roc = (self._roc + 1) & 0xFFFFFFFF
        self._last_seq = seq
        start = _payload_start(packet)
        index = (self._roc << 16) | seq
        encrypted = packet[:start] + self._rtp.crypt(ssrc, index, packet[start:])
        tag = self._rtp.tag(encrypted + struct.pack("!I", self._roc), self.suite.rtp_tag_bytes)
        return encrypted + tag

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet inside ``packet``; :class:`SrtpError` if its tag is wrong, it is
        a replay, or it is too short to be SRTP."""
        tag_bytes = self.suite.rtp_tag_bytes
        if len(packet) < 12 + tag_bytes:
            raise SrtpError(f"{len(packet)} bytes is too short for SRTP")
        body, tag = packet[:-tag_bytes], packet[-tag_bytes:]
        seq, ssrc = _seq_ssrc(body)
        index = self._guess_index(seq)
        roc = index >> 16
        if not hmac.compare_digest(self._rtp.tag(body + struct.pack("!I", roc), tag_bytes), tag):
            raise SrtpError("the SRTP authentication tag is wrong")
        self._highest, self._window = _accept(index, self._highest, self._window)
        start = _payload_start(body)
        return body[:start] + self._rtp.crypt(ssrc, index, body[start:])

    def _guess_index(self, seq: int) -> int:
        """RFC 3711 appendix A: the packet index from its sequence number and the highest
        index seen so far."""
        if self._highest < 0:
            return seq
        roc, last = self._highest >> 16, self._highest & 0xFFFF
        if last < 0x8000:
            guess = roc - 1 if seq - last > 0x8000 and roc > 0 else roc
        else:
            guess = roc + 1 if last - 0x8000 > seq else roc
        index = (guess << 16) | seq
        _check_replay(index, self._highest, self._window)
        return index

    # -- RTCP ------------------------------------------------------------------------------

    def protect_rtcp(self, packet: bytes) -> bytes:
        """A compound RTCP packet, encrypted (after its first 8 bytes) and tagged, with the
        E flag and its SRTCP index (section 3.4)."""
        if len(packet) < 8:
            raise SrtpError("an RTCP packet is at least 8 bytes")
        index = self._rtcp_index
        self._rtcp_index = (index + 1) & 0x7FFFFFFF
        ssrc = struct.unpack_from("!I", packet, 4)[0]
        encrypted = packet[:8] + self._rtcp.crypt(ssrc, index, packet[8:])
        encrypted += struct.pack("!I", 0x80000000 | index)
        return encrypted + self._rtcp.tag(encrypted, _RTCP_TAG_BYTES)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The compound RTCP packet inside an SRTCP one; :class:`SrtpError` if its tag is
        wrong, it is a replay or too short."""
        if len(packet) < 8 + 4 + _RTCP_TAG_BYTES:
            raise SrtpError(f"{len(packet)} bytes is too short for SRTCP")
        body, tag = packet[:-_RTCP_TAG_BYTES], packet[-_RTCP_TAG_BYTES:]
        if not hmac.compare_digest(self._rtcp.tag(body, _RTCP_TAG_BYTES), tag):
            raise SrtpError("the SRTCP authentication tag is wrong")
        (e_index,) = struct.unpack_from("!I", body, len(body) - 4)
        index, payload = e_index & 0x7FFFFFFF, body[:-4]
        _check_replay(index, self._rtcp_highest, self._rtcp_window)
        self._rtcp_highest, self._rtcp_window = _accept(
            index, self._rtcp_highest, self._rtcp_window
        )
        if not e_index & 0x80000000:
            return payload
        ssrc = struct.unpack_from("!I", payload, 4)[0]
        return payload[:8] + self._rtcp.crypt(ssrc, index, payload[8:])


class _SessionKeys:
    """The session keys for RTP or RTCP (section 4.3), and the transforms that use them."""

    def __init__(self, master_key: bytes, master_salt: bytes, kind: str) -> None:
        cipher_label, auth_label, salt_label = _LABELS[kind]
        derive = _Aes(master_key)
        self.salt = _derive(derive, master_salt, salt_label, SALT_BYTES)
        self.auth_key = _derive(derive, master_salt, auth_label, _AUTH_KEY_BYTES)
        self._aes = _Aes(_derive(derive, master_salt, cipher_label, KEY_BYTES))

    def crypt(self, ssrc: int, index: int, data: bytes) -> bytes:
        """AES-CM (section 4.1.1): IV = (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16)."""
        salt = int.from_bytes(self.salt, "big") << 16
        iv = salt ^ (ssrc << 64) ^ (index << 16)
        return self._aes.ctr(iv.to_bytes(16, "big"), data)

    def tag(self, data: bytes, size: int) -> bytes:
        return hmac.digest(self.auth_key, data, "sha1")[:size]


def _derive(aes: _Aes, master_salt: bytes, label: int, size: int) -> bytes:
    """Section 4.3.1 with a key derivation rate of 0: AES-CM of zeros, IV = (master salt
    XOR label * 2^48) * 2^16."""
    x = int.from_bytes(master_salt, "big") ^ (label << 48)
    return aes.ctr((x << 16).to_bytes(16, "big"), bytes(size))


def _seq_ssrc(packet: bytes) -> tuple[int, int]:
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise SrtpError("not an RTP packet")
    return struct.unpack_from("!H", packet, 2)[0], struct.unpack_from("!I", packet, 8)[0]


def _payload_start(packet: bytes) -> int:
    """Where the payload starts: after the CSRCs and a header extension."""
    start = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < start + 4:
            raise SrtpError("the RTP header extension is cut short")
        start += 4 + 4 * struct.unpack_from("!H", packet, start + 2)[0]
    if start > len(packet):
        raise SrtpError("the RTP header is longer than the packet")
    return start


def _check_replay(index: int, highest: int, window: int) -> None:
    if highest < 0 or index > highest:
        return
    behind = highest - index
    if behind >= _REPLAY_WINDOW:
        raise SrtpError("the packet is too old (outside the replay window)")
    if window >> behind & 1:
        raise SrtpError("the packet is a replay")


def _accept(index: int, highest: int, window: int) -> tuple[int, int]:
    """The replay window after accepting ``index``."""
    if index > highest:
        shift = index - highest
        window = ((window << shift) | 1) & ((1 << _REPLAY_WINDOW) - 1) if highest >= 0 else 1
        return index, window
    return highest, window | 1 << (highest - index)


class _Aes:
    """AES-128 in counter mode, from OpenSSL's libcrypto (the EVP API): one cipher context,
    its key set once, its counter block set per call."""

    def __init__(self, key: bytes) -> None:
        lib = _libcrypto()
        self._lib = lib
        self._ctx = lib.EVP_CIPHER_CTX_new()
        if not self._ctx or not lib.EVP_EncryptInit_ex(
            self._ctx, lib.EVP_aes_128_ctr(), None, key, None
        ):
            raise RuntimeError("OpenSSL's AES-128-CTR cannot be set up")

    def ctr(self, iv: bytes, data: bytes) -> bytes:
        lib = self._lib
        out = ctypes.create_string_buffer(len(data))
        written = ctypes.c_int(0)
        if not lib.EVP_EncryptInit_ex(self._ctx, None, None, None, iv) or not (
            lib.EVP_EncryptUpdate(self._ctx, out, ctypes.byref(written), data, len(data))
        ):
            raise RuntimeError("OpenSSL's AES-128-CTR failed")
        return out.raw[: written.value]

    def __del__(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._lib.EVP_CIPHER_CTX_free(ctx)


@functools.cache
def _libcrypto() -> ctypes.CDLL:
    """OpenSSL's libcrypto, with the signatures of the few functions used."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
    pointer, c_int, text = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    lib.EVP_CIPHER_CTX_new.restype = pointer
    lib.EVP_CIPHER_CTX_new.argtypes = []
    lib.EVP_CIPHER_CTX_free.argtypes = [pointer]
    lib.EVP_aes_128_ctr.restype = pointer
    lib.EVP_aes_128_ctr.argtypes = []
    lib.EVP_EncryptInit_ex.restype = c_int
    lib.EVP_EncryptInit_ex.argtypes = [pointer, pointer, pointer, text, text]
    lib.EVP_EncryptUpdate.restype = c_int
    lib.EVP_EncryptUpdate.argtypes = [pointer, text, ctypes.POINTER(c_int), text, c_int]
    return lib
