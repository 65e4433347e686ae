"""The browser playground on a real server: its pages, its media route (the conversation's
events, checked with a plain WebSocket client), and headless Chromium talking to the default
offline agent over WebSocket and over WebRTC, its fake microphone playing espeak-ng speech.
The reply the browser heard is transcribed back; a screenshot of the page is kept in
``$FLOWCAT_TEST_ARTIFACTS`` (default ``tests/artifacts/``)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest
from browser import Chromium, Firefox, need_chromium
from helpers import wait_until
from peers import missing
from services.offline_speech import need_worker_python, say, silence, with_noise
from websockets.sync.client import connect

from flowcat_ft.agents.echo import Echo
from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.server.playground import playground_pages, playground_routes
from flowcat_ft.server.status import status_pages
from flowcat_ft.services.offline import (
    DEFAULT_GRAPH,
    SphinxPool,
    load_graph,
    offline_agent_pipeline,
)
from flowcat_ft.services.offline.sphinx_pool import Grammar
from flowcat_ft.services.offline.sphinx_worker import words
from flowcat_ft.transports.server import WebSocketServer
from flowcat_ft.transports.session import MediaOptions
from flowcat_ft.transports.webrtc import WebRTCGateway

# Real-time and CPU-heavy: ci/test.sh runs the tests of this group one at a time.
pytestmark = pytest.mark.xdist_group("realtime")

ARTIFACTS = Path(
    os.environ.get("FLOWCAT_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts"
)
PCM = (np.arange(320, dtype=np.int16) * 50).tobytes()  # 20 ms at 16 kHz


@pytest.fixture
def serve(serve):
    """The shared fixture's servers, with the playground: ``serve(pipeline, **options)``."""

    def start(pipeline: Pipeline, **kwargs) -> WebSocketServer:
        pages = {**playground_pages(), **kwargs.pop("pages", {})}
        options = MediaOptions(sample_rate=16000)
        return serve(pipeline, options=options, routes=playground_routes(), pages=pages, **kwargs)

    return start


def get(server: WebSocketServer, path: str, method: str = "GET") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(method, path)  # the path is sent as it is, ".." and all
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


# -- the pages and the media route ------------------------------------------------------------


def test_the_page_and_its_files_are_served_and_nothing_else(serve):
    server = serve(Pipeline([FrameProcessor]))
    page = get(server, "/")
    assert page.status == 200
    assert page.getheader("Content-Type") == "text/html; charset=utf-8"
    html = page.body.decode()
    for name, content_type in [
        ("playground.js", "text/javascript; charset=utf-8"),
        ("playground.css", "text/css; charset=utf-8"),
    ]:
        assert f"/playground/{name}" in html
        response = get(server, f"/playground/{name}")
        assert (response.status, response.getheader("Content-Type")) == (200, content_type)
        assert response.body
    worklet = get(server, "/playground/audio-worklet.js")
    assert worklet.getheader("Content-Type") == "text/javascript; charset=utf-8"
    assert b'registerProcessor("pcm16-capture"' in worklet.body
    assert get(server, "/playground/index.html").body == page.body
    for path in [
        "/playground/../playground.py",
        "/playground/..%2fplayground.py",
        "/playground/missing.js",
        "/playground/",
        "/playground.py",
    ]:
        assert get(server, path).status == 404, path
    assert get(server, "/", method="POST").status == 405


class ScriptedTurn(FrameProcessor):
    """Plays one turn when the caller's first audio arrives: the user speaks, and the bot
    answers with that audio (echoed by the next processor) and says what it said. Later
    audio passes on."""

    answered = False

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is not InputAudioRawFrame or self.answered:
            self.push(frame, direction)
            return
        self.answered = True
        for event in [
            UserStartedSpeakingFrame(),
            InterimTranscriptionFrame("what"),
            TranscriptionFrame("what time is it"),
            UserStoppedSpeakingFrame(),
            BotStartedSpeakingFrame(),
            frame,
            TTSTextFrame("It is noon."),
            TTSStoppedFrame(),  # the transport sends a mark after the audio
            BotStoppedSpeakingFrame(),
        ]:
            self.push(event)


SCRIPTED_ECHO = Pipeline([ScriptedTurn, Echo])


def test_the_media_route_tells_the_page_what_happens_in_the_conversation(serve):
    server = serve(SCRIPTED_ECHO)
    with connect(f"ws://127.0.0.1:{server.port}/playground") as ws:
        ws.send(json.dumps({"event": "start", "call_id": "page-1"}))
        ws.send(PCM)
        events, audio = [], b""
        while not events or events[-1]["event"] != "bot_stopped_speaking":
            message = ws.recv(timeout=10)
            if isinstance(message, bytes):
                audio += message
            else:
                events.append(json.loads(message))
    latency = next(event for event in events if event["event"] == "latency")
    assert latency["ms"] >= 0
    assert audio == PCM
    assert [event for event in events if event is not latency] == [
        {"event": "user_started_speaking"},
        {"event": "transcript", "text": "what", "final": False},
        {"event": "transcript", "text": "what time is it", "final": True},
        {"event": "user_stopped_speaking"},
        {"event": "bot_started_speaking"},
        {"event": "bot_text", "text": "It is noon."},
        {"event": "mark", "name": "utterance-1"},
        {"event": "bot_stopped_speaking"},
    ]
    # The latency is measured once the user's turn has ended, at the bot's first audio.
    assert events.index(latency) == 5


# -- Chromium and the offline agent ---------------------------------------------------------

GRAPH = load_graph(DEFAULT_GRAPH)
GREETING = GRAPH.nodes["welcome"].reply.format_map(GRAPH.slots)
QUESTION = "please tell me the weather"
ANSWER = GRAPH.nodes["weather"].reply.format_map(GRAPH.slots)


def microphone_wav(path: Path) -> Path:
    """What the fake microphone plays: a line's noise, the question once the greeting is
    over (about 4 s of it), and a long silence while the agent answers."""
    pcm = with_noise(np.concatenate([silence(7.0), say(QUESTION), silence(20.0)]))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm.tobytes())
    return path


def talk(server: WebSocketServer, mode: str, tmp_path: Path) -> np.ndarray:
    """Open *server*'s playground in Chromium, talking over *mode*, ask the question and
    check the answer is shown with its latency; keep a screenshot. Returns the answer's
    audio as the browser heard it."""
    with Chromium(microphone=microphone_wav(tmp_path / "question.wav")) as browser:
        page = browser.open(f"http://127.0.0.1:{server.port}/?autostart={mode}")
        shown = page.poll("playground.lines")
        try:
            assert wait_until(lambda: page.evaluate("window.playground?.state") == "connected", 30)
            answered = lambda: any(line["text"] == ANSWER and line["final"] for line in shown())  # noqa: E731
            assert wait_until(answered, 90)
        finally:
            page.screenshot(ARTIFACTS / f"playground-{mode}.png")
            print(page.report())
        lines = [(line["role"], line["text"]) for line in page.evaluate("playground.lines")]
        assert lines == [("bot", GREETING), ("user", QUESTION), ("bot", ANSWER)]
        latencies = page.evaluate("playground.latencies")
        assert len(latencies) == 1 and latencies[0] > 0
        assert "turn 1:" in page.evaluate("document.getElementById('latencies').textContent")
        if mode == "ws":  # the page played both replies through: it echoed their marks
            marks = lambda: sum(session.marks_played for session in server.sessions)  # noqa: E731
            assert wait_until(lambda: marks() == 2, 10)

        # What the browser heard of the answer says the answer.
        start = page.evaluate("playground.botTurns")[-1]
        pcm = np.frombuffer(base64.b64decode(page.evaluate("playground.receivedAudio()")), np.int16)
        page.evaluate("playground.stop()")
        assert page.errors == []
    heard = pcm[start:]
    assert len(heard) > 16000  # over a second of it
    return heard


def check_heard(server: WebSocketServer, heard: np.ndarray) -> None:
    slots = {**GRAPH.slots, "time_of_day": "noon"}
    replies = Grammar.from_phrases(
        [node.reply.format_map(slots) for node in GRAPH.nodes.values() if node.reply]
        + [GRAPH.fallback]
    )
    workers = SphinxPool.shared(server.runtime)
    assert workers.transcribe(with_noise(heard).tobytes(), replies).text == " ".join(words(ANSWER))


def test_chromium_talks_to_the_offline_agent_over_websocket(serve, tmp_path):
    need_chromium()
    need_worker_python()
    server = serve(offline_agent_pipeline())
    server.pages.update(status_pages(server, server.runtime))
    heard = talk(server, "ws", tmp_path)
    check_heard(server, heard)
    png = (ARTIFACTS / "playground-ws.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    # The turn is on the status page's latency chart.
    with Chromium() as browser:
        page = browser.open(f"http://127.0.0.1:{server.port}/status")
        dots = page.poll("document.querySelectorAll('#chart circle').length")
        assert wait_until(lambda: dots() == 1, 10)
        page.screenshot(ARTIFACTS / "status.png")
        assert page.errors == []


def test_chromium_talks_to_the_offline_agent_over_webrtc(serve, tmp_path):
    need_chromium()
    need_worker_python()
    gateway = WebRTCGateway(media_path="/playground")
    if not gateway.available:
        missing("no python with aiortc for the WebRTC gateway", "ci/venvs.sh installs it")
    server = serve(offline_agent_pipeline(), pages=gateway.pages(), sockets=gateway.sockets())
    gateway.start(f"ws://127.0.0.1:{server.port}")
    try:
        heard = talk(server, "webrtc", tmp_path)
    finally:
        gateway.stop()
    check_heard(server, heard)
    png = (ARTIFACTS / "playground-webrtc.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_firefox_streams_the_microphone_and_plays_what_comes_back(serve):
    """A smoke check in Firefox: its fake microphone's 1 kHz tone reaches the server still
    at 1 kHz, so the page resampled it right from the context's own rate; the echo plays
    (the page echoes the mark sent after it); the conversation's events show."""
    server = serve(SCRIPTED_ECHO)
    with Firefox() as browser:
        page = browser.open(f"http://127.0.0.1:{server.port}/?autostart=ws")
        try:
            assert wait_until(lambda: page.evaluate("window.playground?.state") == "connected", 30)
            assert wait_until(page.poll("playground.receivedSamples > 32000"), 30)
            assert wait_until(lambda: server.sessions[0].marks_played == 1)
        finally:
            page.screenshot(ARTIFACTS / "playground-firefox.png")
            print(page.report())
        lines = [(line["role"], line["text"]) for line in page.evaluate("playground.lines")]
        assert lines == [("user", "what time is it"), ("bot", "It is noon.")]
        pcm = np.frombuffer(base64.b64decode(page.evaluate("playground.receivedAudio()")), np.int16)
        page.evaluate("playground.stop()")
        assert page.errors == []
    spectrum = np.abs(np.fft.rfft(pcm[-16000:] * np.hanning(16000)))
    assert abs(np.argmax(spectrum) - 1000) <= 5  # Hz: one second at 16 kHz, 1 Hz a bin
