"""Carrier media-stream protocols as Sans-I/O codecs: the events and the base class.

A serializer speaks one carrier's WebSocket protocol without touching a socket, a thread or
an event loop. :meth:`Serializer.receive` takes one message as the WebSocket library hands
it over (``str`` for a text frame, ``bytes`` for a binary one) and returns the events it
carries; the ``send_*`` methods return the one message to send for an audio payload, a
"clear" (drop the audio queued at the carrier) or a mark (tell me when the audio sent so far
has played). :meth:`Serializer.send_frame` lets a protocol tell its peer about other
frames: carriers have no such messages, a browser shows transcripts and speaking events.
Audio stays in the wire codec both ways (PCM is always 16-bit little-endian: a
serializer whose carrier sends big-endian L16 swaps the bytes): decoding G.711 into slabs,
resampling and pacing the outgoing frames are the transport's job.

A peer that breaks its protocol makes :meth:`~Serializer.receive` raise
:class:`ProtocolError`, whose ``close_code`` (a ``websockets`` :class:`CloseCode`) is the code
to close the connection with:

- 1003 ``UNSUPPORTED_DATA``: a binary message where the protocol has only text, or audio
  flowcat cannot carry: an encoding, a sample rate (:data:`~flowcat_ft.frames.SAMPLE_RATES`)
  or a number of channels (:data:`~flowcat_ft.frames.MAX_CHANNELS`) it does not take;
- 1007 ``INVALID_DATA``: malformed content: bad JSON, a missing field or a field of the wrong
  type, bad base64, a partial PCM sample, a bad DTMF digit;
- 1008 ``POLICY_VIOLATION``: a well-formed message out of protocol: an unknown event, audio
  (DTMF, marks) before the stream started, a second start;
- 1009 ``MESSAGE_TOO_BIG``: a message over ``max_message_bytes``.

Threading contract: a serializer belongs to one connection and is called by one thread at a
time (the connection's event loop); it has no lock and shares no state.
"""

from __future__ import annotations

import abc
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from websockets.frames import CloseCode

from flowcat_ft.frames import MAX_CHANNELS, SAMPLE_RATES

if TYPE_CHECKING:
    from flowcat_ft.frames import Frame

__all__ = [
    "DTMF_DIGITS",
    "MAX_MESSAGE_BYTES",
    "AudioIn",
    "DtmfIn",
    "Event",
    "Ignored",
    "MarkPlayed",
    "ProtocolError",
    "Serializer",
    "StreamStarted",
    "StreamStopped",
    "quoted",
]

MAX_MESSAGE_BYTES = 64 * 1024
"""Default limit on one incoming message: far above any carrier's 20-100 ms audio frame."""

DTMF_DIGITS = frozenset("0123456789*#ABCD")

_reprs = reprlib.Repr(maxstring=40, maxother=40, maxlevel=2)


def quoted(value: object) -> str:
    """``repr(value)`` cut short: error messages quote what the peer sent, which may be
    long."""
    return _reprs.repr(value)


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """The stream began: which call it belongs to, and how its audio is encoded.

    ``codec`` is one of :data:`flowcat_ft.frames.CODECS` (``"mulaw"``, ``"alaw"`` or
    ``"pcm16"``, 16-bit little-endian). ``metadata`` holds ``"parameters"``, the custom
    parameters the application attached to the stream when it started it (a dict of
    strings), and ``"message"``, the carrier's start message as it arrived.
    """

    call_id: str
    stream_id: str
    sample_rate: int
    codec: str
    channels: int
    metadata: dict


@dataclass(frozen=True, slots=True, repr=False)
class AudioIn:
    """Caller audio, still in the stream's wire codec and rate (never empty)."""

    payload: bytes

    def __repr__(self) -> str:
        return f"AudioIn(<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True)
class DtmfIn:
    """The caller pressed a key: one of :data:`DTMF_DIGITS`."""

    digit: str


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The audio sent before the mark ``name`` has played (or was cleared, on Twilio)."""

    name: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """The carrier ended the stream; ``reason`` is its word for why, or ``"stop"``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message the protocol allows but flowcat has no use for, such as ``connected``.

    ``detail`` says what it carried that is worth a log line (a carrier's error report).
    """

    event: str
    detail: str = ""


type Event = StreamStarted | AudioIn | DtmfIn | MarkPlayed | StreamStopped | Ignored


class ProtocolError(Exception):
    """The peer broke its protocol: close the connection with ``close_code``."""

    def __init__(self, message: str, close_code: CloseCode) -> None:
        super().__init__(message)
        self.close_code = close_code


# -- the codec base class ------------------------------------------------------------------


class Serializer(abc.ABC):
    """One carrier's media-stream protocol, for one connection.

    Subclasses set :attr:`name`, implement :meth:`_receive_text` (and
    :meth:`_receive_binary` where the protocol has binary messages) and the ``send_*``
    methods, and build their events with the helpers below, which keep the stream's state:
    not started, then started by exactly one :class:`StreamStarted`.

    ``ignore_unknown_events`` chooses between closing the connection on an event the
    protocol does not define (the default for carriers that document a closed set) and
    reporting it as :class:`Ignored` (the default where the carrier says it may add events).
    """

    name: ClassVar[str]
    """The carrier, as in the URL path the transport routes by: ``"twilio"``, ``"raw"``..."""

    audio_chunk_ms: ClassVar[int] = 20
    """How much audio the transport should put in each outgoing audio message."""

    ignores_unknown_events: ClassVar[bool] = False
    """The default for ``ignore_unknown_events``."""

    query_options: ClassVar[tuple[str, ...]] = ()
    """The constructor's options that a media route's URL query may set (``codec``,
    ``sample_rate``); a carrier's route takes none, and ignores what the carrier adds."""

    def __init__(
        self,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ignore_unknown_events: bool | None = None,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, not {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.ignore_unknown_events = (
            self.ignores_unknown_events if ignore_unknown_events is None else ignore_unknown_events
        )
        self._stream: StreamStarted | None = None

    @property
    def stream(self) -> StreamStarted | None:
        """The :class:`StreamStarted` event once the stream has started, else ``None``."""
        return self._stream

    @property
    def started(self) -> bool:
        return self._stream is not None

    @property
    def sample_rate(self) -> int | None:
        """The stream's sample rate in Hz, once known."""
        return None if self._stream is None else self._stream.sample_rate

    @property
    def codec(self) -> str | None:
        """The stream's wire codec (``"mulaw"``, ``"alaw"`` or ``"pcm16"``), once known."""
        return None if self._stream is None else self._stream.codec

    # -- incoming --------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[Event]:
        """The events one incoming message carries, in order (often one, sometimes none).

        Raises :class:`ProtocolError` if the message breaks the protocol.
        """
        if isinstance(message, str):
            size = len(message.encode("utf-8", "surrogatepass"))
        else:
            size = len(message)
        if size > self.max_message_bytes:
            raise ProtocolError(
                f"a {size}-byte message is over the {self.max_message_bytes}-byte limit",
                CloseCode.MESSAGE_TOO_BIG,
            )
        if isinstance(message, str):
            return self._receive_text(message)
        return self._receive_binary(message)

    @abc.abstractmethod
    def _receive_text(self, text: str) -> list[Event]:
        """The events in one text message."""

    def _receive_binary(self, data: bytes) -> list[Event]:
        """The events in one binary message; by default, binary messages are refused."""
        raise ProtocolError(
            f"a {len(data)}-byte binary message: the {self.name} protocol sends only text",
            CloseCode.UNSUPPORTED_DATA,
        )

    # Helpers that build events and keep the stream's state.

    def _start(self, stream: StreamStarted) -> list[Event]:
        if self._stream is not None:
            raise ProtocolError(
                "a second start: the stream has already started", CloseCode.POLICY_VIOLATION
            )
        if stream.sample_rate not in SAMPLE_RATES:
            raise ProtocolError(
                f"a sample rate of {stream.sample_rate} Hz: flowcat takes "
                f"{', '.join(map(str, SAMPLE_RATES))}",
                CloseCode.UNSUPPORTED_DATA,
            )
        if not 1 <= stream.channels <= MAX_CHANNELS:
            raise ProtocolError(
                f"{stream.channels} channels: flowcat takes 1 to {MAX_CHANNELS}",
                CloseCode.UNSUPPORTED_DATA,
            )
        self._stream = stream
        return [stream]

    def _require_stream(self, what: str) -> StreamStarted:
        if self._stream is None:
            raise ProtocolError(f"{what} before the stream started", CloseCode.POLICY_VIOLATION)
        return self._stream

    def _audio(self, payload: bytes) -> list[Event]:
        """Caller audio, checked to hold whole samples of the stream's codec."""
        stream = self._require_stream("audio")
        if not payload:
            return []
        frame_bytes = (2 if stream.codec == "pcm16" else 1) * stream.channels
        if len(payload) % frame_bytes:
            raise ProtocolError(
                f"{len(payload)} bytes of audio are not a whole number of {stream.codec} "
                f"samples for {stream.channels} channel(s)",
                CloseCode.INVALID_DATA,
            )
        return [AudioIn(payload)]

    def _dtmf(self, digit: str) -> list[Event]:
        self._require_stream("DTMF")
        if digit not in DTMF_DIGITS:
            raise ProtocolError(f"{quoted(digit)} is not a DTMF digit", CloseCode.INVALID_DATA)
        return [DtmfIn(digit)]

    def _mark(self, name: str) -> list[Event]:
        self._require_stream("a mark")
        return [MarkPlayed(name)]

    def _unknown(self, event: str) -> list[Event]:
        if self.ignore_unknown_events:
            return [Ignored(event)]
        raise ProtocolError(
            f"unknown event {quoted(event)} in the {self.name} protocol", CloseCode.POLICY_VIOLATION
        )

    # -- outgoing --------------------------------------------------------------------------

    def _outgoing_stream(self) -> StreamStarted:
        """The stream outgoing messages address; sending before it started is a bug."""
        if self._stream is None:
            raise RuntimeError(f"nothing can be sent to {self.name} before the stream started")
        return self._stream

    @abc.abstractmethod
    def send_audio(self, payload: bytes) -> str | bytes:
        """The message that plays ``payload`` (in the stream's wire codec and rate)."""

    @abc.abstractmethod
    def send_clear(self) -> str | bytes | None:
        """The message that drops the audio queued at the carrier, or ``None`` if none."""

    @abc.abstractmethod
    def send_mark(self, name: str) -> str | bytes | None:
        """The message asking for :class:`MarkPlayed` once the audio sent so far has
        played, or ``None`` where the protocol has no marks."""

    def send_frame(self, frame: Frame) -> str | bytes | None:
        """The message that tells the peer about ``frame``, or ``None`` (the default: carriers
        have nothing to say about frames).

        The transport calls it for each frame leaving the pipeline downstream that is not
        audio and that it does not handle itself (interruptions, TTS stops and the call's end
        are :meth:`send_clear`, :meth:`send_mark` and closing): transcripts, speaking events,
        text, and the transport's own :class:`~flowcat_ft.frames.MetricsFrame`
        of a turn's latency (``{"turn_latency_ms": ms}``, from processor ``"transport"``).
        Called only once the stream has started.
        """
        return None
