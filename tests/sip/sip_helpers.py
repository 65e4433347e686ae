"""What the SIP tests share: the SIPp scenarios, a pipeline that records what it hears,
free ports, SIPp runs and a live call held open through SIPp's 3PCC socket. (A module, not
the conftest, so that tests import it by a name no other test directory uses.)"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from peers import need_program

from flowcat_ft import FrameProcessor, Pipeline
from flowcat_ft.agents.echo import Echo
from flowcat_ft.frames import Direction as D
from flowcat_ft.frames import (
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputDTMFFrame,
)
from flowcat_ft.transports.sip import SipServer

SCENARIOS = Path(__file__).parent / "scenarios"


class Heard:
    """What the agent heard, across its calls: appended on stage threads."""

    def __init__(self, hang_up_after: int | None = None) -> None:
        self.frames = 0
        self.loud = 0  # frames with a sample over 1000 (speech, not silence)
        self.digits: list[str] = []
        self.hang_up_after = hang_up_after
        self.lock = threading.Lock()


def listening(heard: Heard) -> Pipeline:
    """Records audio and DTMF, answers each key with the same key, echoes the audio; ends
    the call after ``heard.hang_up_after`` frames."""

    class Listen(FrameProcessor):
        def process(self, frame, direction):
            if type(frame) is InputDTMFFrame:
                with heard.lock:
                    heard.digits.append(frame.digit)
                self.push(frame, direction)
                self.push(OutputDTMFFrame(frame.digit), D.DOWNSTREAM)
                return
            if type(frame) is InputAudioRawFrame:
                with heard.lock:
                    heard.frames += 1
                    heard.loud += int(abs(frame.samples.astype(int)).max() > 1000)
                    enough = heard.hang_up_after is not None and heard.frames == heard.hang_up_after
                if enough:
                    self.push(EndFrame(), D.UPSTREAM)
            self.push(frame, direction)

    return Pipeline([Listen, Echo])


def free_port(kind: int = socket.SOCK_DGRAM, even: bool = False) -> int:
    while True:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not even or port % 2 == 0:
            return port


def sipp_command(server: SipServer, scenario: str, *, transport: str = "u1", timeout: int = 30):
    """The command line of one call of a SIPp scenario against ``server``, and the file
    its errors go to."""
    binary = need_program("sipp")
    port, media = free_port(), free_port(even=True)
    errors = Path(f"/tmp/flowcat-sipp-{port}-errors.log")
    command = [
        binary, "-sf", str(SCENARIOS / scenario), f"127.0.0.1:{server.port}",
        "-i", "127.0.0.1", "-p", str(port), "-mp", str(media), "-t", transport,
        "-m", "1", "-nostdin", "-timeout", f"{timeout}s", "-timeout_error",
        "-trace_err", "-error_file", str(errors),
    ]  # fmt: skip
    return command, errors


def sipp(server: SipServer, scenario: str, *, transport: str = "u1", timeout: int = 30):
    """Run one call of a SIPp scenario against ``server``; returns SIPp's exit status and
    its error log."""
    command, errors = sipp_command(server, scenario, transport=transport, timeout=timeout)
    result = subprocess.run(command, capture_output=True, timeout=timeout + 10, check=False)
    log = errors.read_text(errors="replace") if errors.exists() else ""
    errors.unlink(missing_ok=True)
    return result.returncode, log + result.stdout.decode(errors="replace")[-2000:]


def finished(process: subprocess.Popen) -> int:
    status = process.wait(15)
    assert status == 0, process.stderr.read().decode()[-2000:]
    return status


class LiveCall:
    """One call from SIPp run in 3PCC "controller B" mode: it waits on a TCP socket for
    the test's commands (``Call-ID: ...``, ended by ESC); the first places the call, the
    second lets it go on to its end (scenarios/live.xml)."""

    def __init__(self, server: SipServer) -> None:
        self.call_id = f"live-{free_port()}@sipp"
        control = free_port(socket.SOCK_STREAM)
        command = [
            need_program("sipp"), "-sf", str(SCENARIOS / "live.xml"), f"127.0.0.1:{server.port}",
            "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port(even=True)),
            "-rtp_echo", "-3pcc", f"127.0.0.1:{control}", "-m", "1", "-nostdin",
            "-timeout", "60s", "-timeout_error",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.control = _connect(control, self.process)

    def go_on(self) -> None:
        self.control.sendall(f"Call-ID: {self.call_id}\r\n\r\n\x1b".encode())

    def finished(self) -> int:
        status = self.process.wait(30)
        assert status == 0, self.process.stderr.read().decode()[-2000:]
        return status

    def close(self) -> None:
        self.control.close()
        self.process.kill()
        self.process.wait()


def _connect(port: int, process: subprocess.Popen) -> socket.socket:
    """Connect to SIPp's twin socket once it listens."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def live_call(server: SipServer) -> Iterator[LiveCall]:
    call = LiveCall(server)
    try:
        call.go_on()  # place it
        yield call
    finally:
        call.close()


def registrar(scenario: str, port: int, transport: str = "u1") -> subprocess.Popen:
    """SIPp as a registrar on ``port`` (UDP, or TCP with ``"t1"``), playing ``scenario``."""
    command = [
        need_program("sipp"), "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
        "-t", transport, "-m", "1", "-nostdin", "-timeout", "60s", "-timeout_error",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
