"""PocketSphinx speech to text: the worker's Sans-I/O protocol; the pool of worker
processes (exact words with a grammar, utterances heard as they are streamed, spread by
load, a SIGKILLed worker failing only its own utterances and coming back, a clear error
when it cannot start); and the SphinxSTT stage on VAD turns, with an error frame for the
utterances a dead worker took with it, the calls going on, and no process left once the
runtime stops."""

from __future__ import annotations

import os
import signal
import stat
import sys
import sysconfig

import numpy as np
import pytest
from helpers import wait_until
from offline_speech import need_worker_python, say, silence, with_noise

from flowcat_ft import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    Pipeline,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.loops import EventLoopThread
from flowcat_ft.services.offline import SphinxSTT, sphinx_pool
from flowcat_ft.services.offline.sphinx_pool import (
    Grammar,
    SphinxPool,
    SphinxWorker,
    SphinxWorkerError,
    find_worker_python,
)
from flowcat_ft.services.offline.sphinx_worker import (
    PREFIX,
    MessageParser,
    ProtocolError,
    jsgf,
    pack,
    words,
)

PHRASES = ["what time is it", "please tell me the weather", "goodbye", "what can you do"]

# -- the protocol, without a process -----------------------------------------------------


def test_messages_survive_any_split_of_the_stream():
    stream = pack({"op": "recognize", "id": "a#1"}, b"\x01\x02" * 50) + pack({"op": "ping"})
    for size in (1, 3, 7, len(stream)):
        parser = MessageParser()
        got = []
        for start in range(0, len(stream), size):
            got += parser.feed(stream[start : start + size])
        assert got == [({"op": "recognize", "id": "a#1"}, b"\x01\x02" * 50), ({"op": "ping"}, b"")]
        assert parser.pending == 0


def test_malformed_messages_are_protocol_errors():
    with pytest.raises(ProtocolError, match="not JSON"):
        MessageParser().feed(PREFIX.pack(3, 0) + b"{x}")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        MessageParser().feed(PREFIX.pack(2, 0) + b"[]")
    with pytest.raises(ProtocolError, match="too large"):
        MessageParser().feed(PREFIX.pack(1 << 30, 0))


def test_grammars_are_made_of_normalised_phrases():
    assert words("What's the time, please?") == ["what's", "the", "time", "please"]
    text = jsgf(["Goodbye!", "what time is it", "goodbye"], "my agent")
    assert text.startswith("#JSGF V1.0;\ngrammar my_agent;\n")
    assert "public <utterance> = goodbye\n    | what time is it ;" in text
    grammar = Grammar.from_phrases(["Goodbye!", "what time is it"])
    assert grammar.phrases == ("goodbye", "what time is it")
    assert grammar == Grammar.from_phrases(["what time is it", "goodbye", "goodbye"])
    with pytest.raises(ValueError, match="at least one phrase"):
        Grammar.from_phrases(["?!"])


def test_the_worker_python_comes_from_the_environment_or_the_gil_venv(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWCAT_PYTHON_GIL", "/opt/somewhere/python3.13")
    assert find_worker_python() == "/opt/somewhere/python3.13"
    monkeypatch.delenv("FLOWCAT_PYTHON_GIL")
    monkeypatch.setattr(sphinx_pool, "_REPO", tmp_path)
    with pytest.raises(SphinxWorkerError, match=r"\.venv-gil.*ci/venvs\.sh.*FLOWCAT_PYTHON_GIL"):
        find_worker_python()
    venv = tmp_path / ".venv-gil" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").touch()
    assert find_worker_python() == str(venv / "python")


# -- the worker processes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def loops():
    loops = [EventLoopThread(f"test-sphinx-io-{i}") for i in range(2)]
    yield iter(loops * 100).__next__
    for loop in loops:
        loop.stop()


def start_pool(loops, size=2):
    pool = SphinxPool(loops, size, python=need_worker_python())
    for started in pool.start():
        started.result(60)
    return pool


@pytest.fixture(scope="module")
def pool(loops):
    pool = start_pool(loops)
    yield pool
    pool.close()


def idle(pool):
    """Every utterance over, every piece of audio sent decoded: nothing left counted."""
    return all(w.open_streams == 0 and w.outstanding == 0 for w in pool.workers)


def stream_in_pieces(stream, pcm, seconds=0.1):
    n = round(seconds * 16000)
    for start in range(0, len(pcm), n):
        stream.send(pcm[start : start + n].tobytes())


def test_the_worker_hears_espeak_speech_exactly_with_a_grammar(pool):
    grammar = Grammar.from_phrases(PHRASES)
    for phrase in PHRASES:
        result = pool.transcribe(say(phrase).tobytes(), grammar)
        assert result.text == phrase
        assert result.decode_ms < 2000
    # Over a caller's noise floor too, and with silence around the speech.
    pcm = with_noise(np.concatenate([silence(0.5), say("goodbye"), silence(0.5)]))
    assert pool.transcribe(pcm.tobytes(), grammar).text == "goodbye"
    # What the grammar does not hold is not heard (rather than half a sentence of it).
    assert pool.transcribe(say("I would like some cheese").tobytes(), grammar).text == ""
    # Free dictation answers with something; what, for synthetic speech, is anyone's guess.
    assert isinstance(pool.transcribe(say("hello").tobytes()).text, str)
    assert wait_until(lambda: idle(pool))


def test_an_utterance_streamed_in_pieces_is_heard_as_it_is_spoken(pool):
    heard = []
    stream = pool.open(Grammar.from_phrases(PHRASES), "pieces", heard.append)
    pcm = with_noise(np.concatenate([say("please tell me the weather"), silence(0.3)]))
    stream_in_pieces(stream, pcm)
    assert stream.finish().result(20).text == "please tell me the weather"
    # One answer per piece, on the worker's event loop: the words as they were spoken.
    assert wait_until(lambda: len(heard) == -(-len(pcm) // 1600))
    assert "please tell" in heard and heard[-1] == "please tell me the weather"
    assert heard.index("please tell") < len(heard) - 3
    assert wait_until(lambda: idle(pool))


def test_the_worker_reports_bad_requests_and_goes_on(pool, caplog):
    with pytest.raises(SphinxWorkerError, match="odd number of bytes"):
        pool.transcribe(b"\x00" * 3)
    pids = pool.pids
    # Words missing from the dictionary leave their phrase out, with a warning.
    grammar = Grammar.from_phrases(["goodbye", "hello flowcatter"])
    assert pool.transcribe(say("goodbye").tobytes(), grammar).text == "goodbye"
    assert wait_until(lambda: "flowcatter" in caplog.text and "hello flowcatter" in caplog.text)
    assert pool.pids == pids
    assert wait_until(lambda: idle(pool))


def test_the_pool_spreads_utterances_by_load(pool):
    grammar = Grammar.from_phrases(PHRASES)
    first, second = pool.workers
    # Utterances opened at once take turns while the workers are equally loaded...
    streams = [pool.open(grammar, f"even{i}") for i in range(4)]
    assert [s.worker for s in streams] == [first, second, first, second]
    for stream in streams:
        stream.cancel()
    assert wait_until(lambda: idle(pool))
    # ...but not round robin: 12 s of free dictation, decoded only at its end, weigh on
    # its worker until then, and the next utterances go to the other one.
    dictation = pool.open(None, "long")
    dictation.send(np.tile(with_noise(say("please tell me the weather")), 8).tobytes())
    assert dictation.worker.load() > 12
    other = second if dictation.worker is first else first
    streams = [pool.open(grammar, f"short{i}") for i in range(3)]
    assert [s.worker for s in streams] == [other] * 3
    for stream in streams:
        stream.send(with_noise(say("goodbye")).tobytes())
    assert [s.finish().result(20).text for s in streams] == ["goodbye"] * 3
    assert isinstance(dictation.finish().result(60).text, str)
    assert wait_until(lambda: idle(pool))


def test_a_killed_worker_fails_only_its_utterances_and_is_replaced(loops):
    pool = start_pool(loops)
    try:
        grammar = Grammar.from_phrases(PHRASES)
        first, second = pool.workers
        pid = first.pid
        speech = with_noise(np.concatenate([say("please tell me the weather"), silence(0.3)]))
        heard = [[] for _ in range(4)]
        streams = [pool.open(grammar, f"s{i}", heard[i].append) for i in range(4)]
        for stream in streams:
            stream_in_pieces(stream, speech[:8000])
        # Mid-utterance: each worker has answered every piece sent so far.
        assert wait_until(lambda: all(len(h) == 5 for h in heard), 20)
        os.kill(pid, signal.SIGKILL)
        for stream in streams:
            stream_in_pieces(stream, speech[8000:])
        results = [stream.finish() for stream in streams]
        for stream, result in zip(streams, results, strict=True):
            if stream.worker is first:
                with pytest.raises(SphinxWorkerError, match=f"worker {pid} exited with code -9"):
                    result.result(20)
            else:
                assert result.result(20).text == "please tell me the weather"
        # A new process takes the dead one's place and its share of the utterances.
        assert wait_until(lambda: first.pid not in (None, pid), 30)
        assert first.restarts == 1 and second.restarts == 0
        assert wait_until(lambda: idle(pool))
        again = [pool.open(grammar, f"again{i}") for i in range(2)]
        assert {s.worker for s in again} == {first, second}
        for stream in again:
            stream.send(with_noise(say("goodbye")).tobytes())
        assert [s.finish().result(20).text for s in again] == ["goodbye"] * 2
        assert wait_until(lambda: idle(pool))
    finally:
        pool.close()


def test_a_worker_that_cannot_start_says_why(loops, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pocketsphinx'\" >&2\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    worker = SphinxWorker(loops(), str(fake))
    with pytest.raises(SphinxWorkerError, match=r"did not start.*No module named.*pip install"):
        worker.transcribe(b"")
    assert worker.open_streams == 0
    with pytest.raises(SphinxWorkerError, match="cannot run"):
        SphinxWorker(loops(), str(tmp_path / "missing")).transcribe(b"")


def test_pocketsphinx_stays_out_of_this_process(pool):
    # Its extension would turn the GIL on: only the worker processes import it.
    assert pool.transcribe(say("goodbye").tobytes()).text is not None
    assert "pocketsphinx" not in sys.modules
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert not sys._is_gil_enabled()


# -- the STT stage ---------------------------------------------------------------------------


def audio_frames(runtime, pcm, rate=16000):
    n = rate // 50
    for start in range(0, len(pcm) - n + 1, n):
        yield InputAudioRawFrame.from_bytes(runtime.pool, pcm[start : start + n].tobytes(), rate)


def speak(call, runtime, pcm, rate=16000, started_after=0.3, stop=True):
    """Push *pcm* with a UserStartedSpeakingFrame *started_after* seconds into it (as a
    VAD reports speech late; None: none) and, with *stop*, a UserStoppedSpeakingFrame at
    its end."""
    cut = None if started_after is None else round(started_after * 50)
    for i, frame in enumerate(audio_frames(runtime, pcm, rate)):
        if i == cut:
            call.push(UserStartedSpeakingFrame())
        call.push(frame)
    if stop:
        call.push(UserStoppedSpeakingFrame())


def transcripts(out):
    return [f.text for f in out if type(f) is TranscriptionFrame]


def interims(out):
    return [f.text for f in out if type(f) is InterimTranscriptionFrame]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_the_stage_transcribes_each_segment_with_its_preroll(runtime, pool, rate):
    out = []
    stt = lambda: SphinxSTT(PHRASES, workers=pool)  # noqa: E731
    call = runtime.open_call(Pipeline([stt]), lambda f, d: out.append(f))
    # (The model is wideband: telephone audio is heard less well, though these two are.)
    for phrase in ("please tell me the weather", "goodbye"):
        pcm = with_noise(np.concatenate([silence(0.3), say(phrase, rate), silence(0.5)]))
        speak(call, runtime, pcm, rate, started_after=0.45)  # 150 ms into the speech
    assert wait_until(lambda: len(transcripts(out)) == 2, 20)
    assert transcripts(out) == ["please tell me the weather", "goodbye"]
    assert not any(isinstance(f, InputAudioRawFrame) for f in out)  # the audio stops here
    call.close()
    stage = call.processors[0]
    assert stage.latency.count == 2
    assert wait_until(lambda: runtime.pool.in_use == 0)
    assert wait_until(lambda: idle(pool))


def test_a_dead_worker_ends_only_the_utterances_it_held_and_the_calls_go_on(runtime, loops):
    pool = start_pool(loops)
    try:
        outs = [[], []]
        stt = lambda: SphinxSTT(PHRASES, workers=pool)  # noqa: E731
        calls = [runtime.open_call(Pipeline([stt]), lambda f, d, o=o: o.append(f)) for o in outs]
        speech = with_noise(np.concatenate([say("please tell me the weather"), silence(0.3)]))
        for call in calls:  # both callers start speaking: one utterance on each worker
            speak(call, runtime, speech[:9600], started_after=0.1, stop=False)
        assert wait_until(lambda: all(interims(out) for out in outs), 20)
        assert [w.open_streams for w in pool.workers] == [1, 1]
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        for call in calls:
            speak(call, runtime, speech[9600:], started_after=None)
        errors = lambda out: [f for f in out if isinstance(f, ErrorFrame)]  # noqa: E731
        assert wait_until(
            lambda: sum(map(len, map(transcripts, outs))) + sum(map(len, map(errors, outs))) == 2,
            20,
        )
        failed, heard = sorted(outs, key=lambda out: len(transcripts(out)))
        assert transcripts(heard) == ["please tell me the weather"] and not errors(heard)
        [error] = errors(failed)
        assert "exited with code -9" in error.error and not error.fatal
        # The call whose words were lost goes on: its next utterance is heard.
        call = calls[outs.index(failed)]
        speak(call, runtime, with_noise(np.concatenate([say("goodbye"), silence(0.3)])))
        assert wait_until(lambda: transcripts(failed) == ["goodbye"], 20)
        for call in calls:
            call.close()
            assert call.end_reason == "ended"
        assert wait_until(lambda: runtime.pool.in_use == 0)
    finally:
        pool.close()


def test_the_runtime_shares_one_pool_and_stops_it_with_itself(runtime):
    need_worker_python()
    out = []
    stt = lambda: SphinxSTT(PHRASES, pool_size=2)  # noqa: E731
    calls = [runtime.open_call(Pipeline([stt]), lambda f, d: out.append(f)) for _ in range(2)]
    for call in calls:
        speak(call, runtime, with_noise(np.concatenate([say("goodbye"), silence(0.3)])))
    assert wait_until(lambda: len(transcripts(out)) == 2, 20)
    shared = SphinxPool.shared(runtime)
    assert {call.processors[0].workers for call in calls} == {shared}
    assert len(shared.workers) == 2
    pids = shared.pids
    assert len(pids) == 2
    for call in calls:
        call.close()
    runtime.stop()  # the workers go with the runtime's event loops
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 5)
