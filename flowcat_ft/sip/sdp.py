"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one audio stream, Sans-I/O.

:func:`parse_sdp` reads a session description; :func:`answer` answers an offer and
:func:`make_offer` / :func:`accept_answer` do the other side. What is negotiated:

- one audio codec, G.711 µ-law (PCMU, payload type 0) or A-law (PCMA, 8) at 8 kHz, or
  Opus (RFC 7587: ``opus/48000/2``, a dynamic payload type, the RTP clock at 48 kHz
  whatever the audio's bandwidth), 20 ms packets: Opus where both sides take it (it
  is wideband), else the first of the offer's codecs that we take, in the offer's order;
- RFC 4733 ``telephone-event`` for DTMF at the chosen codec's clock rate (8000 for
  G.711, 48000 for Opus; with Opus, at 8000 where the offer has no other), with the
  payload type the offerer chose (we offer 101 and, with Opus, 102); every other payload
  type in the offer is left out of the answer, and RTP packets that carry one are not
  decoded as audio;
- the direction: ``sendonly`` or ``inactive`` from the peer is a hold (we answer
  ``recvonly`` / ``inactive`` and stop sending), as is the old ``c=0.0.0.0``;
- where the peer's media is: its ``c=`` address and ``m=`` port, which a re-INVITE may
  change;
- SRTP keys (RFC 4568's SDES: ``RTP/SAVP`` with ``a=crypto`` lines), by the ``srtp``
  policy: ``"off"`` refuses an SRTP offer, ``"allowed"`` takes one (and offers plain RTP),
  ``"required"`` refuses a plain offer and offers only SRTP. The first crypto line with a
  suite of :data:`~flowcat_ft.sip.srtp.SUITES` is taken, answered with our own key under
  its tag; the keys are in the clear in the SDP, so only signalling over TLS keeps them
  secret.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from flowcat_ft.sip.srtp import SUITES, SrtpError, decode_key, new_key

__all__ = [
    "CODECS",
    "DEFAULT_CODECS",
    "Codec",
    "Media",
    "Negotiated",
    "SdpError",
    "SessionDescription",
    "SrtpKeys",
    "accept_answer",
    "answer",
    "make_offer",
    "parse_sdp",
]

DTMF_PAYLOAD_TYPE = 101  # telephone-event/8000, for G.711
WIDEBAND_DTMF_PAYLOAD_TYPE = 102  # telephone-event/48000, for Opus
OPUS_FMTP = "minptime=10;useinbandfec=0;stereo=0;sprop-stereo=0"
"""RFC 7587 parameters of our Opus: mono both ways (we decode stereo to mono too), no
in-band FEC asked of the peer (PyAV's decoder does not expose it)."""
PTIME_MS = 20
SRTP_POLICIES = ("off", "allowed", "required")


class SdpError(ValueError):
    """An SDP body we cannot read or answer: ``status`` is the SIP response it deserves
    (400 for malformed, 488 Not Acceptable Here for no common codec)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Codec:
    """An RTP payload format: its name as in ``a=rtpmap``, clock rate, the payload type
    we offer it with (static for G.711, dynamic for Opus), the codec name flowcat's audio
    code uses (``"mulaw"``, ``"alaw"``, ``"opus"``), and its ``a=rtpmap`` channels and
    ``a=fmtp`` parameters."""

    name: str
    clock_rate: int
    static_type: int | None
    wire_codec: str | None
    offer_type: int = 0
    channels: int = 1
    fmtp: str | None = None


CODECS = {
    "PCMU": Codec("PCMU", 8000, 0, "mulaw", offer_type=0),
    "PCMA": Codec("PCMA", 8000, 8, "alaw", offer_type=8),
    "OPUS": Codec("opus", 48000, None, "opus", offer_type=111, channels=2, fmtp=OPUS_FMTP),
}
"""The audio codecs flowcat sends and receives over RTP, by SDP name in capitals."""

DEFAULT_CODECS = ("PCMU", "PCMA")
"""The codecs taken and offered unless configured otherwise (Opus is asked for)."""

_STATIC = {c.static_type: c for c in CODECS.values() if c.static_type is not None}
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_REVERSE = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly"}
_REVERSE["inactive"] = "inactive"


@dataclass(slots=True)
class Media:
    """One ``m=`` section: ``rtpmap`` is payload type -> ``(name, clock rate)``,
    ``channels`` payload type -> the rtpmap's channel count where one is given."""

    kind: str
    port: int
    proto: str
    formats: list[int]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str | None = None
    address: str | None = None
    ptime: int | None = None
    crypto: list[tuple[int, str, str]] = field(default_factory=list)  # tag, suite, key
    other: list[str] = field(default_factory=list)

    @property
    def secure(self) -> bool:
        """Whether the stream is SRTP (``RTP/SAVP``)."""
        return self.proto.upper().startswith("RTP/SAVP")

    def format_name(self, payload_type: int) -> tuple[str, int] | None:
        if payload_type in self.rtpmap:
            name, rate = self.rtpmap[payload_type]
            return name.upper(), rate
        codec = _STATIC.get(payload_type)
        return (codec.name, codec.clock_rate) if codec is not None else None


@dataclass(slots=True)
class SessionDescription:
    origin: str
    address: str | None
    media: list[Media]
    direction: str | None = None
    name: str = "-"

    @property
    def audio(self) -> Media | None:
        return next((m for m in self.media if m.kind == "audio"), None)

    def __str__(self) -> str:
        lines = ["v=0", f"o={self.origin}", f"s={self.name}"]
        if self.address is not None:
            lines.append(f"c=IN {_addrtype(self.address)} {self.address}")
        lines.append("t=0 0")
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        for media in self.media:
            formats = " ".join(map(str, media.formats)) or "0"
            lines.append(f"m={media.kind} {media.port} {media.proto} {formats}")
            if media.address is not None:
                lines.append(f"c=IN {_addrtype(media.address)} {media.address}")
            for pt in media.formats:
                if pt in media.rtpmap:
                    name, rate = media.rtpmap[pt]
                    channels = f"/{media.channels[pt]}" if pt in media.channels else ""
                    lines.append(f"a=rtpmap:{pt} {name}/{rate}{channels}")
                if pt in media.fmtp:
                    lines.append(f"a=fmtp:{pt} {media.fmtp[pt]}")
            if media.ptime is not None:
                lines.append(f"a=ptime:{media.ptime}")
            for tag, suite, key in media.crypto:
                lines.append(f"a=crypto:{tag} {suite} inline:{key}")
            if media.direction is not None:
                lines.append(f"a={media.direction}")
        return "\r\n".join(lines) + "\r\n"


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def parse_sdp(text: str | bytes) -> SessionDescription:
    """A session description; :class:`SdpError` names what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("the SDP body is not UTF-8") from None
    origin, address, direction, name = None, None, None, "-"
    media: list[Media] = []
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("the SDP body does not start with v=0")
    for line in lines[1:]:
        kind, eq, value = line.partition("=")
        if not eq or len(kind) != 1:
            raise SdpError(f"bad SDP line {line[:60]!r}")
        current = media[-1] if media else None
        if kind == "o":
            origin = value
        elif kind == "s":
            name = value
        elif kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError(f"bad connection line {line!r}")
            connection = parts[2].partition("/")[0]
            if current is None:
                address = connection
            else:
                current.address = connection
        elif kind == "m":
            media.append(_media_line(value, line))
        elif kind == "a":
            attribute, _, argument = value.partition(":")
            if attribute in _DIRECTIONS:
                if current is None:
                    direction = attribute
                else:
                    current.direction = attribute
            elif current is not None:
                _media_attribute(current, attribute, argument, line)
    if origin is None:
        raise SdpError("the SDP body has no o= line")
    for m in media:
        if m.port and (m.address or address) is None:
            raise SdpError(f"no connection address for the {m.kind} stream")
    return SessionDescription(origin, address, media, direction, name)


def _media_line(value: str, line: str) -> Media:
    parts = value.split()
    if len(parts) < 4 or not parts[1].partition("/")[0].isdigit():
        raise SdpError(f"bad media line {line!r}")
    port = int(parts[1].partition("/")[0])
    if port > 65535:
        raise SdpError(f"bad port in {line!r}")
    formats = []
    if parts[2].startswith("RTP/"):
        for pt in parts[3:]:
            if not pt.isdigit() or int(pt) > 127:
                raise SdpError(f"bad payload type {pt!r} in {line!r}")
            formats.append(int(pt))
    return Media(parts[0], port, parts[2], formats)


def _media_attribute(media: Media, attribute: str, argument: str, line: str) -> None:
    if attribute == "rtpmap":
        pt, _, encoding = argument.partition(" ")
        name, _, rest = encoding.partition("/")
        rate, _, channels = rest.partition("/")
        if not pt.isdigit() or not name or not rate.isdigit():
            raise SdpError(f"bad rtpmap {line!r}")
        media.rtpmap[int(pt)] = (name, int(rate))
        if channels.isdigit():
            media.channels[int(pt)] = int(channels)
    elif attribute == "fmtp":
        pt, _, params = argument.partition(" ")
        if pt.isdigit():
            media.fmtp[int(pt)] = params.strip()
    elif attribute == "ptime" and argument.strip().isdigit():
        media.ptime = int(argument)
    elif attribute == "crypto":
        parts = argument.split()
        if len(parts) < 3 or not parts[0].isdigit() or not parts[2].startswith("inline:"):
            raise SdpError(f"bad crypto line {line[:80]!r}")
        if len(parts) == 3:  # session parameters (UNENCRYPTED_SRTP...): not for us
            key = parts[2].removeprefix("inline:")
            media.crypto.append((int(parts[0]), parts[1].upper(), key))
    else:
        media.other.append(line)


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """The SRTP suite agreed, our key (what we send is protected with it) and the peer's
    (what we receive), as base64 key and salt."""

    suite: str
    local: str
    remote: str


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What an offer/answer agreed: the codec and its payload type, RFC 4733's payload
    type (None if the peer did not take it), where the peer's RTP goes, whether we
    may send and should expect to receive, and the SRTP keys (None: plain RTP)."""

    codec: Codec
    payload_type: int
    dtmf_payload_type: int | None
    remote_address: str
    remote_port: int
    send: bool
    receive: bool
    srtp: SrtpKeys | None = None

    @property
    def on_hold(self) -> bool:
        return not self.send


def _origin(address: str, session_id: int, version: int) -> str:
    return f"flowcat {session_id} {version} IN {_addrtype(address)} {address}"


def answer(
    offer: SessionDescription,
    address: str,
    port: int,
    *,
    codecs: tuple[str, ...] = DEFAULT_CODECS,
    session_id: int | None = None,
    version: int = 1,
    srtp: str = "allowed",
    srtp_key: str | None = None,
) -> tuple[SessionDescription, Negotiated]:
    """Our answer to ``offer``, with our RTP at ``address``:``port``, accepting one of
    the offer's codecs that is in ``codecs`` (Opus first, else in the offer's order)
    and telephone-event at its clock rate, and SRTP as the ``srtp`` policy says
    (``srtp_key``: our key, kept from an earlier answer; default: a new one).
    :class:`SdpError` (488) if no codec is in common or SRTP cannot be agreed."""
    audio = offer.audio
    rtp = ("RTP/AVP", "RTP/SAVP")
    if audio is None or audio.port == 0 or not audio.proto.upper().startswith(rtp):
        raise SdpError("the offer has no RTP/AVP or RTP/SAVP audio stream", 488)
    keys, crypto = _answer_srtp(audio, srtp, srtp_key)
    taken = [
        (pt, CODECS[named[0]])
        for pt in audio.formats
        if (named := audio.format_name(pt)) is not None
        and named[0] in codecs
        and CODECS[named[0]].clock_rate == named[1]
    ]
    chosen = next((c for c in taken if c[1].name == "opus"), taken[0] if taken else None)
    if chosen is None:
        offered = ", ".join(
            "/".join(map(str, audio.format_name(pt) or (pt,))) for pt in audio.formats
        )
        raise SdpError(f"no codec in common: offered {offered}; we take {', '.join(codecs)}", 488)
    pt, codec = chosen
    dtmf = _telephone_event(audio, codec.clock_rate)
    offered_direction = audio.direction or offer.direction or "sendrecv"
    remote_address = audio.address or offer.address or ""
    if remote_address in ("0.0.0.0", "::") and offered_direction == "sendrecv":
        offered_direction = "sendonly"  # RFC 2543 hold
    direction = _REVERSE[offered_direction]
    formats = [pt] + ([dtmf] if dtmf is not None else [])
    media = Media("audio", port, audio.proto, formats, ptime=PTIME_MS, direction=direction)
    media.crypto = crypto
    _describe(media, pt, codec)
    if dtmf is not None:
        media.rtpmap[dtmf] = audio.rtpmap.get(dtmf, ("telephone-event", codec.clock_rate))
        media.fmtp[dtmf] = "0-16"
    session_id = session_id or int(time.time())
    description = SessionDescription(_origin(address, session_id, version), address, [media])
    negotiated = Negotiated(
        codec,
        pt,
        dtmf,
        remote_address,
        audio.port,
        send=direction in ("sendrecv", "sendonly"),
        receive=direction in ("sendrecv", "recvonly"),
        srtp=keys,
    )
    return description, negotiated


def _telephone_event(media: Media, clock_rate: int) -> int | None:
    """The first payload type of ``media`` that is RFC 4733 events at ``clock_rate``
    (section 2.1: the events' clock is the audio's), else at 8000: peers that offer Opus
    with events at 8 kHz only are common (baresip, older browsers); the events then go
    with timestamps and durations at the audio's clock, as their RTP stream's are."""
    for rate in dict.fromkeys((clock_rate, 8000)):
        for pt in media.formats:
            if media.format_name(pt) == ("TELEPHONE-EVENT", rate):
                return pt
    return None


def _describe(media: Media, payload_type: int, codec: Codec) -> None:
    """Add ``codec``'s ``a=rtpmap`` (and ``a=fmtp``) under ``payload_type``."""
    media.rtpmap[payload_type] = (codec.name, codec.clock_rate)
    if codec.channels != 1:
        media.channels[payload_type] = codec.channels
    if codec.fmtp is not None:
        media.fmtp[payload_type] = codec.fmtp


def _answer_srtp(
    audio: Media, policy: str, key: str | None
) -> tuple[SrtpKeys | None, list[tuple[int, str, str]]]:
    """The SRTP keys of our answer to ``audio``, and its crypto line (:class:`SdpError`
    488 where the ``policy`` or the offer's suites rule SRTP out)."""
    if not audio.secure:
        if policy == "required":
            raise SdpError("SRTP is required here: offer RTP/SAVP with a=crypto", 488)
        return None, []
    if policy == "off":
        raise SdpError("SRTP is not taken here: offer RTP/AVP", 488)
    for tag, suite, remote in audio.crypto:
        if suite not in SUITES:
            continue
        try:
            decode_key(remote)
        except SrtpError:
            continue
        local = key or new_key()
        return SrtpKeys(suite, local, remote), [(tag, suite, local)]
    offered = ", ".join(suite for _, suite, _ in audio.crypto) or "none"
    taken = ", ".join(SUITES)
    raise SdpError(f"no SRTP crypto suite in common: offered {offered}; we take {taken}", 488)


def make_offer(
    address: str,
    port: int,
    *,
    codecs: tuple[str, ...] = DEFAULT_CODECS,
    session_id: int | None = None,
    version: int = 1,
    direction: str = "sendrecv",
    srtp: bool = False,
) -> SessionDescription:
    """Our offer: ``codecs`` in order of preference, then telephone-event at 8 kHz (and
    at 48 kHz with Opus), 20 ms; with ``srtp``, as ``RTP/SAVP`` with one crypto line
    per suite (each its own key)."""
    clocks = sorted({CODECS[name].clock_rate for name in codecs})
    events = {8000: DTMF_PAYLOAD_TYPE, 48000: WIDEBAND_DTMF_PAYLOAD_TYPE}
    formats = [CODECS[name].offer_type for name in codecs] + [events[c] for c in clocks]
    proto = "RTP/SAVP" if srtp else "RTP/AVP"
    media = Media("audio", port, proto, formats, ptime=PTIME_MS, direction=direction)
    if srtp:
        media.crypto = [(tag, suite, new_key()) for tag, suite in enumerate(SUITES, 1)]
    for name in codecs:
        _describe(media, CODECS[name].offer_type, CODECS[name])
    for clock in clocks:
        media.rtpmap[events[clock]] = ("telephone-event", clock)
        media.fmtp[events[clock]] = "0-16"
    session_id = session_id or int(time.time())
    return SessionDescription(_origin(address, session_id, version), address, [media])


def accept_answer(offer: SessionDescription, reply: SessionDescription) -> Negotiated:
    """What the peer's ``reply`` to our ``offer`` agreed (:class:`SdpError` 488 if it
    took none of our codecs)."""
    ours = offer.audio
    audio = reply.audio
    if ours is None or audio is None or audio.port == 0:
        raise SdpError("the answer refused the audio stream", 488)
    offered = {ours.format_name(pt) for pt in ours.formats}
    chosen = None
    for pt in audio.formats:
        named = audio.format_name(pt)
        if named in offered and named[0] in CODECS:
            chosen = (pt, CODECS[named[0]])
            break
    if chosen is None:
        raise SdpError("the answer has none of the codecs we offered", 488)
    dtmf = _telephone_event(audio, chosen[1].clock_rate)
    keys = _accepted_srtp(ours, audio)
    direction = _REVERSE[audio.direction or reply.direction or "sendrecv"]
    ours_direction = ours.direction or "sendrecv"
    send = direction in ("sendrecv", "sendonly") and ours_direction in ("sendrecv", "sendonly")
    receive = direction in ("sendrecv", "recvonly") and ours_direction in ("sendrecv", "recvonly")
    return Negotiated(
        chosen[1],
        chosen[0],
        dtmf,
        audio.address or reply.address or "",
        audio.port,
        send=send,
        receive=receive,
        srtp=keys,
    )


def _accepted_srtp(ours: Media, theirs: Media) -> SrtpKeys | None:
    """The SRTP keys an answer took (:class:`SdpError` 488 if it does not match what we
    offered: a suite we did not offer under its tag, SRTP we did not offer or refused)."""
    if not ours.secure:
        if theirs.secure:
            raise SdpError("the answer is SRTP, which we did not offer", 488)
        return None
    offered = {tag: (suite, key) for tag, suite, key in ours.crypto}
    for tag, suite, remote in theirs.crypto if theirs.secure else ():
        if tag in offered and offered[tag][0] == suite:
            try:
                decode_key(remote)
            except SrtpError as error:
                raise SdpError(f"the answer's SRTP key: {error}", 488) from None
            return SrtpKeys(suite, offered[tag][1], remote)
    raise SdpError("the answer took none of the SRTP crypto suites we offered", 488)


def with_version(description: SessionDescription, version: int) -> SessionDescription:
    """The same description with its ``o=`` line's version set (RFC 3264 section 8)."""
    parts = description.origin.split()
    parts[2] = str(version)
    return replace(description, origin=" ".join(parts))
