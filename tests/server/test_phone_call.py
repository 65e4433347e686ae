"""A phone call to the default agent, as Twilio makes it: `flowcat-ft serve`'s configuration
with no file, the TwiML webhook, then a Media Streams WebSocket carrying 8 kHz µ-law at real
time, a question the agent answers, and a "goodbye" that ends the call. The pipeline works at
the carrier's 8 kHz (no resampling on the way in or out); what the caller heard is
transcribed back."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from carrier_messages import twilio_media, twilio_start
from helpers import wait_until
from services.offline_speech import need_worker_python, say, silence, with_noise
from websockets.sync.client import connect

from flowcat_ft.audio.g711 import ulaw_decode, ulaw_encode
from flowcat_ft.audio.resample import resample
from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.config import load_config
from flowcat_ft.services.offline import DEFAULT_GRAPH, SphinxPool, load_graph
from flowcat_ft.services.offline.sphinx_pool import Grammar
from flowcat_ft.services.offline.sphinx_worker import words

pytestmark = pytest.mark.xdist_group("realtime")  # paced at real time: one at a time

RATE = 8000
FRAME = 160  # 20 ms
GRAPH = load_graph(DEFAULT_GRAPH)
ANSWER = GRAPH.nodes["weather"].reply.format_map(GRAPH.slots)


def ulaw(pcm: np.ndarray) -> bytes:
    out = np.empty(len(pcm), np.uint8)
    ulaw_encode(pcm, out)
    return out.tobytes()


def test_a_twilio_call_to_the_default_agent_at_8_khz(tmp_path):
    need_worker_python()
    path = tmp_path / "agent.yaml"
    path.write_text("server: {host: 127.0.0.1, port: 0, webrtc: false}\n")
    server = AgentServer(load_config(path)).start()
    try:
        caller = with_noise(
            np.concatenate(
                [
                    silence(6.0, RATE),  # the greeting
                    say("please tell me the weather", RATE),
                    silence(7.0, RATE),  # the answer
                    say("goodbye", RATE),
                    silence(6.0, RATE),
                ]
            )
        )
        question_at = 6.0
        heard: list[tuple[float, bytes]] = []  # (seconds into the call, µ-law)
        events: list[str] = []
        answer_url = f"http://127.0.0.1:{server.port}/twilio/answer?CallSid=CA1"
        with urllib.request.urlopen(answer_url, timeout=10) as reply:  # Twilio asks first
            stream = ET.fromstring(reply.read()).find("./Connect/Stream").get("url")
        with connect(stream) as ws:
            ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            ws.send(twilio_start(call="CA1"))
            start = time.monotonic()

            def listen() -> None:
                for message in ws:
                    event = json.loads(message)
                    events.append(event["event"])
                    if event["event"] == "media":
                        payload = base64.b64decode(event["media"]["payload"])
                        heard.append((time.monotonic() - start, payload))

            listener = threading.Thread(target=listen)
            listener.start()
            for n in range(len(caller) // FRAME):  # paced like a phone: a frame each 20 ms
                time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
                try:
                    ws.send(twilio_media(ulaw(caller[n * FRAME : (n + 1) * FRAME]), n))
                except Exception:
                    break  # the agent hung up
            listener.join(10)
        assert not listener.is_alive(), "the agent did not end the call after goodbye"
        assert ws.close_code == 1000
        assert "clear" not in events  # nobody spoke over the agent
        # What the caller heard after the question says the answer.
        answer = b"".join(audio for at, audio in heard if question_at < at < question_at + 8)
        pcm = np.empty(len(answer), np.int16)
        ulaw_decode(np.frombuffer(answer, np.uint8), pcm)
        slots = {**GRAPH.slots, "time_of_day": "noon"}
        replies = Grammar.from_phrases(
            [node.reply.format_map(slots) for node in GRAPH.nodes.values() if node.reply]
            + [GRAPH.fallback]
        )
        workers = SphinxPool.shared(server.runtime)
        heard_16k = with_noise(resample(pcm, RATE, 16000))
        assert workers.transcribe(heard_16k.tobytes(), replies).text == " ".join(words(ANSWER))
        assert wait_until(lambda: server.runtime.pool.in_use == 0)
    finally:
        server.stop(grace=0)
