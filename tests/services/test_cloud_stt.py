"""STT services against local servers speaking Deepgram's live WebSocket format and
OpenAI's HTTP transcription format, through real pipelines: interim and final transcripts,
the protocol's control messages, reconnects, and bad input."""

from __future__ import annotations

import email.parser
import email.policy
import json
import struct
import time

import pytest
from fake_providers import FakeDeepgram, Recorder, errors, status_handler, tone
from helpers import wait_until

from flowcat_ft import (
    Direction,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    Pipeline,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.aggregators import LLMContextAggregatorPair
from flowcat_ft.services.llm.frames import LLMContextFrame, UtteranceEndFrame
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.stt import DeepgramSTTService, OpenAISTTService
from flowcat_ft.services.stt.deepgram import Ignored, UtteranceEnd, parse_message
from flowcat_ft.services.stt.openai import multipart_body, wav_bytes

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
FRAME = 640  # 20 ms at 16 kHz


def push_speech(call, seconds: float) -> None:
    audio = tone(seconds, 16000)
    for i in range(0, len(audio), FRAME):
        call.push_audio(audio[i : i + FRAME], 16000)


def finals(out: Recorder) -> list[str]:
    return [f.text for f in out.of(TranscriptionFrame) if type(f) is TranscriptionFrame]


def test_deepgram_messages_parse_per_the_docs():
    results = {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.2,
        "start": 0.5,
        "is_final": True,
        "speech_final": False,
        "channel": {
            "alternatives": [
                {"transcript": "hi", "confidence": 0.9, "words": [], "languages": ["en"]}
            ]
        },
    }
    event = parse_message(json.dumps(results))
    assert (event.text, event.is_final, event.speech_final, event.language) == (
        "hi",
        True,
        False,
        "en",
    )
    assert parse_message('{"type": "SpeechStarted", "timestamp": 1.0}') == Ignored("SpeechStarted")
    utterance_end = {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.395}
    assert parse_message(json.dumps(utterance_end)) == UtteranceEnd(2.395)


# -- Deepgram -------------------------------------------------------------------------------


@pytest.fixture
def deepgram():
    server = FakeDeepgram(["turn", "on", "the", "lights"], final_after=0.3)
    yield server
    server.close()


def deepgram_stt(server, **kwargs):
    options = {"retry": FAST, **kwargs}
    return lambda: DeepgramSTTService(
        url=server.url + "/v1/listen", api_key="dg-key-777", **options
    )


def test_deepgram_interim_then_final_transcripts(runtime, deepgram):
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram)]), out)
    assert deepgram.wait_for(lambda: deepgram.connections == 1)
    push_speech(call, 0.5)
    assert wait_until(lambda: finals(out))
    interims = [f.text for f in out.of(InterimTranscriptionFrame)]
    assert interims[:3] == ["turn", "turn on", "turn on the"]
    assert finals(out) == ["turn on the lights"]
    frames = [f for f, _ in out.frames]
    assert frames.index(out.of(InterimTranscriptionFrame)[0]) < frames.index(
        out.of(TranscriptionFrame)[-1]
    )
    # The audio goes on downstream too (the final may overtake its last frames).
    assert wait_until(lambda: len(out.of(InputAudioRawFrame)) == 25)
    assert deepgram.wait_for(lambda: deepgram.audio_bytes == 25 * FRAME)
    handshake = deepgram.handshakes[0]
    assert handshake["authorization"] == "Token dg-key-777"
    for option in (
        "encoding=linear16",
        "sample_rate=16000",
        "interim_results=true",
        "endpointing=300",
        "channels=1",
    ):
        assert option in handshake["path"]
    call.close()
    assert deepgram.wait_for(lambda: "CloseStream" in deepgram.controls)


def test_deepgram_keepalive_finalize_and_an_interruption_that_does_not_stop_it(runtime, deepgram):
    deepgram.final_after = 10.0  # the final comes on Finalize, after the end of speech
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram, keepalive_secs=0.2)]), out)
    assert deepgram.wait_for(lambda: "KeepAlive" in deepgram.controls, timeout=2)
    push_speech(call, 0.1)
    call.interrupt()  # the caller barging in must not stop the listening
    push_speech(call, 0.3)
    call.push(UserStoppedSpeakingFrame())
    assert deepgram.wait_for(lambda: "Finalize" in deepgram.controls)
    assert wait_until(lambda: finals(out) == ["turn on the lights"])
    service = call.processors[0]
    assert service.ttfb.count == 1  # from the end of speech to the final transcript
    call.close()


def test_deepgram_sends_audio_in_chunks_and_what_is_held_back_when_the_user_stops(
    runtime, deepgram
):
    deepgram.final_after = 10.0  # no final of its own: only the messages matter here
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram, chunk_ms=100)]), out)
    assert deepgram.wait_for(lambda: deepgram.connections == 1)
    push_speech(call, 0.5)  # 25 frames of 20 ms: five 100 ms messages
    push_speech(call, 0.06)  # 3 frames, held back
    assert deepgram.wait_for(lambda: len(deepgram.received) == 5)
    call.push(UserStoppedSpeakingFrame())
    assert deepgram.wait_for(lambda: "Finalize" in deepgram.received)
    assert deepgram.received == [5 * FRAME] * 5 + [3 * FRAME, "Finalize"]
    call.close()


def test_deepgram_without_audio_passthrough_keeps_the_callers_audio(runtime, deepgram):
    out = Recorder()
    stt = deepgram_stt(deepgram, audio_passthrough=False)
    call = runtime.open_call(Pipeline([stt]), out)
    push_speech(call, 0.5)
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: finals(out) == ["turn on the lights"])
    assert deepgram.wait_for(lambda: deepgram.audio_bytes == 25 * FRAME)
    assert out.of(InputAudioRawFrame) == []
    assert UserStoppedSpeakingFrame in [type(f) for f, _ in out.frames]  # the rest goes on
    assert wait_until(lambda: runtime.pool.in_use == 0)  # every slab came back
    call.close()


@pytest.mark.parametrize(("mode", "expected"), [("garbage", "not JSON"), ("error", "bad audio")])
def test_deepgram_bad_messages_are_reported_and_listening_goes_on(
    runtime, deepgram, mode, expected
):
    deepgram.mode = mode
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram)]), out)
    push_speech(call, 0.4)
    assert wait_until(lambda: finals(out))
    [error] = errors(out)
    assert expected in error.error and not error.fatal
    call.close()


def test_deepgram_reconnects_after_the_server_drops_the_connection(runtime, deepgram):
    deepgram.mode = "drop"
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram)]), out)
    push_speech(call, 0.2)
    assert wait_until(lambda: errors(out))
    assert "NET-0000" in errors(out)[0].error
    assert deepgram.wait_for(lambda: deepgram.connections == 2)
    push_speech(call, 0.4)
    assert wait_until(lambda: finals(out) == ["turn on the lights"])
    call.close()


def test_deepgram_retries_a_rate_limited_handshake(runtime, deepgram):
    deepgram.reject.append((429, {"Retry-After": "0"}))
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram)]), out)
    push_speech(call, 0.4)  # waits while the connection opens, then goes
    assert wait_until(lambda: finals(out))
    assert len(deepgram.handshakes) == 2 and not errors(out)
    call.close()


def kinds(out: Recorder) -> list[type]:
    return [type(f) for f, d in list(out.frames) if d is Direction.DOWNSTREAM]


def test_deepgram_speech_final_marks_the_end_of_the_utterance(runtime, deepgram):
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram)]), out)
    push_speech(call, 0.5)
    assert wait_until(lambda: out.of(UtteranceEndFrame))
    assert "utterance_end_ms=1000" in deepgram.handshakes[0]["path"]
    texts = [k for k in kinds(out) if k in (TranscriptionFrame, UtteranceEndFrame)]
    assert texts == [TranscriptionFrame, UtteranceEndFrame]  # right after the final
    call.close()
    assert len(out.of(UtteranceEndFrame)) == 1


def test_deepgram_utterance_end_ends_the_user_turn_without_waiting(runtime, deepgram):
    # Endpointing never fires (say, background noise): the final is not speech_final, and
    # UtteranceEnd follows. The aggregator would wait a minute for more words without it.
    deepgram.utterance_end = True
    pair = LLMContextAggregatorPair(aggregation_timeout=60.0)
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram), pair.user]), out)
    push_speech(call, 0.5)
    assert wait_until(lambda: out.of(LLMContextFrame))
    [ask] = out.of(LLMContextFrame)
    assert ask.context.messages[-1] == {"role": "user", "content": "turn on the lights"}
    assert len(out.of(UtteranceEndFrame)) == 1
    call.close()


def test_deepgram_that_goes_silent_is_reported_and_reconnected(runtime, deepgram):
    deepgram.mode = "silent"
    out = Recorder()
    stt = deepgram_stt(deepgram, stall_timeout=0.3, keepalive_secs=60)
    call = runtime.open_call(Pipeline([stt]), out)
    push_speech(call, 0.5)
    assert wait_until(lambda: errors(out))
    [error] = errors(out)
    assert "no reply from the STT for 0.3 s" in error.error and not error.fatal
    assert deepgram.wait_for(lambda: deepgram.connections == 2)
    deepgram.mode = "normal"
    push_speech(call, 0.5)
    assert wait_until(lambda: finals(out) == ["turn on the lights"])
    assert len(errors(out)) == 1
    call.close()
    assert call.end_reason == "ended"


def test_deepgram_that_stays_silent_ends_the_call_rather_than_hang(runtime, deepgram):
    deepgram.mode = "silent"
    out = Recorder()
    stt = deepgram_stt(deepgram, stall_timeout=0.2, max_reconnects=1, keepalive_secs=60)
    call = runtime.open_call(Pipeline([stt]), out)
    push_speech(call, 0.3)
    assert deepgram.wait_for(lambda: deepgram.connections == 2)
    push_speech(call, 0.3)
    assert call.wait(5)
    *stalls, last = errors(out)
    assert len(stalls) == 2  # the first connection, then the one reopened
    assert all("no reply" in e.error and not e.fatal for e in stalls)
    assert "failed 2 times in a row; giving up" in last.error and last.fatal
    assert call.end_reason.startswith("fatal error")
    assert not finals(out)


def test_deepgram_that_cannot_be_reached_ends_the_call(runtime, deepgram):
    deepgram.reject.extend([(503, {})] * 3)  # every attempt FAST allows
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(deepgram)]), out)
    assert call.wait(5)
    [error] = errors(out)
    assert "could not connect to the STT" in error.error and "503" in error.error
    assert error.fatal and len(deepgram.handshakes) == 3


# -- OpenAI transcription ---------------------------------------------------------------------


def transcription(text: str):
    async def handle(request, reply):
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
        request.form = {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()
        }
        await reply.json(200, {"text": text})

    return handle


def openai_stt(http, **kwargs):
    return lambda: OpenAISTTService(
        base_url=http.url + "/v1",
        api_key="sk-stt-1",
        model="whisper-1",
        language="en",
        retry=FAST,
        timeouts=Timeouts(1, 1, 1),
        **kwargs,
    )


def test_openai_transcribes_each_turn_as_a_wav_upload(runtime, http):
    http.routes["/v1/audio/transcriptions"] = transcription(" what time is it ")
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_stt(http)]), out)
    push_speech(call, 0.5)  # before the turn: only the last 0.3 s is kept as pre-roll
    call.push(UserStartedSpeakingFrame())
    push_speech(call, 1.0)
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: finals(out) == ["what time is it"])
    request = http.requests[0]
    assert request.headers["authorization"] == "Bearer sk-stt-1"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    form = request.form
    assert form["model"] == b"whisper-1" and form["response_format"] == b"json"
    assert form["language"] == b"en"
    wav = form["file"]
    riff, _, wave, fmt, _, pcm, channels, rate, _, _, bits = struct.unpack(
        "<4sI4s4sIHHIIHH", wav[:36]
    )
    assert (riff, wave, fmt, pcm, channels, rate, bits) == (
        b"RIFF",
        b"WAVE",
        b"fmt ",
        1,
        1,
        16000,
        16,
    )
    seconds = (len(wav) - 44) / 32000
    assert seconds == pytest.approx(1.3, abs=0.03)  # the turn and its pre-roll
    call.close()


def test_openai_transcription_errors_are_reported_and_the_next_turn_works(runtime, http):
    http.routes["/v1/audio/transcriptions"] = [
        status_handler(400, {"error": {"message": "audio too short"}}),
        transcription("hello"),
    ]
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_stt(http)]), out)
    for _ in range(2):
        call.push(UserStartedSpeakingFrame())
        push_speech(call, 0.3)
        call.push(UserStoppedSpeakingFrame())
        time.sleep(0.1)
    assert wait_until(lambda: finals(out) == ["hello"])
    [error] = errors(out)
    assert "audio too short" in error.error and "400" in error.error
    call.close()


def test_multipart_and_wav_are_well_formed():
    content_type, body = multipart_body(
        {"model": "m"}, [("file", "a.wav", "audio/wav", b"RIFF")], boundary="XyZ"
    )
    assert content_type == "multipart/form-data; boundary=XyZ"
    assert body == (
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF\r\n--XyZ--\r\n"
    )
    assert len(wav_bytes(b"\x00\x00" * 10, 8000)) == 44 + 20
