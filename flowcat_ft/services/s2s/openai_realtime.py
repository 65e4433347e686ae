"""Speech to speech over the OpenAI Realtime WebSocket protocol.

Wire format (https://platform.openai.com/docs/api-reference/realtime-client-events,
https://platform.openai.com/docs/api-reference/realtime-server-events and
https://platform.openai.com/docs/guides/realtime-conversations): connect to
``wss://api.openai.com/v1/realtime?model=...`` with ``Authorization: Bearer <key>`` (and
``OpenAI-Beta: realtime=v1`` for the beta interface). Every message is a JSON event with a
``type``.

Client events used here: ``session.update`` (``instructions``, ``voice``,
``input_audio_format``/``output_audio_format`` ``pcm16``, ``input_audio_transcription``,
``turn_detection`` ``{"type": "server_vad"}`` or ``null``, ``tools``, ``tool_choice``);
``input_audio_buffer.append`` (``audio``: base64 PCM16 at 24 kHz, mono);
``input_audio_buffer.commit`` (without server VAD: the user's turn is complete; the server
answers ``input_audio_buffer.committed``, and an error if the buffer is empty);
``conversation.item.create`` (a ``message`` with ``role`` and ``content`` ``[{"type":
"input_text"|"text", "text"}]`` (``output_text`` for an assistant outside the beta), a
``function_call`` with ``call_id``, ``name`` and ``arguments``, or a
``function_call_output`` with ``call_id`` and ``output``); ``response.create``;
``response.cancel``; ``conversation.item.truncate`` (``item_id``, ``content_index``,
``audio_end_ms``: how much of an assistant item's audio the caller heard, so the server
drops the rest of its transcript from the conversation).

Server events handled: ``session.created``/``session.updated``;
``input_audio_buffer.speech_started``/``speech_stopped`` (server VAD: the caller started or
stopped speaking; a start while the bot speaks is a barge-in);
``input_audio_buffer.committed`` (``item_id``: the user's item);
``conversation.item.input_audio_transcription.completed`` (``item_id``, ``transcript``);
``response.created``; ``response.output_item.added``; ``response.audio.delta`` (GA:
``response.output_audio.delta``) with ``item_id`` and ``delta`` (base64 audio);
``response.audio_transcript.delta`` (GA: ``response.output_audio_transcript.delta``);
``response.function_call_arguments.done`` (``call_id``, ``name``, ``arguments``);
``response.done`` (``response.status``, ``response.usage``); ``error`` (``error.type``,
``error.code``, ``error.message``). Other events are ignored.

Turns are the server's (``server_vad=True``: its VAD hears the caller stop and answers) or
the pipeline's own (``server_vad=False``: ``turn_detection`` null; a
:class:`~flowcat_ft.frames.UserStoppedSpeakingFrame` from our VAD commits the audio and asks
for a response, and an interruption cancels it).

An interruption (a local one, or the server's ``speech_started`` while the bot speaks)
cancels the response in progress and truncates the assistant item at what was played: the
audio of the item sent downstream, capped by the time since its first audio went out (the
output plays it at real time).

A dropped connection is reported (non-fatal) and reopened after a backoff from the retry
policy: the new session gets the same ``session.update`` and then the conversation so far,
re-created item by item (what the caller said, as transcribed; what the bot said, cut at
an interruption in proportion to the audio heard; function calls and their outputs),
since a new session starts empty. A response cut by the drop ends there; caller audio
sent during the outage is lost. After ``max_reconnects`` failed connections in a row, or
once connecting fails for good, the service gives up with a fatal error (the call ends).

The Sans-I/O part is the event builders and :func:`parse_event`;
:class:`OpenAIRealtimeService` is the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    Direction,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.llm.frames import (
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
)
from flowcat_ft.services.net.auth import Secret
from flowcat_ft.services.net.auth import api_key as find_api_key
from flowcat_ft.services.net.errors import ProviderProtocolError, json_object
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.service import CloudService
from flowcat_ft.services.net.ws import close_quietly, connect_ws
from flowcat_ft.services.stt.base import now_iso
from flowcat_ft.services.tools import ToolCall, ToolRegistry
from flowcat_ft.services.tts.base import AudioChunker, audio_frame

__all__ = [
    "REALTIME_RATE",
    "OpenAIRealtimeService",
    "RealtimeEvent",
    "append_audio",
    "function_call_item",
    "function_output",
    "heard_part",
    "message_item",
    "parse_event",
    "session_update",
    "truncate",
]

REALTIME_RATE = 24000
"""The rate of the Realtime API's ``pcm16`` audio, both ways."""

AUDIO_DELTAS = ("response.audio.delta", "response.output_audio.delta")
TRANSCRIPT_DELTAS = ("response.audio_transcript.delta", "response.output_audio_transcript.delta")


@dataclass(frozen=True, slots=True)
class RealtimeEvent:
    """One server event: its ``type`` and payload, with a delta's audio decoded."""

    type: str
    payload: dict[str, Any]
    audio: bytes = field(default=b"", repr=False)


SERVER_VAD: dict[str, Any] = {"type": "server_vad"}


def session_update(
    *,
    instructions: str | None = None,
    voice: str = "alloy",
    tools: list[dict] | None = None,
    transcription_model: str | None = "whisper-1",
    turn_detection: dict[str, Any] | None = SERVER_VAD,
    extra: dict[str, Any] | None = None,
) -> str:
    """The ``session.update`` event; ``turn_detection`` None turns the server's VAD off."""
    session: dict[str, Any] = {
        "modalities": ["audio", "text"],
        "voice": voice,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": turn_detection,
    }
    if instructions:
        session["instructions"] = instructions
    if transcription_model:
        session["input_audio_transcription"] = {"model": transcription_model}
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    session.update(extra or {})
    return json.dumps({"type": "session.update", "session": session})


def append_audio(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")}
    )


def truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> str:
    return json.dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": max(0, int(audio_end_ms)),
        }
    )


def function_output(call_id: str, output: str) -> str:
    return _create_item({"type": "function_call_output", "call_id": call_id, "output": output})


def function_call_item(call_id: str, name: str, arguments: str) -> str:
    return _create_item(
        {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    )


def message_item(role: str, text: str, *, beta: bool = True) -> str:
    """A ``conversation.item.create`` for a user or assistant message of text."""
    kind = "input_text" if role == "user" else "text" if beta else "output_text"
    return _create_item(
        {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    )


def _create_item(item: dict[str, Any]) -> str:
    return json.dumps({"type": "conversation.item.create", "item": item})


def heard_part(text: str, heard_ms: int, sent_ms: int) -> str:
    """The start of ``text`` spoken in ``heard_ms`` of its ``sent_ms`` of audio (in
    proportion, cut back to a whole word)."""
    if sent_ms <= 0 or heard_ms <= 0:
        return ""
    if heard_ms >= sent_ms:
        return text.strip()
    cut = len(text) * heard_ms // sent_ms
    if cut < len(text) and not text[cut].isspace():
        cut = text.rfind(" ", 0, cut) + 1
    return text[:cut].strip()


RESPONSE_CREATE = json.dumps({"type": "response.create"})
RESPONSE_CANCEL = json.dumps({"type": "response.cancel"})
COMMIT = json.dumps({"type": "input_audio_buffer.commit"})


def parse_event(message: str | bytes) -> RealtimeEvent:
    """One server event; :class:`ProviderProtocolError` if malformed."""
    payload = json_object(message, "an event")
    if not isinstance(payload.get("type"), str):
        raise ProviderProtocolError(f"an event without a type: {message[:60]!r}")
    kind = payload["type"]
    if kind in AUDIO_DELTAS:
        delta = payload.get("delta")
        if not isinstance(delta, str):
            raise ProviderProtocolError(f"{kind} without base64 audio")
        try:
            audio = base64.b64decode(delta, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderProtocolError(f"{kind} whose audio is not base64") from None
        return RealtimeEvent(kind, payload, audio)
    return RealtimeEvent(kind, payload)


class _Item:
    """The assistant audio item being played (on the loop)."""

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self.first_audio = 0.0  # monotonic seconds when its first audio went downstream
        self.samples = 0  # samples at the Realtime rate sent downstream


@dataclass
class _Said:
    """One message of the conversation, kept to re-create it in a new session."""

    role: str
    text: str = ""


class OpenAIRealtimeService(CloudService):
    """A speech-to-speech model behind the OpenAI Realtime protocol: caller audio in, bot
    audio (in slabs, at the pipeline's rate), transcripts and speaking events out. Function
    calls run on the service's loop from ``tools``; their results go back to the model,
    which then answers. ``server_vad``: whose VAD ends the caller's turns (see the module
    docstring); ``max_reconnects``: how many failed connections in a row it tries again
    after (a session that answered resets the count)."""

    cost = 1.0

    def __init__(
        self,
        *,
        model: str = "gpt-4o-realtime-preview",
        url: str = "wss://api.openai.com/v1/realtime",
        api_key: str | Secret | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        instructions: str | None = None,
        voice: str = "alloy",
        tools: ToolRegistry | None = None,
        beta: bool = True,
        server_vad: bool = True,
        session: dict[str, Any] | None = None,
        max_reconnects: int = 3,
        retry: RetryPolicy | None = None,
        fallback_text: str | None = None,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            name=name, fallback_text=fallback_text, ssl_context=ssl_context, ca_file=ca_file
        )
        self.model = model
        self.url = url
        self._key = find_api_key(api_key_env, api_key)
        self.instructions = instructions
        self.voice = voice
        self.tools = tools
        self.beta = beta
        self.server_vad = server_vad
        self.session = dict(session or {})
        self.max_reconnects = max_reconnects
        self.retry = retry or RetryPolicy()
        self.in_rate = 16000
        self.out_rate = 16000
        self._resample_in: StreamingResampler | None = None
        # On the loop only:
        self._outbox: asyncio.Queue[str] = asyncio.Queue()  # waits while connecting
        self._loop_generation = 0
        self._item: _Item | None = None
        self._response_active = False
        self._answered = False  # this connection completed a response
        self._chunker: AudioChunker | None = None
        self._pending_calls: dict[str, tuple[ToolCall, asyncio.Task]] = {}
        self._history: list[_Said | str] = []  # messages, and function items as events
        self._said: dict[str, _Said] = {}  # the messages by item id
        self.truncations: list[tuple[str, int]] = []

    # -- stage thread -----------------------------------------------------------------------

    def on_start(self, frame: StartFrame) -> None:
        self.in_rate = frame.audio_in_sample_rate
        self.out_rate = frame.audio_out_sample_rate
        if self.in_rate != REALTIME_RATE:
            self._resample_in = StreamingResampler(self.in_rate, REALTIME_RATE)
        self.run_background(self._run())

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                samples = frame.samples
                if self._resample_in is not None:
                    out = np.empty(self._resample_in.out_samples(len(samples)), dtype=np.int16)
                    n = self._resample_in.process(samples, out)
                    data = out[:n].tobytes()
                else:
                    data = samples.tobytes()
                self.event_loop.bridge.send(self._queue, append_audio(data), None)
                return  # the model hears it; nothing downstream needs the caller's audio
            if isinstance(frame, UserStoppedSpeakingFrame) and not self.server_vad:
                self.event_loop.bridge.send(self._queue, COMMIT, None)
                self.event_loop.bridge.send(self._queue, RESPONSE_CREATE, None)
        self.push(frame, direction)

    def on_interruption(self) -> None:
        self.cancel_work()  # drops what was emitted for the cancelled response
        self.event_loop.bridge.send(self._interrupted, self._generation, None)

    # -- the loop ----------------------------------------------------------------------------

    def _queue(self, message: str, _: object) -> None:
        self._outbox.put_nowait(message)

    async def _run(self) -> None:
        headers: dict[str, str | Secret] = {"Authorization": Secret(f"Bearer {self._key.reveal()}")}
        if self.beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        url = f"{self.url}?model={self.model}"
        failures = 0
        while True:
            try:
                ws = await connect_ws(url, headers, retry=self.retry, ssl_context=self.ssl_context)
            except Exception as error:  # the retry policy gave up
                self.report_error(
                    f"could not connect to the Realtime API: {type(error).__name__}: {error}",
                    fatal=True,
                )
                return
            self._answered = False
            await self._session(ws)
            self._connection_lost()
            failures = 1 if self._answered else failures + 1
            if failures > self.max_reconnects:
                self.report_error(
                    f"the Realtime connection failed {failures} times in a row; giving up",
                    fatal=True,
                )
                return
            await asyncio.sleep(self.retry.backoff(failures))

    async def _session(self, ws: ClientConnection) -> None:
        """Set the session up (and the conversation so far), then handle its events until
        the connection closes."""
        sender: asyncio.Future | None = None
        try:
            await ws.send(self._session_update())
            for entry in self._history:
                if isinstance(entry, str):
                    await ws.send(entry)
                elif entry.text.strip():
                    await ws.send(message_item(entry.role, entry.text.strip(), beta=self.beta))
            sender = asyncio.ensure_future(self._sender(ws))
            async for message in ws:
                try:
                    event = parse_event(message)
                except ProviderProtocolError as error:
                    self.report_error(str(error))
                    continue
                await self._handle(event)
            reason = f"{ws.close_code} {ws.close_reason or ''}".strip()
        except ConnectionClosed as closed:
            reason = str(closed)
        finally:
            if sender is not None:
                sender.cancel()
            await close_quietly(ws)
        self.report_error(f"the Realtime connection closed ({reason})", fallback=False)

    def _session_update(self) -> str:
        tools = (
            self.tools.schemas("realtime") if self.tools is not None and len(self.tools) else None
        )
        return session_update(
            instructions=self.instructions,
            voice=self.voice,
            tools=tools,
            turn_detection=SERVER_VAD if self.server_vad else None,
            extra=self.session,
        )

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await ws.send(message)
            except ConnectionClosed:
                return

    def _connection_lost(self) -> None:
        """The session is gone, and its response with it: end the response here, and drop
        what was queued for the old session (its calls' outputs, its audio)."""
        if self._chunker is not None:
            self._out(TTSStoppedFrame())
        if self._response_active:
            self._out(LLMFullResponseEndFrame())
        self._response_active = False
        self._item = None
        self._chunker = None
        for call, task in list(self._pending_calls.values()):
            task.cancel()
            output = json.dumps({"error": "cancelled: the connection was lost"})
            self._history.append(function_output(call.id, output))
        self._pending_calls.clear()
        while not self._outbox.empty():
            self._outbox.get_nowait()

    def _out(self, frame: Frame) -> None:
        self.emit(self._loop_generation, frame)

    def _message(self, item_id: str, role: str) -> _Said:
        """The conversation's record of message ``item_id``, made on first sight."""
        said = self._said.get(item_id)
        if said is None:
            said = self._said[item_id] = _Said(role)
            self._history.append(said)
        return said

    async def _handle(self, event: RealtimeEvent) -> None:
        kind, payload = event.type, event.payload
        if kind in AUDIO_DELTAS:
            await self._audio(payload.get("item_id", ""), event.audio)
        elif kind in TRANSCRIPT_DELTAS:
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                self._message(str(payload.get("item_id", "")), "assistant").text += delta
                self._out(TTSTextFrame(delta))
        elif kind == "input_audio_buffer.speech_started":
            self.call_soon(self.push, UserStartedSpeakingFrame())
            if self._playing() is not None:
                self.call_soon(self.interrupt)  # a barge-in on the bot's speech
        elif kind == "input_audio_buffer.speech_stopped":
            self.call_soon(self.push, UserStoppedSpeakingFrame())
        elif kind == "input_audio_buffer.committed":
            self._message(str(payload.get("item_id", "")), "user")  # its place in order
        elif kind == "conversation.item.input_audio_transcription.completed":
            text = str(payload.get("transcript") or "").strip()
            if text:
                self._message(str(payload.get("item_id", "")), "user").text = text
                frame = TranscriptionFrame(text, "", now_iso())
                self.call_soon(self.push, frame)
        elif kind == "response.created":
            self._response_active = True
            self._out(LLMFullResponseStartFrame())
        elif kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") == "message":
                self._item = _Item(str(item.get("id", "")))
                self._message(self._item.item_id, "assistant")
                self._chunker = None
        elif kind == "response.function_call_arguments.done":
            self._function_call(payload)
        elif kind == "response.done":
            self._response_done(payload.get("response") or {})
        elif kind == "error":
            error = payload.get("error") or {}
            code = error.get("code") if isinstance(error, dict) else None
            if code != "response_cancel_not_active":
                message = error.get("message", error) if isinstance(error, dict) else error
                self.report_error(f"the Realtime API reported: {message}")

    async def _audio(self, item_id: str, pcm: bytes) -> None:
        item = self._item
        if item is None or item.item_id != item_id:
            item = self._item = _Item(item_id)
            self._chunker = None
        if self._chunker is None:
            self._chunker = AudioChunker(REALTIME_RATE, self.out_rate, self.pool.slab_bytes // 2)
            self._out(TTSStartedFrame())
        chunks = self._chunker.feed(pcm)
        if chunks and not item.samples:
            item.first_audio = time.monotonic()
        item.samples = self._chunker.samples_in
        for chunk in chunks:
            frame = await audio_frame(self.pool, chunk, self.out_rate)
            if frame is not None:
                self._out(frame)

    def _played_ms(self, item: _Item) -> int:
        """How much of ``item``'s audio the caller has heard by now, in ms."""
        if not item.samples:
            return 0
        sent_ms = item.samples * 1000 // REALTIME_RATE
        return min(sent_ms, int((time.monotonic() - item.first_audio) * 1000))

    def _playing(self) -> tuple[_Item, int] | None:
        """The item whose audio the caller is hearing now, and how many ms of it were
        played; None when the bot is silent."""
        item = self._item
        if item is None or not item.samples:
            return None
        played_ms = self._played_ms(item)
        return (item, played_ms) if played_ms < item.samples * 1000 // REALTIME_RATE else None

    def _response_done(self, response: dict[str, Any]) -> None:
        self._response_active = False
        self._answered = True
        usage = response.get("usage") or {}
        self.count(
            responses=1,
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
        )
        if self._chunker is not None:
            self._out(TTSStoppedFrame())
            self._chunker = None
        self._out(LLMFullResponseEndFrame())
        if response.get("status") == "failed":
            details = response.get("status_details") or {}
            self.report_error(f"the response failed: {details}")

    # -- function calls ----------------------------------------------------------------------

    def _function_call(self, payload: dict[str, Any]) -> None:
        call = ToolCall(
            str(payload.get("call_id", "")),
            str(payload.get("name", "")),
            str(payload.get("arguments") or "{}"),
        )
        self._history.append(function_call_item(call.id, call.name, call.arguments))
        self._out(FunctionCallInProgressFrame(call.name, call.id, None))
        task = asyncio.ensure_future(self._run_call(call, self._loop_generation))
        self._pending_calls[call.id] = (call, task)
        task.add_done_callback(lambda _: self._pending_calls.pop(call.id, None))

    async def _run_call(self, call: ToolCall, generation: int) -> None:
        registry = self.tools or ToolRegistry()
        result = await registry.run(call)
        value = result.result if result.ok else {"error": result.error}
        self._out(
            FunctionCallResultFrame(call.name, call.id, result.arguments, value, result.error)
        )
        if not result.ok:
            self.report_error(f"function call {call.id}: {result.error}", fallback=False)
        self._answer_call(call.id, result.content())
        others = self._pending_calls.keys() - {call.id}
        if not others and generation == self._loop_generation:
            self._queue(RESPONSE_CREATE, None)  # every call answered: let the model go on

    def _answer_call(self, call_id: str, output: str) -> None:
        event = function_output(call_id, output)
        self._history.append(event)
        self._queue(event, None)

    # -- interruptions -------------------------------------------------------------------------

    def _interrupted(self, generation: int, _: object) -> None:
        self._loop_generation = generation
        if self._response_active:
            self._queue(RESPONSE_CANCEL, None)
            self._response_active = False
        item = self._item
        if item is not None:
            said = self._said.get(item.item_id)
            if said is not None:  # the context keeps what the caller heard
                sent_ms = item.samples * 1000 // REALTIME_RATE
                said.text = heard_part(said.text, self._played_ms(item), sent_ms)
        playing = self._playing()
        if playing is not None:
            item, played_ms = playing
            self.truncations.append((item.item_id, played_ms))
            self._queue(truncate(item.item_id, played_ms), None)
        self._item = None
        self._chunker = None
        for call, task in list(self._pending_calls.values()):
            tool = self.tools.get(call.name) if self.tools is not None else None
            if tool is None or tool.cancel_on_interruption:
                task.cancel()
                self._answer_call(call.id, json.dumps({"error": "cancelled: the user interrupted"}))
            # Calls not marked run on: their output still goes into the conversation.
