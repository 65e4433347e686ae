"""OpenAI-style HTTP TTS: one streamed request per sentence, raw PCM back.

Wire format (https://platform.openai.com/docs/api-reference/audio/createSpeech and
https://platform.openai.com/docs/guides/text-to-speech): ``POST {base_url}/audio/speech``
with ``Authorization: Bearer <key>`` and ``{"model", "input", "voice",
"response_format": "pcm"}`` (optionally ``instructions``, ``speed``); the body streams raw
16-bit little-endian mono PCM at 24 kHz as it is generated. Other servers that speak this
API (local ones among them) are configuration: ``base_url``, ``api_key_env``, ``model``.

No word timings come back, so each sentence's text is placed just before its first audio.

The Sans-I/O part is :func:`speech_request`; :class:`OpenAITTSService` is the I/O.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from flowcat_ft.services.net.auth import Secret, optional_api_key
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.tts.base import TextFeed, TTSService, TurnAudio

__all__ = ["OPENAI_TTS_RATE", "OpenAITTSService", "speech_request"]

OPENAI_TTS_RATE = 24000
"""The rate of OpenAI's ``pcm`` response format."""


def speech_request(
    text: str,
    *,
    model: str,
    voice: str,
    instructions: str | None = None,
    speed: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": text, "voice": voice, "response_format": "pcm"}
    if instructions:
        body["instructions"] = instructions
    if speed is not None:
        body["speed"] = speed
    return body


class OpenAITTSService(TTSService):
    """Speech from an OpenAI-compatible ``/audio/speech`` endpoint (see the module
    docstring)."""

    def __init__(
        self,
        *,
        voice: str = "alloy",
        model: str = "gpt-4o-mini-tts",
        base_url: str = "https://api.openai.com/v1",
        api_key: str | Secret | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        instructions: str | None = None,
        speed: float | None = None,
        sample_rate: int = OPENAI_TTS_RATE,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate, name=name, ssl_context=ssl_context, ca_file=ca_file
        )
        self.voice = voice
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._key = optional_api_key(api_key_env, api_key)
        self.instructions = instructions
        self.speed = speed
        self.timeouts = timeouts or Timeouts(connect=5.0, head=10.0, read=10.0)
        self.retry = retry or RetryPolicy()

    async def _synthesize(self, generation: int, feed: TextFeed, turn: TurnAudio) -> None:
        headers: dict[str, str | Secret] = {}
        if self._key is not None:
            headers["Authorization"] = Secret(f"Bearer {self._key.reveal()}")
        while (text := await feed.get()) is not None:
            body = speech_request(
                text,
                model=self.model,
                voice=self.voice,
                instructions=self.instructions,
                speed=self.speed,
            )
            turn.words.add([(turn.chunker.seconds, text)])
            response = await self.http_request(
                "POST", f"{self.base_url}/audio/speech", headers=headers, json=body
            )
            async with response:
                async for data in response.aiter_bytes():
                    await self.audio(generation, turn, data)
