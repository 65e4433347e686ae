"""WebRTC calls through the gateway's companion processes, with real aiortc peers.

The peer (webrtc_peer.py) runs as a subprocess under a python where aiortc imports (the GIL
venv); the server under test runs in this process, on either build.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import websockets
from helpers import wait_until
from peers import missing, need_program

from flowcat_ft import FrameProcessor, InputDTMFFrame, OutputAudioRawFrame, Pipeline
from flowcat_ft.agents.echo import Echo
from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import InputAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from flowcat_ft.transports.webrtc import WebRTCGateway
from flowcat_ft.transports.webrtc.gateway import find_python

# Real-time and CPU-heavy: ci/test.sh runs the tests of this group one at a time.
pytestmark = pytest.mark.xdist_group("realtime")

MEDIA = "/raw?codec=pcm16&sample_rate=16000"
OFFER = "/webrtc/offer"
BAD_OFFER = json.dumps({"sdp": "v=0", "type": "offer"}).encode()  # parsed by aiortc, refused
PEER = Path(__file__).with_name("webrtc_peer.py")
RATE = 16000


@functools.cache
def _aiortc_python() -> tuple[str | None, str]:
    return find_python()


@pytest.fixture
def aiortc_python() -> str:
    python, reason = _aiortc_python()
    if python is None:
        missing(f"no python with aiortc: {reason}", "ci/venvs.sh installs it in .venv-gil")
    return python


@pytest.fixture
def webrtc(serve, aiortc_python):
    """``webrtc(pipeline, **gateway_options)``: a server with a WebRTC gateway whose
    companions (one unless asked) are connected; the gateway stops before the server."""
    gateways: list[WebRTCGateway] = []

    def start(pipeline=None, companions=1, **options):
        gateway = WebRTCGateway(MEDIA, aiortc_python, companions=companions, **options)
        server = serve(
            pipeline, pages=gateway.pages(), sockets=gateway.sockets(), guards=gateway.guards()
        )
        gateways.append(gateway.start(f"ws://127.0.0.1:{server.port}"))
        assert wait_until(lambda: all(c["running"] for c in companions_of(gateway)), 60)
        return server, gateway

    yield start
    for gateway in gateways:
        gateway.stop()


def companions_of(gateway: WebRTCGateway) -> list[dict]:
    return gateway.status()["companions"]


def peers_of(gateway: WebRTCGateway) -> list[int]:
    return [companion["peers"] for companion in companions_of(gateway)]


def peer_command(python: str, port: int, *args: str) -> list[str]:
    return [python, str(PEER), "--offer", f"http://127.0.0.1:{port}/webrtc/offer", *args]


def run_peer(python: str, port: int, *args: str, seconds: float) -> list[dict]:
    """Run the peer for ``seconds``; its calls' results."""
    command = peer_command(python, port, "--seconds", str(seconds), *args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["peers"]


def post(port: int, path: str, body: bytes, method: str = "POST") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, reply.read().decode()
    finally:
        connection.close()


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16), wav.getframerate()


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype(np.int16).tobytes())


def loud_seconds(pcm: np.ndarray, level: float = 1000.0) -> float:
    """How much of ``pcm`` (16 kHz) is louder than ``level`` RMS, in 20 ms frames."""
    frames = pcm[: len(pcm) // 320 * 320].reshape(-1, 320).astype(np.float64)
    return float(np.sum(np.sqrt(np.mean(frames**2, axis=1)) > level)) * 0.02


def best_correlation(sent: np.ndarray, heard: np.ndarray) -> tuple[float, int]:
    """The normalised correlation of ``sent`` with the part of ``heard`` it matches best,
    and where that part starts."""
    a, b = sent.astype(np.float64), heard.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    raw = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)[: len(b) - len(a)]
    lag = int(np.argmax(raw))
    part = b[lag : lag + len(a)]
    return float(a @ part / (np.linalg.norm(a) * np.linalg.norm(part) + 1e-9)), lag


def speech_parts(pcm: np.ndarray, seconds: float = 0.25) -> list[np.ndarray]:
    """The loud quarter seconds of ``pcm`` (half its peak level or more)."""
    n = int(RATE * seconds)
    parts = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
    peak = max(np.abs(part.astype(np.int32)).max() for part in parts)
    return [part for part in parts if np.abs(part.astype(np.int32)).max() >= peak / 2]


def speech_start(pcm: np.ndarray) -> int:
    """Where the first of :func:`speech_parts` starts."""
    first = speech_parts(pcm)[0]
    n = len(first)
    return next(i for i in range(0, len(pcm), n) if np.array_equal(pcm[i : i + n], first))


@pytest.fixture
def speech(tmp_path) -> tuple[Path, np.ndarray]:
    """An espeak-ng utterance after 0.5 s of silence, as espeak writes it (22.05 kHz), and
    the same at 16 kHz."""
    need_program("espeak-ng")
    said = tmp_path / "said.wav"
    text = "Hello there. This call goes through the WebRTC companion and comes back."
    subprocess.run(["espeak-ng", "-w", str(said), text], check=True)
    pcm, rate = read_wav(said)
    pcm = np.concatenate([np.zeros(rate // 2, np.int16), pcm])
    wav = tmp_path / "speech.wav"
    write_wav(wav, pcm, rate)
    resampler = StreamingResampler(rate, RATE, len(pcm))
    at_16k = np.empty(resampler.out_samples(len(pcm)), np.int16)
    resampler.process(pcm, at_16k)
    return wav, at_16k


class CallLog(FrameProcessor):
    """Records each call's start metadata and how it ended; a test sets ``log``."""

    log: list[tuple[str, object]] = []

    def on_start(self, frame) -> None:
        self.log.append(("start", frame.metadata))

    def on_end(self) -> None:
        self.log.append(("end", None))

    def on_cancel(self) -> None:
        self.log.append(("cancel", None))


def test_a_webrtc_peer_hears_itself_through_the_echo_agent(webrtc, aiortc_python, speech, tmp_path):
    class Log(CallLog):
        log = []

    server, gateway = webrtc(Pipeline([Log, Echo]))
    wav, sent = speech
    seconds = len(sent) / RATE + 2.0
    out = tmp_path / "peer"
    [result] = run_peer(
        aiortc_python, server.port, "--wav", str(wav), "--out", str(out), seconds=seconds
    )
    assert result["status"] == 200
    heard, rate = read_wav(tmp_path / "peer-0.wav")
    assert rate == RATE
    # What came back is what was said (through Opus twice), a little later: each quarter
    # second of the speech is found in what came back, in order (a machine under load may
    # drop or delay a packet, which shifts the rest, so the parts are matched one by one).
    matches = [best_correlation(part, heard) for part in speech_parts(sent)]
    assert np.median([correlation for correlation, _ in matches]) > 0.7, matches
    lags = [lag for _, lag in matches]
    assert lags == sorted(lags), lags
    assert 0 < lags[0] - speech_start(sent) < RATE  # under a second
    assert loud_seconds(heard) > 0.7 * loud_seconds(sent) > 1.0
    # The server saw one raw-protocol call from the companion; the hang-up ended it.
    assert wait_until(lambda: server.runtime.calls == [], 10)
    [(kind, metadata), (end, _)] = Log.log
    assert (kind, metadata["carrier"], end) == ("start", "raw", "cancel")
    parameters = metadata["parameters"]
    assert parameters["transport"] == "webrtc" and parameters["peer"] == metadata["call_id"]
    assert server.stats()["close_codes"] == {1000: 1}  # the companion's stop, then a close
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    assert wait_until(lambda: gateway.status()["peers"] == 0)


TONE = (8000 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE)).astype(np.int16)


class KeypadBot(FrameProcessor):
    """Key 1: two seconds of tone, then a mark. Key 2: interrupt. Caller audio: dropped."""

    def process(self, frame, direction):
        if isinstance(frame, InputAudioRawFrame):
            return
        if isinstance(frame, InputDTMFFrame) and frame.digit == "1":
            self.push(TTSStartedFrame())
            for chunk in TONE.reshape(-1, 320):
                self.push(OutputAudioRawFrame.from_bytes(self.pool, chunk.tobytes(), RATE))
            self.push(TTSStoppedFrame())
        elif isinstance(frame, InputDTMFFrame) and frame.digit == "2":
            self.interrupt()
        self.push(frame, direction)


def test_the_events_channel_carries_marks_clear_and_keys(webrtc, aiortc_python, tmp_path):
    server, _ = webrtc(Pipeline([KeypadBot]))
    silence = tmp_path / "silence.wav"
    write_wav(silence, np.zeros(RATE // 5, np.int16), RATE)
    sessions = []
    keys = [
        "0.5:" + json.dumps({"event": "dtmf", "digit": "1"}),  # two seconds of tone
        "3.5:" + json.dumps({"event": "dtmf", "digit": "1"}),  # and two more...
        "3.7:" + json.dumps({"event": "dtmf", "digit": "2"}),  # ...cut short
    ]
    args = ["--wav", str(silence), "--out", str(tmp_path / "peer")]
    for key in keys:
        args += ["--send", key]
    with subprocess.Popen(peer_command(aiortc_python, server.port, "--seconds", "6.5", *args)):
        assert wait_until(lambda: server.sessions, 60)
        sessions.extend(server.sessions)
    result = json.loads((tmp_path / "peer-0.json").read_text())
    events = [json.loads(text)["event"] for text in result["events"]]
    assert "mark" in events and "clear" in events  # the server's events reached the peer
    session = sessions[0]
    assert session.clears == 1
    # Each mark that reached the companion came back once its track had played the audio.
    assert session.marks_played == events.count("mark") >= 1
    heard, _ = read_wav(tmp_path / "peer-0.wav")
    # The first tone was heard whole, the second only until the interruption.
    assert 1.8 < loud_seconds(heard) < 3.0


def test_the_companion_dying_ends_only_its_calls_and_it_comes_back(
    webrtc, aiortc_python, speech, tmp_path
):
    server, gateway = webrtc(companions=1)
    wav, _ = speech
    old_pid = gateway.status()["pid"]

    async def scenario() -> tuple[int, int]:
        peer = await asyncio.create_subprocess_exec(
            *peer_command(aiortc_python, server.port, "--seconds", "60", "--wav", str(wav)),
            stdout=subprocess.DEVNULL,
        )
        echoes = 0
        async with websockets.connect(f"ws://127.0.0.1:{server.port}{MEDIA}") as ws:
            await ws.send(json.dumps({"event": "start", "parameters": {"transport": "ws"}}))

            async def talk() -> None:
                while True:
                    await ws.send(TONE[:320].tobytes())
                    await asyncio.sleep(0.02)

            async def listen() -> None:
                nonlocal echoes
                async for message in ws:
                    echoes += isinstance(message, bytes)

            tasks = [asyncio.ensure_future(talk()), asyncio.ensure_future(listen())]

            def both_flowing() -> bool:
                return [s.frames_in > 10 for s in server.sessions] == [True, True]

            assert await asyncio.to_thread(wait_until, both_flowing, 60)
            os.kill(old_pid, signal.SIGKILL)
            # The WebRTC call's connection drops and its call is cancelled; this one goes on.
            assert await asyncio.to_thread(wait_until, lambda: len(server.runtime.calls) == 1, 10)
            before = echoes
            assert await asyncio.to_thread(wait_until, lambda: echoes > before + 25, 10)
            # Offers meanwhile wait for the next companion (it starts after a 1 s delay)...
            assert await asyncio.to_thread(wait_until, lambda: not gateway.status()["running"])
            gateway.offer_wait = 0.2
            status, body = await asyncio.to_thread(post, server.port, OFFER, BAD_OFFER)
            assert status == 503 and "try again" in body
            gateway.offer_wait = 60  # ...and the new one answers them
            status, body = await asyncio.to_thread(post, server.port, OFFER, BAD_OFFER)
            assert status == 400 and body.startswith("bad offer:")
            assert gateway.status()["running"]
            for task in tasks:
                task.cancel()
        peer.kill()
        await peer.wait()
        return before, echoes

    asyncio.run(scenario())
    status = gateway.status()
    assert status["restarts"] == 1 and status["pid"] != old_pid
    assert f"companion {old_pid} exited with code -9" in status["last_error"]
    assert server.stats()["close_codes"][1006] == 1  # the WebRTC call's media connection
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    # The new companion takes calls.
    [result] = run_peer(aiortc_python, server.port, "--clicks", seconds=3)
    assert result["status"] == 200 and len(result["round_trip_ms"]) >= 1


def test_calls_spread_over_the_companions_and_one_dying_ends_only_its_calls(webrtc, aiortc_python):
    server, gateway = webrtc(companions=2)

    def call(seconds: float) -> subprocess.Popen:
        args = ["--clicks", "--seconds", str(seconds)]
        return subprocess.Popen(
            peer_command(aiortc_python, server.port, *args), stdout=subprocess.PIPE
        )

    # Each call goes to the companion with the fewest peers.
    first = call(20)
    assert wait_until(lambda: sorted(peers_of(gateway)) == [0, 1], 60), gateway.status()
    doomed = peers_of(gateway).index(1)
    second = call(20)
    assert wait_until(lambda: peers_of(gateway) == [1, 1], 60), gateway.status()
    assert gateway.status()["peers"] == 2
    assert wait_until(lambda: [s.frames_in > 10 for s in server.sessions] == [True, True], 30)

    # Killing the first call's companion ends that call only.
    old_pid = companions_of(gateway)[doomed]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    # The call ends first; its connection closes just after.
    assert wait_until(lambda: len(server.runtime.calls) == len(server.sessions) == 1, 10)
    [survivor] = server.sessions
    frames = survivor.frames_in
    assert wait_until(lambda: survivor.frames_in > frames + 50, 10)
    flowing_at = time.monotonic()  # the second call still flowing after the kill

    # The killed companion comes back on its own, and the next call goes to it.
    def restarted() -> bool:
        companion = companions_of(gateway)[doomed]
        return companion["running"] and companion["pid"] != old_pid

    assert wait_until(restarted, 60), gateway.status()
    status = gateway.status()
    assert [c["restarts"] for c in status["companions"]] == [int(i == doomed) for i in (0, 1)]
    assert status["restarts"] == 1
    assert f"companion {old_pid} exited with code -9" in status["last_error"]
    third = call(3)
    assert wait_until(lambda: peers_of(gateway) == [1, 1], 60), gateway.status()

    results = {}
    for name, peer in [("first", first), ("second", second), ("third", third)]:
        out, _ = peer.communicate(timeout=90)
        assert peer.returncode == 0
        [results[name]] = json.loads(out.strip().splitlines()[-1])["peers"]
    # The second call heard its echo after the kill; the third one heard its own.
    assert max(results["second"]["echoed_at"]) > flowing_at
    assert results["third"]["status"] == 200 and results["third"]["round_trip_ms"]
    assert server.stats()["close_codes"][1006] == 1  # the first call's media connection
    assert wait_until(lambda: server.runtime.calls == [], 30)
    assert wait_until(lambda: gateway.status()["peers"] == 0)


def test_bad_offers_get_clear_answers_and_stop_ends_the_companions(webrtc):
    server, gateway = webrtc(companions=2)
    port = server.port
    assert post(port, OFFER, b"", "GET")[0] == 405
    status, body = post(port, OFFER, b"not json")
    assert status == 400 and '"sdp"' in body
    status, body = post(port, OFFER, BAD_OFFER)
    assert status == 400 and body.startswith("bad offer:")
    assert "Error" not in body and "Traceback" not in body  # the companion's words are logged
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(open_control_link(port, headers))
        assert refused.value.response.status_code == 403
    pids = [companion["pid"] for companion in companions_of(gateway)]
    assert len(set(pids)) == 2 and gateway.status()["pid"] == pids[0]
    gateway.stop()
    assert gateway.status()["running"] is False
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert post(port, OFFER, BAD_OFFER)[0] == 503


async def open_control_link(port: int, headers: dict[str, str]) -> None:
    url = f"ws://127.0.0.1:{port}/webrtc/companion"
    async with websockets.connect(url, additional_headers=headers):
        pass


def test_companions_must_be_at_least_one():
    with pytest.raises(ValueError, match="at least 1"):
        WebRTCGateway(MEDIA, companions=0)
    assert WebRTCGateway(MEDIA).companions == (os.process_cpu_count() or 1)


async def raw_echo(port: int, audio: bytes) -> bytes:
    async with websockets.connect(f"ws://127.0.0.1:{port}{MEDIA}") as ws:
        await ws.send(audio)
        return await asyncio.wait_for(ws.recv(), 10)


def test_without_a_python_with_aiortc_offers_get_503_and_calls_go_on(serve, tmp_path, monkeypatch):
    no_aiortc = tmp_path / "python"
    no_aiortc.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'aiortc'\" >&2\nexit 1\n"
    )
    no_aiortc.chmod(0o755)
    missing = WebRTCGateway(MEDIA, str(tmp_path / "missing"))
    monkeypatch.setenv("FLOWCAT_WEBRTC_PYTHON", str(no_aiortc))
    from_env = WebRTCGateway(MEDIA)
    for gateway, why in [(missing, "cannot run it"), (from_env, "No module named 'aiortc'")]:
        assert not gateway.available
        server = serve(pages=gateway.pages(), sockets=gateway.sockets())
        gateway.start(f"ws://127.0.0.1:{server.port}")
        status, body = post(server.port, OFFER, BAD_OFFER)
        assert status == 503
        assert why in body and "FLOWCAT_WEBRTC_PYTHON" in body
        assert gateway.status()["running"] is False
        assert asyncio.run(raw_echo(server.port, b"\x01\x02" * 320)) == b"\x01\x02" * 320
        gateway.stop()


def test_the_gateway_never_imports_aiortc_in_process():
    code = (
        "import sys, flowcat_ft.transports.webrtc as w; w.WebRTCGateway().available; "
        "print(sorted(m for m in ('aiortc', 'av', 'cryptography') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


TRACK_SCRIPT = """
import asyncio, json
import numpy as np
from flowcat_ft.transports.webrtc.media import PcmTrack

async def main():
    marks = []
    track = PcmTrack(16000, max_queued=0.1, on_mark=marks.append)
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(320 * 8) / 16000)).astype(np.int16)
    track.put(tone[:700].tobytes())  # two frames and a bit
    track.put(tone[700:960].tobytes())  # the third
    track.mark("a")
    track.put(tone[960:1600].tobytes())
    track.mark("b")
    report = {"queued": track.queued, "marks": []}
    frames = []
    for _ in range(6):
        frame = await track.recv()
        frames.append(frame.to_ndarray().reshape(-1, 2))
        report["marks"].append(list(marks))
    track.put(tone[:960].tobytes())
    track.mark("c")
    track.clear()
    report["after_clear"] = list(marks)
    track.put(tone.tobytes())  # 8 frames into room for 5
    report["dropped"] = track.dropped
    out = np.concatenate(frames)
    report["format"] = [frame.format.name, frame.layout.name, frame.sample_rate, frame.samples]
    report["channels_equal"] = bool((out[:, 0] == out[:, 1]).all())
    report["rms_in"] = float(np.sqrt(np.mean(tone[:1600].astype(float) ** 2)))
    report["rms_out"] = float(np.sqrt(np.mean(out[96 * 3 : 960 * 5, 0].astype(float) ** 2)))
    report["silence_after"] = int(np.abs(out[960 * 5 + 200 :, 0]).max())
    # Fed at real time with three frames to spare for a whole window (2 s): quiet frames
    # are trimmed, and loud ones are not.
    async def fed(frame):
        track = PcmTrack(16000)
        track.put(frame * 3)
        for _ in range(110):
            track.put(frame)
            await track.next_pcm()
        return track.trimmed
    quiet, loud = await asyncio.gather(fed(bytes(640)), fed(tone[:320].tobytes()))
    report["trimmed"] = [quiet, loud]
    print(json.dumps(report))

asyncio.run(main())
"""


def test_the_outgoing_track_plays_marks_clears_and_bounds_its_delay(aiortc_python):
    done = subprocess.run(
        [aiortc_python, "-c", TRACK_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["queued"] == pytest.approx(0.1)
    # A mark is reported on the frame after the audio queued before it has been played.
    assert report["marks"] == [[], [], [], ["a"], ["a"], ["a", "b"]]
    assert report["after_clear"] == ["a", "b", "c"]  # cleared: reported at once
    assert report["dropped"] == 3
    # What the Opus encoder gets: 20 ms of 48 kHz, both channels the same, the level kept.
    assert report["format"] == ["s16", "stereo", 48000, 960]
    assert report["channels_equal"]
    assert report["rms_out"] == pytest.approx(report["rms_in"], rel=0.05)
    assert report["silence_after"] < 200
    assert report["trimmed"] == [3, 0]
