"""PocketSphinx speech to text: the worker's Sans-I/O protocol, the worker process (exact
words with a grammar, a restart after it is killed, a clear error when it cannot start),
and the SphinxSTT stage on VAD segments, with an error frame for the calls whose
recognition the dead worker took with it."""

from __future__ import annotations

import os
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
    Pipeline,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.loops import EventLoopThread
from flowcat_ft.services.offline import sphinx_stt
from flowcat_ft.services.offline.sphinx_stt import (
    Grammar,
    SphinxSTT,
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
    monkeypatch.setattr(sphinx_stt, "_REPO", tmp_path)
    with pytest.raises(SphinxWorkerError, match=r"\.venv-gil.*ci/venvs\.sh.*FLOWCAT_PYTHON_GIL"):
        find_worker_python()
    venv = tmp_path / ".venv-gil" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").touch()
    assert find_worker_python() == str(venv / "python")


# -- the worker process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def io():
    loop = EventLoopThread("test-sphinx-io")
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def worker(io):
    worker = SphinxWorker(io, need_worker_python())
    worker.start().result(60)
    yield worker
    worker.close()


def test_the_worker_hears_espeak_speech_exactly_with_a_grammar(worker):
    grammar = Grammar.from_phrases(PHRASES)
    for phrase in PHRASES:
        result = worker.transcribe(say(phrase).tobytes(), grammar)
        assert result.text == phrase
        assert result.decode_ms < 2000
    # Over a caller's noise floor too, and with silence around the speech.
    pcm = with_noise(np.concatenate([silence(0.5), say("goodbye"), silence(0.5)]))
    assert worker.transcribe(pcm.tobytes(), grammar).text == "goodbye"
    # What the grammar does not hold is not heard (rather than half a sentence of it).
    assert worker.transcribe(say("I would like some cheese").tobytes(), grammar).text == ""
    # Free dictation answers with something; what, for synthetic speech, is anyone's guess.
    assert isinstance(worker.transcribe(say("hello").tobytes()).text, str)


def test_the_worker_reports_bad_requests_and_goes_on(worker, caplog):
    with pytest.raises(SphinxWorkerError, match="odd number of bytes"):
        worker.transcribe(b"\x00" * 3)
    pid = worker.pid
    # Words missing from the dictionary leave their phrase out, with a warning.
    grammar = Grammar.from_phrases(["goodbye", "hello flowcatter"])
    assert worker.transcribe(say("goodbye").tobytes(), grammar).text == "goodbye"
    assert "flowcatter" in caplog.text and "hello flowcatter" in caplog.text
    assert worker.pid == pid


def test_a_killed_worker_fails_its_requests_and_is_replaced(worker):
    grammar = Grammar.from_phrases(PHRASES)
    old_pid, restarts = worker.pid, worker.restarts
    long_speech = np.tile(with_noise(say("please tell me the weather")), 8)
    in_flight = worker.io.submit(worker.recognize(long_speech.tobytes(), None, "long"))
    assert wait_until(lambda: worker._pending)
    worker.kill()
    with pytest.raises(SphinxWorkerError, match=f"worker {old_pid} exited with code -9"):
        in_flight.result(10)
    # The next request goes to a new process, which is sent the grammar again.
    assert worker.transcribe(say("goodbye").tobytes(), grammar).text == "goodbye"
    assert worker.pid not in (None, old_pid)
    assert worker.restarts == restarts + 1


def test_a_worker_that_cannot_start_says_why(io, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pocketsphinx'\" >&2\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    worker = SphinxWorker(io, str(fake))
    with pytest.raises(SphinxWorkerError, match=r"did not start.*No module named.*pip install"):
        worker.transcribe(b"")
    with pytest.raises(SphinxWorkerError, match="cannot run"):
        SphinxWorker(io, str(tmp_path / "missing")).transcribe(b"")


def test_pocketsphinx_stays_out_of_this_process(worker):
    # Its extension would turn the GIL on: only the worker process imports it.
    assert worker.transcribe(say("goodbye").tobytes()).text is not None
    assert "pocketsphinx" not in sys.modules
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert not sys._is_gil_enabled()


# -- the STT stage ---------------------------------------------------------------------------


def audio_frames(runtime, pcm, rate=16000):
    n = rate // 50
    for start in range(0, len(pcm) - n + 1, n):
        yield InputAudioRawFrame.from_bytes(runtime.pool, pcm[start : start + n].tobytes(), rate)


def speak(call, runtime, pcm, rate=16000, started_after=0.3):
    """Push *pcm* with a UserStartedSpeakingFrame *started_after* seconds into it (as a
    VAD reports speech late) and a UserStoppedSpeakingFrame at its end."""
    cut = round(started_after * 50)
    for i, frame in enumerate(audio_frames(runtime, pcm, rate)):
        if i == cut:
            call.push(UserStartedSpeakingFrame())
        call.push(frame)
    call.push(UserStoppedSpeakingFrame())


def transcripts(out):
    return [f.text for f in out if isinstance(f, TranscriptionFrame)]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_the_stage_transcribes_each_segment_with_its_preroll(runtime, worker, rate):
    out = []
    stt = lambda: SphinxSTT(PHRASES, worker=worker)  # noqa: E731
    call = runtime.open_call(Pipeline([stt]), lambda f, d: out.append(f))
    # (The model is wideband: telephone audio is heard less well, though these two are.)
    for phrase in ("please tell me the weather", "goodbye"):
        pcm = with_noise(np.concatenate([silence(0.3), say(phrase, rate), silence(0.5)]))
        speak(call, runtime, pcm, rate, started_after=0.45)  # 150 ms into the speech
    assert wait_until(lambda: len(transcripts(out)) == 2, 10)
    assert transcripts(out) == ["please tell me the weather", "goodbye"]
    assert not any(isinstance(f, InputAudioRawFrame) for f in out)  # the audio stops here
    call.close()
    stage = call.processors[0]
    assert stage.latency.count == 2
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_calls_in_flight_get_an_error_when_the_worker_dies_and_others_go_on(runtime, worker):
    outs = {"long": [], "next": []}
    free = lambda: SphinxSTT(None, worker=worker)  # noqa: E731  (free dictation: slow)
    stt = lambda: SphinxSTT(PHRASES, worker=worker)  # noqa: E731
    long_call = runtime.open_call(Pipeline([free]), lambda f, d: outs["long"].append(f))
    speak(long_call, runtime, np.tile(with_noise(say("please tell me the weather")), 8))
    assert wait_until(lambda: worker._pending, 10)
    worker.kill()
    assert wait_until(lambda: any(isinstance(f, ErrorFrame) for f in outs["long"]), 10)
    error = next(f for f in outs["long"] if isinstance(f, ErrorFrame))
    assert "exited with code -9" in error.error and not error.fatal
    next_call = runtime.open_call(Pipeline([stt]), lambda f, d: outs["next"].append(f))
    speak(next_call, runtime, with_noise(np.concatenate([say("goodbye"), silence(0.3)])))
    assert wait_until(lambda: transcripts(outs["next"]) == ["goodbye"], 10)
    for call in (long_call, next_call):
        call.close()
        assert call.end_reason == "ended"


def test_the_runtime_shares_one_worker_between_its_calls(runtime):
    need_worker_python()
    out = []
    stt = lambda: SphinxSTT(PHRASES)  # noqa: E731
    calls = [runtime.open_call(Pipeline([stt]), lambda f, d: out.append(f)) for _ in range(2)]
    for call in calls:
        speak(call, runtime, with_noise(np.concatenate([say("goodbye"), silence(0.3)])))
    assert wait_until(lambda: len(transcripts(out)) == 2, 20)
    workers = {call.processors[0].worker for call in calls}
    assert workers == {SphinxWorker.shared(runtime)}
    pid = SphinxWorker.shared(runtime).pid
    for call in calls:
        call.close()
    runtime.stop()  # the worker goes with the runtime's event loops
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 5)
