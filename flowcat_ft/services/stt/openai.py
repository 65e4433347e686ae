"""OpenAI-style HTTP transcription, a segment at a time.

Wire format (https://platform.openai.com/docs/api-reference/audio/createTranscription):
``POST {base_url}/audio/transcriptions`` with ``Authorization: Bearer <key>`` and a
``multipart/form-data`` body (RFC 7578) holding ``file`` (here a WAV file of 16-bit mono
PCM), ``model`` (``whisper-1``, ``gpt-4o-transcribe``...), ``response_format=json`` and,
optionally, ``language`` and ``prompt``; the answer is ``{"text": "..."}``. Groq and local
Whisper servers speak the same API: configuration, not code.

A segment is the caller's audio from a
:class:`~flowcat_ft.frames.UserStartedSpeakingFrame` to the next
:class:`~flowcat_ft.frames.UserStoppedSpeakingFrame` (a VAD upstream sends them), with
``preroll_secs`` of audio from before the start, which voice activity detection reports
late. Each segment's transcript comes back as one final
:class:`~flowcat_ft.frames.TranscriptionFrame`; segments are sent one at a time, in order.

The Sans-I/O part is :func:`wav_bytes` and :func:`multipart_body`;
:class:`OpenAISTTService` is the I/O.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import uuid
from collections import deque
from collections.abc import Mapping

from flowcat_ft.frames import (
    Direction,
    Frame,
    InputAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.net.auth import Secret, optional_api_key
from flowcat_ft.services.net.errors import ProviderProtocolError
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.stt.base import STTService

__all__ = ["OpenAISTTService", "multipart_body", "wav_bytes"]


def wav_bytes(pcm: bytes, sample_rate: int, channels: int = 1) -> bytes:
    """A RIFF/WAVE file of 16-bit little-endian PCM."""
    block = 2 * channels
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block,
        block,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


def multipart_body(
    fields: Mapping[str, str],
    files: list[tuple[str, str, str, bytes]],
    boundary: str | None = None,
) -> tuple[str, bytes]:
    """(``Content-Type``, body) of a ``multipart/form-data`` form: text ``fields`` and
    ``files`` as ``(field, filename, content type, data)``."""
    boundary = boundary or f"flowcat-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, filename, content_type, data in files:
        parts.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote(name)}"; '
            f'filename="{_quote(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


class OpenAISTTService(STTService):
    """Transcribes each user turn's audio with an OpenAI-compatible transcription API (see
    the module docstring). Segments shorter than ``min_secs`` are not sent."""

    def __init__(
        self,
        *,
        model: str = "gpt-4o-transcribe",
        base_url: str = "https://api.openai.com/v1",
        api_key: str | Secret | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        language: str | None = None,
        prompt: str | None = None,
        preroll_secs: float = 0.3,
        min_secs: float = 0.1,
        max_secs: float = 60.0,
        timeouts: Timeouts | None = None,
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
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._key = optional_api_key(api_key_env, api_key)
        self.language = language
        self.prompt = prompt
        self.preroll_secs = preroll_secs
        self.min_secs = min_secs
        self.max_secs = max_secs
        self.timeouts = timeouts or Timeouts(connect=5.0, head=30.0, read=30.0)
        self.retry = retry or RetryPolicy()
        self._speaking = False
        self._segment = bytearray()
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._order: asyncio.Lock | None = None

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, UserStartedSpeakingFrame):
                self._speaking = True
                self._segment = bytearray(b"".join(self._preroll))
                self._preroll.clear()
                self._preroll_bytes = 0
            elif isinstance(frame, UserStoppedSpeakingFrame) and self._speaking:
                self._speaking = False
                segment, self._segment = bytes(self._segment), bytearray()
                if len(segment) >= self.min_secs * self.sample_rate * 2:
                    self.run_background(self._transcribe(segment, self.sample_rate))
        super().process(frame, direction)

    def send_audio(self, frame: InputAudioRawFrame) -> None:
        data = frame.audio
        if self._speaking:
            if len(self._segment) < self.max_secs * self.sample_rate * 2:
                self._segment += data
            return
        self._preroll.append(data)
        self._preroll_bytes += len(data)
        limit = self.preroll_secs * self.sample_rate * 2
        while self._preroll and self._preroll_bytes - len(self._preroll[0]) >= limit:
            self._preroll_bytes -= len(self._preroll.popleft())

    async def _transcribe(self, pcm: bytes, sample_rate: int) -> None:
        if self._order is None:
            self._order = asyncio.Lock()
        fields = {"model": self.model, "response_format": "json"}
        if self.language:
            fields["language"] = self.language
        if self.prompt:
            fields["prompt"] = self.prompt
        content_type, body = multipart_body(
            fields, [("file", "audio.wav", "audio/wav", wav_bytes(pcm, sample_rate))]
        )
        headers: dict[str, str | Secret] = {"Content-Type": content_type}
        if self._key is not None:
            headers["Authorization"] = Secret(f"Bearer {self._key.reveal()}")
        async with self._order:  # one segment at a time, so transcripts keep their order
            response = await self.http_request(
                "POST",
                f"{self.base_url}/audio/transcriptions",
                headers=headers,
                content=body,
                streamed=False,  # read whole: it may go over HTTP/2
            )
            result = await response.json()
        if not isinstance(result, dict) or not isinstance(result.get("text"), str):
            raise ProviderProtocolError(f"a transcription without text: {str(result)[:80]!r}")
        text = result["text"].strip()
        if text:
            self.transcript(text, True, self.language)
