"""Cartesia-style streaming TTS over one WebSocket per call, one *context* per turn.

Wire format (https://docs.cartesia.ai/api-reference/tts/websocket and
https://docs.cartesia.ai/use-the-api/tts-websocket/contexts): the client sends JSON
generation requests ``{"model_id", "transcript", "voice": {"mode": "id", "id"},
"language", "context_id", "output_format": {"container": "raw", "encoding": "pcm_s16le",
"sample_rate"}, "add_timestamps": true, "continue": true}``; further requests with the same
``context_id`` continue the same utterance (keeping its prosody), and one with
``"continue": false`` (here with an empty transcript) says no more text will come. ``{"context_id",
"cancel": true}`` cancels a context. The server answers, each message tagged with its
``context_id``: ``{"type": "chunk", "data": <base64 audio>, "done": false}``, ``{"type":
"timestamps", "word_timestamps": {"words", "start", "end"}}`` (seconds), ``{"type":
"done", "done": true}``, ``{"type": "flush_done"}`` and ``{"type": "error", "error" or
"message", "done": true}``. The key goes in the ``X-API-Key`` header and the API version
in ``Cartesia-Version``.

Word timestamps are taken as seconds from the start of the context's audio (continuations
accumulate), which is how the turn's audio is counted here.

The Sans-I/O part is :func:`generation_request`, :func:`cancel_request` and
:func:`parse_message`; :class:`CartesiaTTSService` is the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import ssl
import uuid
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from flowcat_ft.frames import StartFrame
from flowcat_ft.services.net.auth import Secret
from flowcat_ft.services.net.auth import api_key as find_api_key
from flowcat_ft.services.net.errors import ProviderError, ProviderProtocolError, json_object
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.ws import close_quietly, connect_ws
from flowcat_ft.services.tts.base import TextFeed, TTSService, TurnAudio

__all__ = [
    "CartesiaTTSService",
    "Chunk",
    "Done",
    "Failed",
    "Ignored",
    "Timestamps",
    "cancel_request",
    "generation_request",
    "parse_message",
]

CARTESIA_VERSION = "2024-11-13"


@dataclass(frozen=True, slots=True, repr=False)
class Chunk:
    context_id: str
    audio: bytes

    def __repr__(self) -> str:
        return f"Chunk({self.context_id!r}, <{len(self.audio)} bytes>)"


@dataclass(frozen=True, slots=True)
class Timestamps:
    context_id: str
    words: list[tuple[float, str]]


@dataclass(frozen=True, slots=True)
class Done:
    context_id: str


@dataclass(frozen=True, slots=True)
class Failed:
    context_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Ignored:
    context_id: str
    kind: str


type Event = Chunk | Timestamps | Done | Failed | Ignored


def generation_request(
    context_id: str,
    transcript: str,
    *,
    model: str,
    voice_id: str,
    sample_rate: int,
    language: str = "en",
    continue_: bool = True,
    add_timestamps: bool = True,
) -> str:
    return json.dumps(
        {
            "model_id": model,
            "transcript": transcript,
            "voice": {"mode": "id", "id": voice_id},
            "language": language,
            "context_id": context_id,
            "output_format": {
                "container": "raw",
                "encoding": "pcm_s16le",
                "sample_rate": sample_rate,
            },
            "add_timestamps": add_timestamps,
            "continue": continue_,
        }
    )


def cancel_request(context_id: str) -> str:
    return json.dumps({"context_id": context_id, "cancel": True})


def parse_message(message: str | bytes) -> Event:
    """One server message; :class:`ProviderProtocolError` if it is malformed."""
    payload = json_object(message)
    context_id = str(payload.get("context_id", ""))
    kind = payload.get("type")
    if kind == "chunk":
        data = payload.get("data")
        if not isinstance(data, str):
            raise ProviderProtocolError("a chunk without base64 data")
        try:
            audio = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderProtocolError("a chunk whose data is not base64") from None
        return Chunk(context_id, audio)
    if kind == "timestamps":
        stamps = payload.get("word_timestamps") or {}
        words, starts = stamps.get("words"), stamps.get("start")
        if not isinstance(words, list) or not isinstance(starts, list) or len(words) != len(starts):
            raise ProviderProtocolError("malformed word_timestamps")
        return Timestamps(
            context_id, [(float(s), str(w)) for w, s in zip(words, starts, strict=True)]
        )
    if kind == "done":
        return Done(context_id)
    if kind == "error" or payload.get("error"):
        detail = payload.get("error") or payload.get("message") or payload.get("title") or "error"
        return Failed(context_id, str(detail))
    if isinstance(kind, str):
        return Ignored(context_id, kind)
    raise ProviderProtocolError(f"a message without a type: {message[:60]!r}")


class TTSConnectionLost(ConnectionError):
    """The connection to Cartesia closed or failed while turns were using it."""


class _Sender:
    """How far a turn's sending has got (on the loop)."""

    def __init__(self) -> None:
        self.last_sent = 0.0
        self.done = False


class CartesiaTTSService(TTSService):
    """Cartesia's WebSocket TTS (see the module docstring): one connection per call, opened
    when the call starts and again if it drops; one context per turn, cancelled on an
    interruption. ``read_timeout``: how long a turn waits for the provider's next message
    once it has text to speak before failing as stalled."""

    def __init__(
        self,
        *,
        voice_id: str,
        model: str = "sonic-2",
        language: str = "en",
        sample_rate: int = 24000,
        url: str = "wss://api.cartesia.ai/tts/websocket",
        api_key: str | Secret | None = None,
        api_key_env: str = "CARTESIA_API_KEY",
        version: str = CARTESIA_VERSION,
        read_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate, name=name, ssl_context=ssl_context, ca_file=ca_file
        )
        self.voice_id = voice_id
        self.model = model
        self.language = language
        self.url = url
        self._key = find_api_key(api_key_env, api_key)
        self.version = version
        self.read_timeout = read_timeout
        self.retry = retry or RetryPolicy()
        # On the loop only:
        self._ws: ClientConnection | None = None
        self._connecting: asyncio.Future | None = None
        self._contexts: dict[str, asyncio.Queue] = {}
        self.cancelled_contexts = 0

    def on_start(self, frame: StartFrame) -> None:
        super().on_start(frame)
        self.run_background(self._connection())  # connect before the first turn needs it

    # -- the connection ----------------------------------------------------------------------

    async def _connection(self) -> ClientConnection:
        """The open connection, connecting (once, for every waiting turn) if needed."""
        if self._ws is not None and self._ws.state.name == "OPEN":
            return self._ws
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> ClientConnection:
        headers = {"X-API-Key": self._key, "Cartesia-Version": self.version}
        ws = await connect_ws(self.url, headers, retry=self.retry, ssl_context=self.ssl_context)
        self._ws = ws
        self.run_background(self._receive(ws))
        return ws

    async def _receive(self, ws: ClientConnection) -> None:
        error: Exception | None = None
        try:
            async for message in ws:
                try:
                    event = parse_message(message)
                except ProviderProtocolError as bad:
                    error = bad
                    break
                queue = self._contexts.get(event.context_id)
                if queue is not None:
                    queue.put_nowait(event)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            if error is None:
                how = f"code {ws.close_code}" + (f" ({ws.close_reason})" if ws.close_reason else "")
                error = TTSConnectionLost(f"the TTS connection closed with {how}")
            for queue in self._contexts.values():
                queue.put_nowait(error)
            await close_quietly(ws)

    # -- one turn ----------------------------------------------------------------------------

    async def _synthesize(self, generation: int, feed: TextFeed, turn: TurnAudio) -> None:
        first = await feed.get()
        if first is None:
            return
        ws = await self._connection()
        context_id = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self._contexts[context_id] = queue
        sender = _Sender()
        sending = asyncio.ensure_future(self._send_turn(ws, context_id, first, feed, queue, sender))
        loop = asyncio.get_running_loop()
        last_message = loop.time()
        finished = False
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 0.25)
                except TimeoutError:
                    # A stall: text went out (or all of it did) and nothing came back.
                    if sender.done or sender.last_sent > last_message:
                        since = max(last_message, sender.last_sent)
                        if loop.time() - since > self.read_timeout:
                            raise TimeoutError(
                                f"no audio from the TTS for {self.read_timeout:g} s"
                            ) from None
                    continue
                last_message = loop.time()
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, Chunk):
                    await self.audio(generation, turn, event.audio)
                elif isinstance(event, Timestamps):
                    turn.words.add(event.words)
                elif isinstance(event, Done):
                    finished = True
                    return
                elif isinstance(event, Failed):
                    finished = True
                    raise ProviderError(f"the TTS failed: {event.message}")
        finally:
            sending.cancel()
            self._contexts.pop(context_id, None)
            if not finished:
                self._cancel_context(ws, context_id)

    async def _send_turn(
        self,
        ws: ClientConnection,
        context_id: str,
        first: str,
        feed: TextFeed,
        queue: asyncio.Queue,
        sender: _Sender,
    ) -> None:
        def request(text: str, more: bool) -> str:
            return generation_request(
                context_id,
                text,
                model=self.model,
                voice_id=self.voice_id,
                sample_rate=self.sample_rate,
                language=self.language,
                continue_=more,
            )

        loop = asyncio.get_running_loop()
        try:
            text: str | None = first
            while text is not None:
                await ws.send(request(text + " ", True))
                sender.last_sent = loop.time()
                text = await feed.get()
            await ws.send(request("", False))
            sender.last_sent = loop.time()
            sender.done = True
        except (ConnectionClosed, OSError) as error:
            queue.put_nowait(TTSConnectionLost(f"the TTS connection failed: {error}"))

    def _cancel_context(self, ws: ClientConnection, context_id: str) -> None:
        """Tell the provider to drop a context (without waiting: this may run as the turn
        is being cancelled)."""
        self.cancelled_contexts += 1

        async def send() -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await ws.send(cancel_request(context_id))

        self.run_background(send())
