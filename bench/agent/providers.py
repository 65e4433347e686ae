"""Fake cloud providers for ``bench.agent --agent cloud``, with realistic delays, in a
process of their own (so their CPU is not the server's): a Deepgram-style live STT and a
Cartesia-style TTS on one WebSocket port, an OpenAI-compatible chat API (SSE) on an HTTP
port. ``python -m bench.agent.providers`` prints ``ready WS_PORT HTTP_PORT``; ``GET
/stats`` on the HTTP port returns each provider's own time so far.

They speak the documented wire formats (the same facts as ``tests/services/
fake_providers.py``, whose fakes are built to misbehave on demand; these are built to be
timed), and take the time the real services take:

- STT: speech is any 20 ms of audio louder than :data:`SPEECH_RMS`; once the caller has
  been quiet for the client's ``endpointing`` (its query parameter) the final result
  (``is_final``, ``speech_final``) follows :data:`STT_FINALIZE` s later. It hears no words,
  only lengths: an utterance shorter than :data:`GOODBYE_SECS` is "goodbye" (the
  benchmark's only short one), any other :data:`TRANSCRIPT`. Own time: from the arrival of
  the last loud audio to the final result sent.
- LLM: the first token :data:`LLM_FIRST_TOKEN` s after the request, then one token every
  :data:`LLM_TOKEN` s: :data:`REPLY`, or, where the caller said goodbye and the request
  offers an ``end_call`` function, "Goodbye!" and a call of it (its answer to the call's
  result says nothing more). Own time: request to first token, and to the last.
- TTS: the first audio :data:`TTS_FIRST_AUDIO` s after a context's first request, then
  :data:`TTS_WORD` s of a tone per word, sent at twice real time. Own time: first request
  to first audio.

The HTTP server is hand-written (a few lines of HTTP/1.1 with keep-alive and chunked
SSE): the benchmark needs only this one route and its timing, not a framework.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SPEECH_RMS = 300.0
STT_FINALIZE = 0.1
LLM_FIRST_TOKEN = 0.4
LLM_TOKEN = 0.03
TTS_FIRST_AUDIO = 0.12
TTS_WORD = 0.3
TRANSCRIPT = "what is the weather"
GOODBYE_SECS = 0.6
REPLY = "The weather today is sunny and warm, with a light breeze."
TURN_TIMEOUT = 0.8
"""The cloud agent's turn timeout (``agent.turns.timeout_secs``, the default): the silence
after which the caller's turn ends and the LLM is asked."""
KEY_ENV = "BENCH_FAKE_PROVIDER_KEY"
"""The environment variable the cloud agent's config names for every key."""

Stats = dict[str, list[float]]


# -- STT -----------------------------------------------------------------------------------


async def deepgram(ws: ServerConnection, stats: Stats) -> None:
    """One Deepgram-style live transcription connection."""
    query = parse_qs(urlsplit(ws.request.path).query)
    rate = int(query.get("sample_rate", ["16000"])[0])
    endpointing = query.get("endpointing", ["300"])[0]
    quiet_needed = int(endpointing) / 1000 if endpointing.isdigit() else 0.3
    speaking, quiet, last_loud = False, 0.0, 0.0
    heard, speech = 0.0, 0.0  # seconds of audio received; of this utterance, to its last loud
    async for message in ws:
        if isinstance(message, str):
            kind = json.loads(message).get("type")
            if kind == "CloseStream":
                await ws.send(json.dumps({"type": "Metadata", "request_id": "fake"}))
                await ws.close()
                return
            continue
        samples = np.frombuffer(message, "<i2").astype(np.float32)
        step = rate // 50  # judged 20 ms at a time, however the client chunks its audio
        for piece in (samples[i : i + step] for i in range(0, len(samples), step)):
            seconds = len(piece) / rate
            loud = math.sqrt(float(np.mean(piece * piece))) >= SPEECH_RMS
            heard += seconds
            if loud:
                if not speaking:
                    began = heard - seconds
                speaking, quiet, last_loud = True, 0.0, time.monotonic()
                speech = heard - began
            elif speaking:
                quiet += seconds
                if quiet >= quiet_needed:
                    speaking = False
                    await asyncio.sleep(STT_FINALIZE)
                    text = "goodbye" if speech < GOODBYE_SECS else TRANSCRIPT
                    await ws.send(_results(text, final=True))
                    stats["stt_final_s"].append(time.monotonic() - last_loud)


def _results(text: str, final: bool) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 1.0,
            "start": 0.0,
            "is_final": final,
            "speech_final": final,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.99, "words": []}]},
        }
    )


# -- TTS -----------------------------------------------------------------------------------


async def cartesia(ws: ServerConnection, stats: Stats) -> None:
    """One Cartesia-style TTS connection: contexts speak one after another, each request's
    words at twice real time after the context's first audio delay."""
    cancelled: set[str] = set()
    started: dict[str, float] = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def speak() -> None:
        while True:
            request = await queue.get()
            context = request["context_id"]
            if context in cancelled:
                continue
            rate = request.get("output_format", {}).get("sample_rate", 16000)
            words = request.get("transcript", "").split()
            if context not in started:
                started[context] = time.monotonic()
                await asyncio.sleep(TTS_FIRST_AUDIO)
                stats["tts_first_audio_s"].append(time.monotonic() - started[context])
            audio = _tone(len(words) * TTS_WORD, rate)
            step = int(0.04 * rate) * 2  # 40 ms chunks, one every 20 ms
            for i in range(0, len(audio), step):
                if context in cancelled:
                    break
                chunk = {"type": "chunk", "context_id": context, "done": False}
                chunk["data"] = base64.b64encode(audio[i : i + step]).decode()
                await ws.send(json.dumps(chunk))
                await asyncio.sleep(0.02)
            if not request.get("continue", False) and context not in cancelled:
                await ws.send(json.dumps({"type": "done", "context_id": context, "done": True}))

    speaker = asyncio.ensure_future(speak())
    try:
        async for message in ws:
            request = json.loads(message)
            if request.get("cancel"):
                cancelled.add(request["context_id"])
            else:
                queue.put_nowait(request)
    finally:
        speaker.cancel()


def _tone(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 6000).astype("<i2").tobytes()


# -- LLM -----------------------------------------------------------------------------------


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats) -> None:
    """HTTP/1.1 with keep-alive: ``POST .../chat/completions`` (SSE) and ``GET /stats``."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/stats":
                body = json.dumps(stats).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            elif method == "POST" and path.endswith("/chat/completions"):
                await _complete(writer, json.loads(body), stats)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _complete(writer: asyncio.StreamWriter, request: dict[str, Any], stats: Stats) -> None:
    began = time.monotonic()
    last = request["messages"][-1]
    offered = {tool["function"]["name"] for tool in request.get("tools", ())}
    hang_up = "end_call" in offered and "goodbye" in str(last.get("content")).lower()
    reply = "" if last["role"] == "tool" else "Goodbye!" if hang_up else REPLY
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()
        return b"%x\r\n%s\r\n" % (len(data), data)

    await asyncio.sleep(LLM_FIRST_TOKEN)
    writer.write(event({"role": "assistant", "content": ""}))
    tokens = [word + " " for word in reply.split()]
    for n, token in enumerate(tokens):
        writer.write(event({"content": token}))
        await writer.drain()
        if n == 0:
            stats["llm_first_token_s"].append(time.monotonic() - began)
        await asyncio.sleep(LLM_TOKEN)
    if hang_up:
        function = {"name": "end_call", "arguments": "{}"}
        call = {"index": 0, "id": "call_fake", "type": "function", "function": function}
        writer.write(event({"tool_calls": [call]}))
    writer.write(event({}, "tool_calls" if hang_up else "stop"))
    done = b"data: [DONE]\n\n"
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    stats["llm_last_token_s"].append(time.monotonic() - began)


# -- the process ---------------------------------------------------------------------------


async def serve_all() -> None:
    stats: Stats = defaultdict(list)
    routes = {"/v1/listen": deepgram, "/tts/websocket": cartesia}

    async def route(ws: ServerConnection) -> None:
        handler = routes.get(urlsplit(ws.request.path).path)
        if handler is None:
            await ws.close(1008, "no such route")
            return
        with contextlib.suppress(ConnectionClosed):
            await handler(ws, stats)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(route, "127.0.0.1", 0, compression=None) as ws_server:
        http_server = await asyncio.start_server(lambda r, w: http(r, w, stats), "127.0.0.1", 0)
        ws_port = ws_server.sockets[0].getsockname()[1]
        http_port = http_server.sockets[0].getsockname()[1]
        print(f"ready {ws_port} {http_port}", flush=True)
        await stop.wait()
        http_server.close()


@dataclass
class Providers:
    """The fake providers' process, started by :func:`start`."""

    process: subprocess.Popen[str]
    ws_port: int
    http_port: int

    def report(self) -> dict[str, Any]:
        """Each provider's own time so far: count, p50, p95 and max, in ms."""
        import urllib.request

        from bench.agent.report import spread

        url = f"http://127.0.0.1:{self.http_port}/stats"
        with urllib.request.urlopen(url, timeout=10) as reply:
            stats = json.loads(reply.read())
        delays = {
            "stt_final_s": f"STT: last loud audio → final (endpointing + {STT_FINALIZE:g} s)",
            "llm_first_token_s": f"LLM: request → first token ({LLM_FIRST_TOKEN:g} s)",
            "llm_last_token_s": "LLM: request → last token",
            "tts_first_audio_s": f"TTS: first request → first audio ({TTS_FIRST_AUDIO:g} s)",
        }
        return {
            key: {
                "what": what,
                "count": len(stats.get(key, [])),
                **spread([s * 1000 for s in stats.get(key, [])]),
            }
            for key, what in delays.items()
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start() -> Providers:
    """Start the fake providers in a process of their own (this interpreter)."""
    from bench._common import ROOT

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.agent.providers"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    if len(line) != 3 or line[0] != "ready":
        process.kill()
        raise RuntimeError(f"the fake providers did not start: {line}")
    os.environ[KEY_ENV] = "fake-key"  # the server, started later, inherits it
    return Providers(process, int(line[1]), int(line[2]))


def agent_config(providers: Providers, path: Path) -> Path:
    """A ``flowcat-ft serve`` config for a cloud agent on the fake providers, written to
    ``path``."""
    from bench.agent.conversation import STREAM_KEY_ENV

    ws = f"ws://127.0.0.1:{providers.ws_port}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# bench.agent --agent cloud: a cloud agent on local fake providers\n"
        "server: {host: 127.0.0.1, playground: false, webrtc: false}\n"
        # The calls' stream URL carries a token, as with bench/agent/offline.yaml.
        f"transports: {{stream_token_key_env: {STREAM_KEY_ENV}}}\n"
        "limits: {max_calls: 1000}\n"
        "logging: {level: WARNING}\n"
        "agent:\n"
        "  kind: pipeline\n"
        "  sample_rate: 16000\n"
        f"  turns: {{timeout_secs: {TURN_TIMEOUT}}}\n"
        f"  stt: {{engine: deepgram, url: {ws}/v1/listen, api_key_env: {KEY_ENV}}}\n"
        f"  llm: {{engine: openai, model: fake, base_url: http://127.0.0.1:"
        f"{providers.http_port}/v1, api_key_env: {KEY_ENV}, end_call: true}}\n"
        f"  tts: {{engine: cartesia, voice: fake, url: {ws}/tts/websocket, "
        f"api_key_env: {KEY_ENV}}}\n"
    )
    return path


if __name__ == "__main__":
    asyncio.run(serve_all())
