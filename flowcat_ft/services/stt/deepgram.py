"""Deepgram-style live transcription over a WebSocket: audio up, JSON results down.

Wire format (https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming,
https://developers.deepgram.com/docs/interim-results,
https://developers.deepgram.com/docs/understand-endpointing-interim-results,
https://developers.deepgram.com/docs/utterance-end,
https://developers.deepgram.com/docs/keep-alive and
https://developers.deepgram.com/docs/close-stream): connect to
``wss://api.deepgram.com/v1/listen`` with the options as query parameters (``model``,
``language``, ``encoding=linear16``, ``sample_rate``, ``channels``, ``interim_results``,
``endpointing`` in ms, ``utterance_end_ms``, ``smart_format``, ``punctuate``,
``vad_events``...) and ``Authorization: Token <key>``. Raw audio goes up as binary
messages. Text messages go up as ``{"type": "KeepAlive"}`` (within every 10 s without
audio, or the server closes with ``NET-0001``), ``{"type": "Finalize"}`` (flush what is
buffered) and ``{"type": "CloseStream"}`` (finish, send the last results and a
``Metadata`` message, close).

Down come ``{"type": "Results", "channel_index", "duration", "start", "is_final",
"speech_final", "channel": {"alternatives": [{"transcript", "confidence", "words",
"languages"}]}, ...}``: interim results (``is_final: false``) are revised until a final one
(``is_final: true``) settles that stretch of audio; ``speech_final: true`` marks the end of
an utterance (endpointing: that much silence after speech). ``{"type": "UtteranceEnd",
"channel": [0, 1], "last_word_end": 2.395}`` (with ``utterance_end_ms``, which needs
interim results) says the same from the gap after the last word, where background noise
keeps endpointing from firing; after a ``speech_final`` it is redundant. Also
``Metadata``, ``SpeechStarted`` (ignored here), and errors, sent as ``{"type": "Error",
"description"/"message"}`` or given as the close frame's reason.

The end of an utterance (``speech_final``, or an ``UtteranceEnd`` not already covered by
one) after final words is pushed as an
:class:`~flowcat_ft.services.llm.frames.UtteranceEndFrame` following their transcript.

A silent provider is caught: while audio is going up, a connection that sends nothing back
(no results, no metadata) for ``stall_timeout`` seconds is reported, closed and reopened,
like one that drops; after ``max_reconnects`` failed connections in a row (or once
connecting fails for good, per the retry policy) the service gives up with a fatal error,
which ends the call: a call that cannot hear the caller must not hang.

The Sans-I/O part is :func:`listen_url`, the control messages and :func:`parse_message`;
:class:`DeepgramSTTService` is the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from flowcat_ft.frames import InputAudioRawFrame, StartFrame
from flowcat_ft.services.net.auth import Secret
from flowcat_ft.services.net.auth import api_key as find_api_key
from flowcat_ft.services.net.errors import ProviderError, ProviderProtocolError, json_object
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.ws import close_quietly, connect_ws
from flowcat_ft.services.stt.base import STTService

__all__ = [
    "CLOSE_STREAM",
    "FINALIZE",
    "KEEP_ALIVE",
    "DeepgramSTTService",
    "Ignored",
    "Transcript",
    "UtteranceEnd",
    "listen_url",
    "parse_message",
]

KEEP_ALIVE = json.dumps({"type": "KeepAlive"})
FINALIZE = json.dumps({"type": "Finalize"})
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    is_final: bool
    speech_final: bool
    start: float
    duration: float
    language: str | None = None


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    last_word_end: float


@dataclass(frozen=True, slots=True)
class Ignored:
    kind: str


def listen_url(base: str, **options: Any) -> str:
    """The listen URL with ``options`` as query parameters (booleans as true/false)."""
    query = {
        k: ("true" if v is True else "false" if v is False else v)
        for k, v in options.items()
        if v is not None
    }
    return f"{base}?{urlencode(query)}"


def parse_message(message: str | bytes) -> Transcript | UtteranceEnd | Ignored:
    """One server message. Raises :class:`ProviderError` for an error message,
    :class:`ProviderProtocolError` for a malformed one."""
    payload = json_object(message)
    kind = payload.get("type")
    if kind in ("Error", "error") or ("err_code" in payload and "err_msg" in payload):
        detail = payload.get("description") or payload.get("message") or payload.get("err_msg")
        raise ProviderError(f"the STT reported an error: {detail}")
    if kind == "UtteranceEnd":
        try:
            return UtteranceEnd(float(payload.get("last_word_end") or 0.0))
        except (TypeError, ValueError):
            raise ProviderProtocolError(f"a malformed UtteranceEnd: {message[:80]!r}") from None
    if kind != "Results":
        return Ignored(str(kind))
    try:
        alternative = payload["channel"]["alternatives"][0]
        text = alternative["transcript"]
        languages = alternative.get("languages") or []
        return Transcript(
            str(text),
            bool(payload.get("is_final")),
            bool(payload.get("speech_final")),
            float(payload.get("start") or 0.0),
            float(payload.get("duration") or 0.0),
            languages[0] if languages else None,
        )
    except (KeyError, IndexError, TypeError, ValueError):
        raise ProviderProtocolError(f"a malformed Results message: {message[:80]!r}") from None


class DeepgramSTTService(STTService):
    """Deepgram's live transcription (see the module docstring). The connection opens when
    the call starts and again if it drops or stalls, after a backoff from ``retry`` (which
    also governs each connect), up to ``max_reconnects`` times in a row (a connection that
    delivered results resets the count); up to
    ``buffer_secs`` of audio waits while it connects. ``chunk_ms``: how much of the
    caller's audio goes up in one message (Deepgram takes 20 to 250 ms): 100 ms sends a
    fifth of the messages 20 ms frames would (each one cost the event loop some 25 µs of
    CPU on 3.13t); the audio held back is sent at once when the user stops speaking,
    before the ``Finalize`` that follows, so only interim results can come up to
    ``chunk_ms`` later. ``utterance_end_ms`` asks for ``UtteranceEnd`` messages
    (with interim results only; None: not at all); ``stall_timeout``: how long audio may
    go unanswered (None: for ever). ``options`` add to or override the query parameters.

    Threading contract: ``_chunk`` (audio not yet handed to the loop) is used on the
    stage thread only; the attributes after it, on the loop only.
    """

    def __init__(
        self,
        *,
        model: str = "nova-3",
        language: str = "en",
        url: str = "wss://api.deepgram.com/v1/listen",
        api_key: str | Secret | None = None,
        api_key_env: str = "DEEPGRAM_API_KEY",
        interim_results: bool = True,
        endpointing_ms: int | None = 300,
        utterance_end_ms: int | None = 1000,
        chunk_ms: int = 100,
        options: dict[str, Any] | None = None,
        keepalive_secs: float = 5.0,
        buffer_secs: float = 2.0,
        stall_timeout: float | None = 10.0,
        max_reconnects: int = 3,
        retry: RetryPolicy | None = None,
        user_id: str = "",
        audio_passthrough: bool = True,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            user_id=user_id,
            audio_passthrough=audio_passthrough,
            name=name,
            ssl_context=ssl_context,
            ca_file=ca_file,
        )
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
        self.model = model
        self.language = language
        self.url = url
        self._key = find_api_key(api_key_env, api_key)
        self.interim_results = interim_results
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.chunk_ms = chunk_ms
        self.options = dict(options or {})
        self.keepalive_secs = keepalive_secs
        self.buffer_secs = buffer_secs
        self.stall_timeout = stall_timeout
        self.max_reconnects = max_reconnects
        self.retry = retry or RetryPolicy()
        self._chunk = bytearray()  # on the stage thread only
        # On the loop only:
        self._ws: ClientConnection | None = None
        self._outbox: deque[str | bytes] = deque()
        self._outbox_bytes = 0
        self._wake = asyncio.Event()
        self._last_sent = 0.0
        self._unanswered_since: float | None = None  # audio sent, nothing received since
        self._answered = False  # this connection delivered results
        self._closing = False

    def query(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "language": self.language,
            "encoding": "linear16",
            "sample_rate": self.sample_rate,
            "channels": 1,
            "interim_results": self.interim_results,
            "endpointing": self.endpointing_ms if self.endpointing_ms is not None else False,
            "utterance_end_ms": self.utterance_end_ms if self.interim_results else None,
            "smart_format": True,
            "punctuate": True,
            **self.options,
        }

    def on_start(self, frame: StartFrame) -> None:
        super().on_start(frame)
        self.run_background(self._run())

    # -- audio up (stage thread → loop) ----------------------------------------------------

    def send_audio(self, frame: InputAudioRawFrame) -> None:
        chunk = self._chunk
        chunk += frame.samples.data  # a copy: the frame (and its slab) goes on
        if len(chunk) >= self.chunk_ms * self.sample_rate // 500:  # 2 bytes a sample
            self._send_chunk()

    def user_stopped(self) -> None:
        self._send_chunk()
        self.event_loop.bridge.send(self._queue_on_loop, FINALIZE, None)

    def _send_chunk(self) -> None:
        if self._chunk:
            data = bytes(self._chunk)
            self._chunk.clear()
            self.event_loop.bridge.send(self._queue_on_loop, data, None)

    def _queue_on_loop(self, message: str | bytes, _: object) -> None:
        """Queue a message for the sender (audio waits here while the connection opens, up
        to ``buffer_secs``; control messages are dropped while it is closed)."""
        if isinstance(message, str) and self._ws is None:
            return
        self._outbox.append(message)
        if isinstance(message, bytes):
            self._outbox_bytes += len(message)
            limit = int(self.buffer_secs * self.sample_rate * 2)
            while self._outbox_bytes > limit:
                old = self._outbox.popleft()
                if isinstance(old, bytes):
                    self._outbox_bytes -= len(old)
        self._wake.set()

    async def _sender(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                message = outbox.popleft()
                if isinstance(message, bytes):
                    self._outbox_bytes -= len(message)
                try:
                    await ws.send(message)
                except ConnectionClosed:
                    return  # the receive loop sees the close and reconnects
                self._last_sent = loop.time()
                if isinstance(message, bytes) and self._unanswered_since is None:
                    self._unanswered_since = self._last_sent

    # -- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        auth = {"Authorization": Secret(f"Token {self._key.reveal()}")}
        while not self._closing:
            try:
                ws = await connect_ws(
                    listen_url(self.url, **self.query()),
                    auth,
                    retry=self.retry,
                    ssl_context=self.ssl_context,
                )
            except Exception as error:  # the retry policy gave up
                self.report_error(
                    f"could not connect to the STT: {type(error).__name__}: {error}", fatal=True
                )
                return
            self._ws = ws
            self._unanswered_since = None
            self._answered = False
            self._wake.set()  # send what queued up while connecting
            sender = asyncio.ensure_future(self._sender(ws))
            keepalive = asyncio.ensure_future(self._keepalive())
            try:
                clean = await self._receive(ws)
            finally:
                sender.cancel()
                keepalive.cancel()
                self._ws = None
            if clean or self._closing:
                return
            failures = 1 if self._answered else failures + 1
            if failures > self.max_reconnects:
                self.report_error(
                    f"the STT connection failed {failures} times in a row; giving up", fatal=True
                )
                return
            await asyncio.sleep(self.retry.backoff(failures))

    async def _receive(self, ws: ClientConnection) -> bool:
        """Hand out transcripts until the connection closes; True if it closed cleanly,
        False if it dropped or stalled (then it is closed here)."""
        loop = asyncio.get_running_loop()
        poll = self.stall_timeout / 4 if self.stall_timeout else None
        heard = False  # final words since the last end of an utterance
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), poll)
                except TimeoutError:  # recv() is safe to cancel: nothing is lost
                    if self._stalled(loop.time()):
                        self.report_error(
                            f"no reply from the STT for {self.stall_timeout:g} s "
                            "while sending it audio"
                        )
                        await close_quietly(ws, 0.5)
                        ws.transport.abort()  # a no-op if the close went through
                        return False
                    continue
                self._unanswered_since = None
                try:
                    event = parse_message(message)
                except (ProviderProtocolError, ProviderError) as error:
                    self.report_error(str(error))
                    continue
                ends = isinstance(event, UtteranceEnd)
                if isinstance(event, Transcript):
                    self._answered = True
                    if event.text.strip():
                        self.transcript(event.text, event.is_final, event.language)
                        heard = heard or event.is_final
                    ends = event.is_final and event.speech_final
                if ends and heard:
                    heard = False
                    self.utterance_end()
        except ConnectionClosedOK:
            return True
        except ConnectionClosed as closed:
            reason = closed.rcvd.reason if closed.rcvd is not None else "no close frame"
            self.report_error(f"the STT connection closed: {reason or closed}")
            return False

    def _stalled(self, now: float) -> bool:
        since = self._unanswered_since
        return (
            self.stall_timeout is not None
            and since is not None
            and now - since >= self.stall_timeout
        )

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.keepalive_secs / 2)
            if loop.time() - self._last_sent >= self.keepalive_secs:
                self._queue_on_loop(KEEP_ALIVE, None)

    async def _finish(self, wait: float) -> None:
        """Ask for the last results (CloseStream), give them ``wait`` seconds to arrive,
        then stop."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(CLOSE_STREAM)
            try:  # the last results arrive, then the server closes
                await asyncio.wait_for(ws.wait_closed(), wait)
            except TimeoutError:
                await close_quietly(ws)
        self._stop_background()

    def on_end(self) -> None:
        self.cancel_work()
        if self._io is not None:
            self._send_chunk()
            self._io.submit(self._finish(1.0))
