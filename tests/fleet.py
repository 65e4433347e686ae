"""Real processes for the fleet tests: `flowcat-ft serve` servers of the echo agent, HAProxy
in front of them (from deploy/haproxy/haproxy.cfg, on loopback), and callers that count
every echo."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import websockets
from carrier_messages import twilio_media, twilio_start
from helpers import http_get, metric_samples
from websockets.exceptions import ConnectionClosed

from flowcat_ft.server.streamtokens import StreamTokens

ROOT = Path(__file__).resolve().parent.parent
FLOWCAT = [sys.executable, "-m", "flowcat_ft.cli"]
# One stream token key for every server, as a fleet needs: a carrier's webhook may be
# answered by one server and its stream taken by another.
STREAM_KEY = "fleet-tests-stream-token-key-0123456789"
STREAM_PATH = "/twilio/" + StreamTokens(STREAM_KEY.encode()).issue("twilio", ttl=3600)


class Served:
    """A `flowcat-ft serve` process of the echo agent, its port, and what it printed."""

    def __init__(self, workdir: Path, limits: str = "", name: str = "agent") -> None:
        config = workdir / f"{name}.yaml"
        config.write_text(
            "server: {host: 127.0.0.1, port: 0, playground: false, webrtc: false}\n"
            f"agent: {{kind: echo}}\nlogging: {{level: WARNING}}\nlimits: {{{limits}}}\n"
            "transports: {stream_token_key_env: FLOWCAT_TEST_STREAM_KEY}\n"
        )
        self.proc = subprocess.Popen(
            [*FLOWCAT, "serve", str(config)],
            cwd=ROOT,
            env={**os.environ, "FLOWCAT_TEST_STREAM_KEY": STREAM_KEY},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if "/twilio" in line:
                self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                break
        else:
            raise AssertionError(f"the server did not start: {''.join(self.lines)}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.port}{path}")

    def metric(self, name: str) -> str | None:
        """A sample from /metrics (None: the server does not answer)."""
        try:
            return metric_samples(self.get("/metrics")[1]).get(name)
        except OSError:
            return None

    def calls(self) -> int:
        return int(self.metric("flowcat_calls_active") or 0)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    def output(self) -> str:
        self._reader.join(10)
        return "".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HAProxy:
    """HAProxy running deploy/haproxy/haproxy.cfg in the foreground, with only what a test
    must change: it listens on a free loopback port, logs to its output, keeps its stats
    socket in ``workdir``, and its servers are ``servers`` (name: port). ``checks=False``
    takes the health checks off, as if every call came between two checks."""

    CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"

    def __init__(self, workdir: Path, servers: dict[str, int], *, checks: bool = True) -> None:
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        text = self.CONFIG.read_text()
        text = _replace_once(text, r"^    bind :8080$", f"    bind 127.0.0.1:{self.port}")
        text = _replace_once(text, r"^    log /dev/log local0$", "    log stdout format raw local0")
        text = _replace_once(text, r"/run/haproxy/admin\.sock", str(self.socket))
        lines = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers.items())
        text = _replace_once(text, r"(^    server .*\n)+", lines + "\n")
        if not checks:
            text = _replace_once(text, r"^    default-server check ", "    default-server ")
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(text)
        self.log = workdir / "haproxy.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers' rows of ``show stat`` by name (``status``: UP, DOWN,
        or on the way, like "UP 1/3"; ``scur``: sessions now); empty until it answers."""
        try:
            with socket.socket(socket.AF_UNIX) as stats:
                stats.connect(str(self.socket))
                stats.sendall(b"show stat\n")
                text = b"".join(iter(lambda: stats.recv(65536), b"")).decode()
        except OSError:
            return {}
        rows = csv.DictReader(text.removeprefix("# ").splitlines())
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "flowcat" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def status(self, server: str) -> str:
        return self.servers().get(server, {}).get("status", "")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    """``text`` with the one match of ``pattern`` replaced: the test changes no more of
    the real configuration than it means to."""
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} is no longer in {HAProxy.CONFIG}"
    return new


class Caller:
    """A call streaming through a WebSocket: one media message out, its echo back, over
    and over. ``echoed`` counts the echoes; every message sent that was not echoed before
    the call ended is ``missing``; ``gap`` is the longest wait for an echo (seconds)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.sent = 0
        self.echoed = 0
        self.gap = 0.0
        self.closed: tuple[int | None, str | None] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @classmethod
    async def dial(cls, url: str, frames: int = 5) -> Caller:
        """Connect, start the stream, and wait for ``frames`` echoes."""
        caller = cls(await websockets.connect(url))
        await caller.ws.send(twilio_start())
        await caller.exchange(frames)
        return caller

    async def exchange(self, frames: int) -> None:
        """Send ``frames`` messages one at a time, each after the previous echo."""
        loop = asyncio.get_running_loop()
        for _ in range(frames):
            await self.ws.send(twilio_media(b"\x44" * 160, self.sent))
            self.sent += 1
            began = loop.time()
            await asyncio.wait_for(self.ws.recv(), 30)
            self.gap = max(self.gap, loop.time() - began)
            self.echoed += 1

    def stream(self) -> None:
        """Keep exchanging in the background until :meth:`hang_up` or the server closes."""
        self._task = asyncio.get_running_loop().create_task(self._stream())

    async def _stream(self) -> None:
        try:
            while not self._stop.is_set():
                await self.exchange(1)
                await asyncio.sleep(0.02)  # a frame's worth of audio
        except ConnectionClosed:
            self.closed = (self.ws.close_code, self.ws.close_reason)

    @property
    def missing(self) -> int:
        return self.sent - self.echoed

    async def hang_up(self) -> None:
        """Stop streaming (the echo of the last message sent is waited for) and close."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.ws.close()
