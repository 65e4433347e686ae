"""ElevenLabs-style streaming TTS: the WebSocket *stream-input* API, one connection per turn.

Wire format (https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input,
formerly https://elevenlabs.io/docs/api-reference/websockets): connect to
``wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream-input?model_id=...&output_format=pcm_16000``
with the key in the ``xi-api-key`` header. The first message opens the stream: ``{"text":
" ", "voice_settings": {"stability", "similarity_boost", ...}, "generation_config":
{"chunk_length_schedule": [...]}}``; then text messages ``{"text": "Hello world. "}`` (each
ending with a space; ``"flush": true`` forces what is buffered out); ``{"text": ""}`` ends
the input. The server answers ``{"audio": <base64>, "isFinal": null, "alignment": {"chars",
"charStartTimesMs", "charDurationsMs"}, "normalizedAlignment": {...}}`` messages and a
last one with ``"isFinal": true``; an error comes as a message with ``"error"`` (or
``"message"`` and ``"code"``) before the server closes.

Assumed where the documentation is not explicit: alignment times count from the start of
the message's own audio chunk (so they are offset by the audio received before it), and
``charsDurationsMs`` is accepted as a spelling of ``charDurationsMs``.

An interruption closes the connection (the stream-input API has no cancel message).

The Sans-I/O part is :func:`stream_url`, :func:`open_message`, :func:`text_message`,
:func:`parse_message` and :func:`alignment_words`; :class:`ElevenLabsTTSService` is the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from websockets.exceptions import ConnectionClosed

from flowcat_ft.services.net.auth import Secret
from flowcat_ft.services.net.auth import api_key as find_api_key
from flowcat_ft.services.net.errors import ProviderError, ProviderProtocolError, json_object
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.ws import close_quietly, connect_ws
from flowcat_ft.services.tts.base import TextFeed, TTSService, TurnAudio

__all__ = [
    "Audio",
    "ElevenLabsTTSService",
    "alignment_words",
    "open_message",
    "parse_message",
    "stream_url",
    "text_message",
]


@dataclass(frozen=True, slots=True, repr=False)
class Audio:
    """One server message: audio (maybe empty), its words (seconds from the chunk's
    start) and whether it is the last."""

    audio: bytes
    words: list[tuple[float, str]]
    final: bool

    def __repr__(self) -> str:
        return f"Audio(<{len(self.audio)} bytes>, {len(self.words)} words, final={self.final})"


def stream_url(base: str, voice_id: str, model: str, sample_rate: int, **params: Any) -> str:
    query = {"model_id": model, "output_format": f"pcm_{sample_rate}", **params}
    return f"{base.rstrip('/')}/v1/text-to-speech/{quote(voice_id)}/stream-input?" + urlencode(
        {k: v for k, v in query.items() if v is not None}
    )


def open_message(
    voice_settings: dict[str, Any] | None = None, chunk_length_schedule: list[int] | None = None
) -> str:
    message: dict[str, Any] = {"text": " "}
    if voice_settings:
        message["voice_settings"] = voice_settings
    if chunk_length_schedule:
        message["generation_config"] = {"chunk_length_schedule": chunk_length_schedule}
    return json.dumps(message)


def text_message(text: str, flush: bool = False) -> str:
    """Text to speak (the API wants each piece to end with a space); ``""`` ends input."""
    if text and not text.endswith(" "):
        text += " "
    message: dict[str, Any] = {"text": text}
    if flush:
        message["flush"] = True
    return json.dumps(message)


def alignment_words(alignment: Any) -> list[tuple[float, str]]:
    """Characters with start times → words with the start time of their first character."""
    if not alignment:
        return []
    if not isinstance(alignment, dict):
        raise ProviderProtocolError("alignment is not an object")
    chars = alignment.get("chars")
    starts = alignment.get("charStartTimesMs")
    if not isinstance(chars, list) or not isinstance(starts, list) or len(chars) != len(starts):
        raise ProviderProtocolError("malformed alignment")
    words: list[tuple[float, str]] = []
    current: list[str] = []
    start = 0.0
    for char, ms in zip(chars, starts, strict=True):
        if str(char).isspace():
            if current:
                words.append((start, "".join(current)))
                current = []
            continue
        if not current:
            start = float(ms) / 1000
        current.append(str(char))
    if current:
        words.append((start, "".join(current)))
    return words


def parse_message(message: str | bytes) -> Audio:
    payload = json_object(message)
    if payload.get("error") or ("message" in payload and "audio" not in payload):
        detail = payload.get("message") or payload.get("error")
        raise ProviderError(f"the TTS failed: {detail}")
    data = payload.get("audio")
    audio = b""
    if data:
        if not isinstance(data, str):
            raise ProviderProtocolError("audio is not a base64 string")
        try:
            audio = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderProtocolError("audio that is not base64") from None
    alignment = payload.get("alignment") or payload.get("normalizedAlignment")
    return Audio(audio, alignment_words(alignment), bool(payload.get("isFinal")))


class ElevenLabsTTSService(TTSService):
    """ElevenLabs' stream-input WebSocket (see the module docstring). ``sample_rate`` picks
    the ``pcm_<rate>`` output format (16000, 22050, 24000 or 44100)."""

    def __init__(
        self,
        *,
        voice_id: str,
        model: str = "eleven_flash_v2_5",
        sample_rate: int = 16000,
        voice_settings: dict[str, Any] | None = None,
        chunk_length_schedule: list[int] | None = None,
        base_url: str = "wss://api.elevenlabs.io",
        api_key: str | Secret | None = None,
        api_key_env: str = "ELEVENLABS_API_KEY",
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
        self.voice_settings = voice_settings or {"stability": 0.5, "similarity_boost": 0.75}
        self.chunk_length_schedule = chunk_length_schedule
        self.base_url = base_url
        self._key = find_api_key(api_key_env, api_key)
        self.read_timeout = read_timeout
        self.retry = retry or RetryPolicy()
        self.connections = 0

    async def _synthesize(self, generation: int, feed: TextFeed, turn: TurnAudio) -> None:
        first = await feed.get()
        if first is None:
            return
        url = stream_url(self.base_url, self.voice_id, self.model, self.sample_rate)
        ws = await connect_ws(
            url, {"xi-api-key": self._key}, retry=self.retry, ssl_context=self.ssl_context
        )
        self.connections += 1
        failure: list[BaseException] = []

        async def send() -> None:
            try:
                await ws.send(open_message(self.voice_settings, self.chunk_length_schedule))
                text: str | None = first
                while text is not None:
                    await ws.send(text_message(text))
                    text = await feed.get()
                await ws.send(text_message(""))
            except (ConnectionClosed, OSError) as error:
                failure.append(error)

        sending = asyncio.ensure_future(send())
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self._timeout(sending))
                except TimeoutError:
                    if not sending.done():
                        continue
                    raise TimeoutError(
                        f"no audio from the TTS for {self.read_timeout:g} s"
                    ) from None
                except ConnectionClosed as closed:
                    raise ProviderProtocolError(
                        f"the TTS closed the connection mid-stream ({closed})"
                    ) from None
                event = parse_message(message)
                if event.audio:
                    offset = turn.chunker.seconds
                    turn.words.add((offset + start, word) for start, word in event.words)
                    await self.audio(generation, turn, event.audio)
                if event.final:
                    return
        finally:
            sending.cancel()
            await close_quietly(ws)  # on an interruption too: that is how a turn is dropped

    def _timeout(self, sending: asyncio.Future) -> float:
        # Until all the text is out, the provider may be waiting for more of it: check for a
        # stall in slices rather than fail a turn whose LLM is still talking.
        return self.read_timeout if sending.done() else min(self.read_timeout, 0.5)
