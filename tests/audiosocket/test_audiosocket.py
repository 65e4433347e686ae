"""AudioSocket: a client written from Asterisk's protocol description, against the server."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
import uuid

import numpy as np
import pytest
from helpers import cycles_of_ours, never_collecting_policy, wait_until

from flowcat_ft import FrameProcessor, Pipeline, Runtime
from flowcat_ft.agents.echo import Echo, echo_pipeline
from flowcat_ft.frames import (
    Direction,
    EndFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
    PauseOutputFrame,
    ResumeOutputFrame,
)
from flowcat_ft.gcpolicy import GcPolicy
from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.config import load_config
from flowcat_ft.transports.audiosocket import AudioSocketServer
from flowcat_ft.transports.session import MediaOptions


@pytest.fixture
def audiosocket():
    started = []

    def start(pipeline: Pipeline, gc_policy: GcPolicy | None = None) -> AudioSocketServer:
        runtime = Runtime(threads=1, slabs=512, gc_policy=gc_policy)
        server = AudioSocketServer(
            runtime, pipeline, port=0, options=MediaOptions(sample_rate=None)
        ).start()
        started.append((runtime, server))
        return server

    yield start
    for runtime, server in started:
        server.stop(grace=0)
        runtime.stop()


class Asterisk:
    """What Asterisk's AudioSocket application does, from its protocol: a TCP client
    sending type, 16-bit big-endian length and payload."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self.id = uuid.uuid4()

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!BH", kind, len(payload)) + payload)

    def receive(self, seconds: float) -> list[tuple[int, bytes]]:
        """The messages that come within ``seconds`` (or until the connection closes)."""
        messages, until = [], time.monotonic() + seconds
        self.sock.settimeout(0.05)
        while time.monotonic() < until:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            self.buffer += data
            while len(self.buffer) >= 3:
                kind, length = struct.unpack_from("!BH", self.buffer)
                if len(self.buffer) < 3 + length:
                    break
                messages.append((kind, self.buffer[3 : 3 + length]))
                self.buffer = self.buffer[3 + length :]
        return messages

    def unacknowledged(self) -> int:
        """Bytes sent that the server's side has neither acknowledged nor reset (Linux's
        SIOCOUTQ, which is TIOCOUTQ)."""
        queued = fcntl.ioctl(self.sock, termios.TIOCOUTQ, struct.pack("i", 0))
        return struct.unpack("i", queued)[0]


def test_audio_comes_back_and_dtmf_reaches_the_agent(audiosocket):
    digits = []

    class Keys(FrameProcessor):
        def process(self, frame, direction):
            if type(frame) is InputDTMFFrame:
                digits.append(frame.digit)
            self.push(frame, direction)

    server = audiosocket(Pipeline([Keys, Echo]))
    asterisk = Asterisk(server.port)
    asterisk.send(0x01, asterisk.id.bytes)
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 8000).astype("<i2").tobytes()
    chunks = [tone[i : i + 320] for i in range(0, len(tone), 320)]
    got = []
    for chunk in chunks[:25]:
        asterisk.send(0x10, chunk)
        got += asterisk.receive(0.02)
    asterisk.send(0x03, b"7")
    got += asterisk.receive(0.5)
    audio = b"".join(payload for kind, payload in got if kind == 0x10)
    assert all(len(payload) == 320 for kind, payload in got if kind == 0x10)
    assert audio == b"".join(chunks[:25])  # every sample back, in order
    assert wait_until(lambda: digits == ["7"])
    (session,) = server.sessions
    assert session.call.done is False
    asterisk.send(0x00)  # Asterisk hangs up
    assert wait_until(lambda: not server.sessions)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_the_agent_hangs_up_after_its_audio(audiosocket):
    class Bye(FrameProcessor):
        frames = 0

        def process(self, frame, direction):
            self.push(frame, direction)
            if type(frame).__name__ == "InputAudioRawFrame":
                self.frames += 1
                if self.frames == 5:
                    self.push(EndFrame(), Direction.UPSTREAM)

    server = audiosocket(Pipeline([Bye, Echo]))
    asterisk = Asterisk(server.port)
    asterisk.send(0x01, asterisk.id.bytes)
    for _ in range(10):
        asterisk.send(0x10, b"\x01\x00" * 160)
    got = asterisk.receive(3)
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == 0x00 and kinds.count(0x10) >= 5  # its audio, then the hangup
    asterisk.sock.close()  # as Asterisk does on a hangup
    assert wait_until(lambda: not server.sessions)


def test_audio_still_arriving_after_the_agent_hangs_up_does_not_destroy_the_hangup(
    audiosocket,
):
    """A socket closed with unread data sends a reset, which discards what the peer has
    not read yet: the server half-closes and reads on until the peer closes."""

    class ByeAtOnce(FrameProcessor):
        def process(self, frame, direction):
            self.push(frame, direction)
            if type(frame).__name__ == "InputAudioRawFrame":
                self.push(EndFrame(), Direction.UPSTREAM)

    server = audiosocket(Pipeline([ByeAtOnce]))
    asterisk = Asterisk(server.port)
    asterisk.send(0x01, asterisk.id.bytes)
    asterisk.send(0x10, b"\x01\x00" * 160)
    assert wait_until(lambda: server.sessions and all(s.end_reason for s in server.sessions))
    for _ in range(50):  # the caller talks on: audio the server has not read
        asterisk.send(0x10, b"\x01\x00" * 160)
    # All of it reached the server's side, which acknowledged it (half-closed, reading on)
    # or, had it closed with the data unread, answered with a reset: by now that would
    # have destroyed the hangup and the EOF waiting to be read here.
    assert wait_until(lambda: asterisk.unacknowledged() == 0)
    assert asterisk.receive(2) == [(0x00, b"")]  # the hangup, then the server's EOF
    assert server.sessions  # it waits for the peer's side...
    asterisk.sock.close()
    assert wait_until(lambda: not server.sessions)  # ...and closes with it
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([(0x10, b"\x00\x00" * 160)], "before the UUID"),
        ([(0x01, b"short")], "a UUID of 5 bytes"),
        ([(0x01, uuid.uuid4().bytes), (0x10, b"\x00" * 3)], "not whole samples"),
        ([(0x01, uuid.uuid4().bytes), (0x42, b"")], "unknown message type 0x42"),
        ([(0x01, uuid.uuid4().bytes), (0x03, b"x")], "is not a DTMF digit"),
    ],
)
def test_a_broken_stream_is_hung_up_and_the_other_call_goes_on(
    audiosocket, caplog, messages, reason
):
    server = audiosocket(echo_pipeline())
    good = Asterisk(server.port)
    good.send(0x01, good.id.bytes)
    bad = Asterisk(server.port)
    for kind, payload in messages:
        bad.send(kind, payload)
    assert bad.receive(2) == [(0x00, b"")]  # a hangup, then the connection closes
    assert reason in caplog.text
    good.send(0x10, b"\x02\x00" * 160)
    assert (0x10, b"\x02\x00" * 160) in good.receive(1)
    good.send(0x00)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_served_by_flowcat_ft_serve(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "server: {host: 127.0.0.1, port: 0, webrtc: false, playground: false}\n"
        "transports: {carriers: [raw], audiosocket: {enabled: true, port: 0}}\n"
        "agent: {kind: echo}\n"
    )
    server = AgentServer(load_config(path)).start()
    try:
        assert server.urls()["audiosocket"].startswith(f"127.0.0.1:{server.audiosocket.port}")
        asterisk = Asterisk(server.audiosocket.port)
        asterisk.send(0x01, asterisk.id.bytes)
        asterisk.send(0x10, b"\x05\x00" * 160)
        assert (0x10, b"\x05\x00" * 160) in asterisk.receive(1)
        asterisk.send(0x00)
    finally:
        server.stop(grace=0)


def test_a_pause_holds_the_agents_audio_and_the_resume_plays_all_of_it(audiosocket):
    class Talker(FrameProcessor):
        """Key 1: a second of audio, frames numbered; keys 3 and 4: pause and resume."""

        def process(self, frame, direction):
            if type(frame) is InputDTMFFrame and frame.digit == "1":
                for i in range(50):
                    pcm = np.full(160, 100 * i, "<i2").tobytes()
                    self.push(OutputAudioRawFrame.from_bytes(self.pool, pcm, 8000))
            elif type(frame) is InputDTMFFrame and frame.digit in "34":
                self.push(PauseOutputFrame() if frame.digit == "3" else ResumeOutputFrame())
            self.push(frame, direction)

    def numbers(messages):
        return [np.frombuffer(p, "<i2")[0] // 100 for kind, p in messages if kind == 0x10]

    server = audiosocket(Pipeline([Talker]))
    asterisk = Asterisk(server.port)
    asterisk.send(0x01, asterisk.id.bytes)
    asterisk.send(0x03, b"1")
    heard = []
    while len(heard) < 10:
        heard += numbers(asterisk.receive(0.02))
    asterisk.send(0x03, b"3")
    paused = numbers(asterisk.receive(0.4))  # 20 frames' time: no more than a few on the way
    asterisk.send(0x03, b"4")
    resumed, deadline = [], time.monotonic() + 10
    while len(heard + paused + resumed) < 50 and time.monotonic() < deadline:
        resumed += numbers(asterisk.receive(0.1))
    assert len(paused) <= 5, paused
    # AudioSocket has no clear: what was sent played, and nothing is sent twice.
    assert heard + paused + resumed == list(range(50))
    assert server.sessions[0].pauses == 1


def test_ended_calls_leave_no_cycle_for_the_collector(audiosocket):
    """With collection off (the runtime's policy here never collects), a session and its
    playout must not hold each other once the connection is gone."""
    server = audiosocket(Pipeline([Echo]), never_collecting_policy())
    for n in range(6):
        asterisk = Asterisk(server.port)
        asterisk.send(0x01, asterisk.id.bytes)
        for _ in range(5):
            asterisk.send(0x10, b"\x01\x00" * 160)
        assert wait_until(lambda asterisk=asterisk: asterisk.receive(0.05))  # echoed
        if n % 2:  # Asterisk hangs up; else the connection just closes
            asterisk.send(0x00)
        asterisk.sock.close()
    assert wait_until(lambda: not server.sessions and server.runtime.pool.in_use == 0)
    assert cycles_of_ours() == []
