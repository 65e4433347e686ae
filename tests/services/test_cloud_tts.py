"""TTS services against local servers speaking Cartesia's and ElevenLabs' WebSocket
formats and OpenAI's HTTP speech format, through real pipelines: audio in slabs at the
pipeline's rate as it arrives, words placed before their audio, interruptions that cancel
the provider's work and drop the audio, and bad input."""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from fake_providers import (
    FakeCartesia,
    FakeElevenLabs,
    Recorder,
    errors,
    pcm_handler,
    status_handler,
    tone,
)
from helpers import reference_cycles, wait_until

from flowcat_ft import (
    Direction,
    EndFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    Pipeline,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from flowcat_ft.services.llm.frames import TTSSpeakFrame
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.tts import CartesiaTTSService, ElevenLabsTTSService, OpenAITTSService
from flowcat_ft.services.tts.base import AudioChunker, SentenceSplitter
from flowcat_ft.services.tts.cartesia import parse_message as cartesia_message
from flowcat_ft.services.tts.elevenlabs import alignment_words

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
SENTENCES = ["Hello there, how are you today?", "I hope all is well."]
WORDS = " ".join(SENTENCES).split()


def respond(call, sentences=SENTENCES):
    """Push one LLM response, token by token."""
    call.push(LLMFullResponseStartFrame())
    for i, sentence in enumerate(sentences):
        if i:
            call.push(LLMTextFrame(" "))
        for token in sentence.replace(" ", "  ").split(" "):
            call.push(LLMTextFrame(token or " "))
    call.push(LLMFullResponseEndFrame())


def audio_secs(out: Recorder) -> float:
    return sum(f.num_frames / f.sample_rate for f in out.of(TTSAudioRawFrame))


def kinds(out: Recorder) -> list[type]:
    return [type(f) for f, d in list(out.frames) if d is Direction.DOWNSTREAM]


# -- Sans-I/O pieces ------------------------------------------------------------------------------


def test_sentences_words_and_audio_chunks():
    splitter = SentenceSplitter()
    pieces = []
    for token in ["Hi", " there", ".", " How", " are", " you", "?"]:
        pieces += splitter.add(token)
    assert pieces == ["Hi there."]  # "?" needs the space after it to be sure
    assert splitter.add(" Fine") == ["How are you?"]
    assert splitter.add(" thanks") == [] and splitter.flush() == "Fine thanks"
    chunker = AudioChunker(24000, 16000, 1920)
    chunks = chunker.feed(tone(0.5, 24000)[:-1])  # an odd byte waits for its pair
    assert all(len(c) <= 1920 for c in chunks) and chunker.samples_in == 11999
    assert sum(len(c) for c in chunks) in range(7990, 8001)
    assert alignment_words(
        {"chars": list("Hi you "), "charStartTimesMs": [0, 50, 100, 150, 200, 250, 300]}
    ) == [
        (0.0, "Hi"),
        (0.15, "you"),
    ]
    assert cartesia_message('{"type": "done", "context_id": "c"}').context_id == "c"


# -- Cartesia ---------------------------------------------------------------------------------


@pytest.fixture
def cartesia():
    server = FakeCartesia(word_secs=0.1, chunk_secs=0.05, delay=0.01)
    yield server
    server.close()


def cartesia_tts(server, **kwargs):
    options = {"retry": FAST, "read_timeout": 0.4, **kwargs}
    return lambda: CartesiaTTSService(
        voice_id="voice-1", url=server.url, api_key="ck-test-5678", sample_rate=24000, **options
    )


def test_cartesia_audio_arrives_in_slabs_with_each_word_before_its_audio(runtime, cartesia):
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call)
    assert wait_until(lambda: out.of(TTSAudioRawFrame))
    assert cartesia.chunks_sent < len(WORDS) * 2  # audio flows before synthesis is done
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    sequence = kinds(out)
    assert sequence.index(TTSStartedFrame) < sequence.index(TTSAudioRawFrame)
    assert sequence[-2:] == [TTSStoppedFrame, LLMFullResponseEndFrame]  # after the audio
    frames = out.of(TTSAudioRawFrame)
    assert {f.sample_rate for f in frames} == {16000}  # resampled from the provider's 24 kHz
    assert all(f.num_frames * 2 <= runtime.pool.slab_bytes for f in frames)
    assert audio_secs(out) == pytest.approx(len(WORDS) * 0.1, abs=0.02)
    assert [f.text for f in out.of(TTSTextFrame)] == WORDS
    # Each word comes just before the audio that starts it (0.1 s of audio per word).
    position = 0.0
    for frame, _ in out.frames:
        if isinstance(frame, TTSAudioRawFrame):
            position += frame.num_frames / frame.sample_rate
        elif isinstance(frame, TTSTextFrame):
            assert WORDS.index(frame.text) * 0.1 >= position - 1e-6
    requests = cartesia.requests
    assert [r["transcript"] for r in requests] == [s + " " for s in SENTENCES] + [""]
    assert [r["continue"] for r in requests] == [True, True, False]
    assert len({r["context_id"] for r in requests}) == 1
    assert requests[0]["output_format"] == {
        "container": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": 24000,
    }
    assert cartesia.handshakes[0]["x-api-key"] == "ck-test-5678"
    call.close()


def test_cartesia_interruption_cancels_the_context_and_drops_the_audio(runtime, cartesia):
    cartesia.delay = 0.05
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call, ["one two three four five six seven eight nine ten eleven twelve."])
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= 2)
    call.interrupt()
    assert cartesia.wait_for(lambda: len(cartesia.cancelled) == 1)
    assert cartesia.cancelled[0] == cartesia.requests[0]["context_id"]
    respond(call, ["Sorry, go on."])  # the next turn is a new context on the same connection
    assert wait_until(lambda: len(out.of(LLMFullResponseEndFrame)) == 1)
    assert cartesia.connections == 1 and not errors(out)
    # The old context's messages, had any got through, came before the new one's on the
    # one connection: after the cut, only the new reply is heard.
    frames = [f for f, _ in out.frames]
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    after = [f for f in frames[cut:] if isinstance(f, TTSAudioRawFrame | TTSTextFrame)]
    assert [f.text for f in after if isinstance(f, TTSTextFrame)] == ["Sorry,", "go", "on."]
    heard = sum(f.num_frames / f.sample_rate for f in after if isinstance(f, TTSAudioRawFrame))
    assert heard == pytest.approx(3 * cartesia.word_secs)
    assert audio_secs(out) - heard < 1.0  # the first reply was cut short
    del frames, after
    call.close()
    out.frames.clear()
    gc.collect()
    assert wait_until(lambda: runtime.pool.in_use == 0)  # every slab came back


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("garbage", "not JSON"),
        ("close", "connection"),
        ("stall", "no audio from the TTS"),
        ("error", "voice not found"),
    ],
)
def test_cartesia_bad_input_is_an_error_and_the_next_turn_works(runtime, cartesia, mode, expected):
    cartesia.mode = mode
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call, ["Hello there."])
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    [error] = errors(out)
    assert expected in error.error and not error.fatal
    if out.of(TTSStartedFrame):
        assert out.of(TTSStoppedFrame)
    cartesia.mode = "normal"
    respond(call, ["Still here."])
    assert wait_until(lambda: len(out.of(LLMFullResponseEndFrame)) == 2)
    assert [f.text for f in out.of(TTSTextFrame)][-2:] == ["Still", "here."]
    call.close()


def test_cartesia_retries_a_refused_handshake(runtime, cartesia):
    cartesia.reject.append((429, {"Retry-After": "0"}))
    cartesia.reject.append((503, {}))
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call, ["Third time lucky."])
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    assert not errors(out) and len(cartesia.handshakes) == 3
    call.close()


def test_a_tts_speak_frame_is_its_own_utterance(runtime, cartesia):
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    call.push(TTSSpeakFrame("Please hold."))
    assert wait_until(lambda: out.of(TTSStoppedFrame))
    assert [f.text for f in out.of(TTSTextFrame)] == ["Please", "hold."]
    call.close()


def test_an_end_waits_for_the_reply_being_synthesised(runtime, cartesia):
    cartesia.delay = 0.03  # 24 chunks: the reply is still streaming when the call ends
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call)
    call.end()
    assert call.wait(10) and call.end_reason == "ended"
    assert audio_secs(out) == pytest.approx(len(WORDS) * 0.1, abs=0.02)  # none of it cut
    assert [f.text for f in out.of(TTSTextFrame)] == WORDS
    assert kinds(out)[-3:] == [TTSStoppedFrame, LLMFullResponseEndFrame, EndFrame]
    assert not errors(out) and not cartesia.cancelled


def test_an_end_speaks_text_that_came_without_its_response_end(runtime, cartesia):
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    call.push(LLMFullResponseStartFrame())
    for token in ["Hello", " there.", " Last", " words"]:  # no end frame, no full stop
        call.push(LLMTextFrame(token))
    call.end()
    assert call.wait(10) and call.end_reason == "ended"
    assert [f.text for f in out.of(TTSTextFrame)] == ["Hello", "there.", "Last", "words"]
    assert kinds(out)[-2:] == [TTSStoppedFrame, EndFrame]


def test_a_barge_in_while_the_call_ends_cuts_the_reply_and_ends_it(runtime, cartesia):
    cartesia.delay = 0.05
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call)
    call.end()
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= 2)
    call.interrupt()
    assert call.wait(5) and call.end_reason == "ended"
    assert audio_secs(out) < len(WORDS) * 0.1
    frames = [f for f, _ in out.frames]
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    assert not [f for f in frames[cut:] if isinstance(f, TTSAudioRawFrame)]
    assert isinstance(frames[-1], EndFrame)


def test_a_cancel_drops_the_reply_at_once(runtime, cartesia):
    cartesia.delay = 0.05
    out = Recorder()
    call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
    respond(call)
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= 2)
    call.cancel("hung up")
    assert call.wait(5) and call.end_reason == "hung up"
    assert audio_secs(out) < len(WORDS) * 0.1 and not out.of(EndFrame)


def test_an_end_gives_a_stalled_reply_end_timeout_seconds(runtime, cartesia):
    cartesia.mode = "stall"  # the first chunk, then nothing, for an hour

    def tts():
        service = cartesia_tts(cartesia, read_timeout=3600)()
        service.end_timeout = 0.2
        return service

    out = Recorder()
    call = runtime.open_call(Pipeline([tts]), out)
    respond(call, ["Hello there."])
    assert wait_until(lambda: out.of(TTSAudioRawFrame))
    call.end()
    assert call.wait(5) and call.end_reason == "ended"
    [error] = errors(out)
    assert "still running 0.2 s after the end" in error.error and not error.fatal


# -- ElevenLabs -----------------------------------------------------------------------------------


@pytest.fixture
def elevenlabs():
    server = FakeElevenLabs(word_secs=0.1, delay=0.02)
    yield server
    server.close()


def elevenlabs_tts(server, **kwargs):
    return lambda: ElevenLabsTTSService(
        voice_id="v 1",
        base_url=server.url,
        api_key="xi-test-999",
        retry=FAST,
        read_timeout=0.5,
        **kwargs,
    )


def test_elevenlabs_streams_audio_with_aligned_words(runtime, elevenlabs):
    out = Recorder()
    call = runtime.open_call(Pipeline([elevenlabs_tts(elevenlabs)]), out)
    respond(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    assert [f.text for f in out.of(TTSTextFrame)] == WORDS
    assert audio_secs(out) == pytest.approx(len(WORDS) * 0.1, abs=0.01)
    handshake = elevenlabs.handshakes[0]
    assert handshake["path"].startswith("/v1/text-to-speech/v%201/stream-input?")
    assert "output_format=pcm_16000" in handshake["path"] and "model_id=" in handshake["path"]
    assert handshake["xi-api-key"] == "xi-test-999"
    first, *texts_sent, last = elevenlabs.messages
    assert first["text"] == " " and "voice_settings" in first
    assert [m["text"] for m in texts_sent] == [s + " " for s in SENTENCES]
    assert last == {"text": ""}
    assert elevenlabs.finals_sent == 1 and elevenlabs.cut_before_final == 0
    call.close()


def test_elevenlabs_interruption_closes_the_connection(runtime, elevenlabs):
    elevenlabs.delay = 0.05
    out = Recorder()
    call = runtime.open_call(Pipeline([elevenlabs_tts(elevenlabs)]), out)
    respond(call, ["one two three four five six seven eight nine ten."])
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= 2)
    call.interrupt()
    assert elevenlabs.wait_for(lambda: elevenlabs.cut_before_final == 1)
    assert wait_until(lambda: out.of(InterruptionFrame))  # it may still be on its way out
    frames = [f for f, _ in out.frames]
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    assert not [f for f in frames[cut:] if isinstance(f, TTSAudioRawFrame)]
    assert not errors(out)
    call.close()


@pytest.mark.parametrize(("mode", "expected"), [("error", "quota"), ("garbage", "not JSON")])
def test_elevenlabs_errors_are_reported(runtime, elevenlabs, mode, expected):
    elevenlabs.mode = mode
    out = Recorder()
    call = runtime.open_call(Pipeline([elevenlabs_tts(elevenlabs)]), out)
    respond(call, ["Hello."])
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    [error] = errors(out)
    assert expected in error.error
    call.close()


# -- OpenAI HTTP TTS -------------------------------------------------------------------------------


def openai_tts(http, **kwargs):
    return lambda: OpenAITTSService(
        base_url=http.url + "/v1",
        api_key="sk-tts-4321",
        retry=FAST,
        timeouts=Timeouts(connect=1, head=1, read=0.3),
        **kwargs,
    )


def test_openai_tts_streams_each_sentence(runtime, http):
    http.routes["/v1/audio/speech"] = pcm_handler(tone(0.3, 24000), chunk_bytes=2400, delay=0.01)
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_tts(http)]), out)
    respond(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    assert [r.json()["input"] for r in http.requests] == SENTENCES
    body = http.requests[0].json()
    assert body["response_format"] == "pcm" and body["voice"] == "alloy"
    assert http.requests[0].headers["authorization"] == "Bearer sk-tts-4321"
    assert audio_secs(out) == pytest.approx(0.6, abs=0.02)
    sequence = [f for f, _ in out.frames if isinstance(f, TTSTextFrame | TTSAudioRawFrame)]
    assert isinstance(sequence[0], TTSTextFrame) and sequence[0].text == SENTENCES[0]
    second = next(i for i, f in enumerate(sequence) if getattr(f, "text", "") == SENTENCES[1])
    before = sum(f.num_frames for f in sequence[:second] if isinstance(f, TTSAudioRawFrame))
    assert before == pytest.approx(4800, abs=10)  # 0.3 s at 16 kHz: right after sentence one
    assert http.connections == 1  # the sentences share a kept-alive connection
    call.close()


def test_openai_tts_stall_and_429(runtime, http):
    http.routes["/v1/audio/speech"] = [
        status_handler(429, headers={"Retry-After": "0"}),
        pcm_handler(tone(0.3, 24000), chunk_bytes=2400, stall_after=2),
    ]
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_tts(http)]), out)
    respond(call, ["Hello."])
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    [error] = errors(out)
    assert "HTTPTimeoutError" in error.error
    assert len(http.requests) == 2 and out.of(TTSAudioRawFrame)  # the 429 was retried
    assert http.wait_for(lambda: http.disconnects == 1)
    call.close()


def test_requests_carry_what_the_docs_ask(cartesia):
    from flowcat_ft.services.tts.cartesia import cancel_request, generation_request

    request = json.loads(
        generation_request("ctx", "Hi ", model="m", voice_id="v", sample_rate=16000, continue_=True)
    )
    assert request["voice"] == {"mode": "id", "id": "v"} and request["add_timestamps"] is True
    assert json.loads(cancel_request("ctx")) == {"context_id": "ctx", "cancel": True}


async def background_tasks() -> list[asyncio.Task]:
    """The services' background tasks still running on this loop."""
    return [t for t in asyncio.all_tasks() if "run_background" in t.get_coro().__qualname__]


def test_a_cancelled_reply_leaves_no_cycle_through_its_background_task(runtime, cartesia):
    """A background task cancelled with its call keeps its CancelledError, whose traceback
    holds the task's frames: none of them may still refer to the task."""
    cartesia.delay = 0.05
    gc.set_debug(gc.DEBUG_SAVEALL)  # whoever collects meanwhile, what it finds is kept
    try:
        for _ in range(3):
            out = Recorder()
            call = runtime.open_call(Pipeline([cartesia_tts(cartesia)]), out)
            respond(call)
            assert wait_until(lambda out=out: out.of(TTSAudioRawFrame))
            call.cancel("hung up")
            assert call.wait(5)
        loop = call.processors[0].event_loop
        del call, out
        assert wait_until(lambda: not loop.submit(background_tasks()).result(5))
        gc.collect()
        cycles = reference_cycles(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    tasks = [
        task
        for cycle in cycles
        for task in cycle
        if isinstance(task, asyncio.Task) and "run_background" in task.get_coro().__qualname__
    ]
    assert tasks == []
