"""SileroVADAnalyzer: the model found without torch, its windows and context, and batching
across streams: the same verdicts as alone, when the batch runs, several threads at once,
and in a running pipeline."""

import subprocess
import sys
import sysconfig
import threading
import time

import numpy as np
import pytest
from speech_samples import track

from flowcat_ft import (
    InputAudioRawFrame,
    Pipeline,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.audio import silero
from flowcat_ft.audio.silero import SileroVADAnalyzer
from flowcat_ft.audio.vad import VADState
from flowcat_ft.audio.vad_processor import VADProcessor

TEXTS = ["I need help with my order.", "Yes."]
GAPS = [0.5, 1.0, 1.0]  # longer than stop_secs: each utterance stands alone


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return track(tmp_path_factory, TEXTS, 16000, GAPS)


def test_the_model_loads_without_silero_vad_or_torch_and_keeps_the_gil_off():
    code = (
        "import sys, numpy as np\n"
        "from flowcat_ft.audio.silero import SileroVADAnalyzer\n"
        "SileroVADAnalyzer(16000).analyze(np.zeros(512, np.int16))\n"
        "gil = sys._is_gil_enabled() if hasattr(sys, '_is_gil_enabled') else True\n"
        "print('silero_vad' in sys.modules, 'torch' in sys.modules, gil)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported_silero, imported_torch, gil = done.stdout.split()
    assert (imported_silero, imported_torch) == ("False", "False")
    assert gil == str(not sysconfig.get_config_var("Py_GIL_DISABLED"))  # off on 3.13t


def test_the_shared_session_runs_on_one_thread():
    options = silero._shared_session().get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1


def reference_probabilities(pcm: np.ndarray, rate: int) -> list[float]:
    """The model run window by window, each window after the last 64 (32) samples of the
    one before, as the silero-vad package's own wrapper does."""
    session = silero._shared_session()
    window, context = (512, 64) if rate == 16000 else (256, 32)
    audio = pcm.astype(np.float32) / 32768.0
    state = np.zeros((2, 1, 128), np.float32)
    previous = np.zeros(context, np.float32)
    out = []
    for start in range(0, len(audio) - window + 1, window):
        chunk = audio[start : start + window]
        x = np.concatenate([previous, chunk])[np.newaxis]
        p, state = session.run(None, {"input": x, "state": state, "sr": np.array(rate)})
        out.append(float(p[0, 0]))
        previous = chunk[-context:]
    return out


@pytest.mark.parametrize("rate", [16000, 8000])
def test_confidence_is_the_models_probability_for_each_window(tmp_path_factory, rate):
    pcm = track(tmp_path_factory, TEXTS[:1], rate, [0.3, 0.3]).pcm
    window = 512 if rate == 16000 else 256
    analyzer = SileroVADAnalyzer(rate)
    confidences = []
    for start in range(0, len(pcm) - window + 1, window):
        analyzer.analyze(pcm[start : start + window])
        confidences.append(analyzer.confidence)
    expected = reference_probabilities(pcm, rate)
    np.testing.assert_allclose(confidences, expected, atol=1e-5)
    assert max(expected) > 0.9 and min(expected) < 0.1


def test_frames_of_any_size_are_cut_into_the_same_windows(speech):
    whole = SileroVADAnalyzer(16000)
    whole.analyze(speech.pcm)
    pieces = SileroVADAnalyzer(16000)
    start = 0
    for size in [1, 100, 320, 1000, 7] * 1000:
        if start >= len(speech.pcm):
            break
        pieces.analyze(speech.pcm[start : start + size])
        start += size
    assert pieces.state is whole.state
    assert pieces.confidence == pytest.approx(whole.confidence, abs=1e-6)


class Recording(SileroVADAnalyzer):
    """Keeps the model's verdict on each of its windows, in the order they come."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.verdicts: list[float] = []

    def _take_result(self, probability: float, level: float) -> None:
        self.verdicts.append(probability)
        super()._take_result(probability, level)


def run_streams(analyzers, pcm, frame=320):
    """Feed analyzer i the track from a different place, a frame each in turn, then judge
    what waits; return each analyzer's verdicts."""
    streams = [np.roll(pcm, 4001 * i) for i in range(len(analyzers))]
    for start in range(0, len(pcm) - frame + 1, frame):
        for analyzer, stream in zip(analyzers, streams, strict=True):
            analyzer.analyze(stream[start : start + frame])
    for analyzer in analyzers:
        analyzer.flush()
    return [analyzer.verdicts for analyzer in analyzers]


@pytest.fixture
def passes(monkeypatch):
    """The number of windows in each run of the model, as batches run."""
    sizes = []
    run = silero._shared_session().run

    def counting_run(outputs, inputs):
        sizes.append(len(inputs["input"]))
        return run(outputs, inputs)

    monkeypatch.setattr(silero._shared_session(), "run", counting_run, raising=False)
    return sizes


def test_batched_streams_get_the_verdicts_they_get_alone(speech, passes, monkeypatch):
    monkeypatch.setattr(silero, "MAX_WAIT", 3600.0)  # batches run as streams fill up
    alone = run_streams([Recording(16000) for _ in range(6)], speech.pcm)
    assert set(passes) == {1}
    passes.clear()
    together = run_streams([Recording(16000, batched=True) for _ in range(6)], speech.pcm)
    assert max(passes) == 6  # one window of every stream in a run
    for mine, theirs in zip(alone, together, strict=True):
        np.testing.assert_allclose(theirs, mine, atol=1e-4)
    assert max(alone[0]) > 0.9 and min(alone[0]) < 0.1


def test_a_batch_runs_when_a_stream_has_max_queued_windows_waiting(speech, monkeypatch, passes):
    monkeypatch.setattr(silero, "MAX_WAIT", 3600.0)
    analyzer = Recording(16000, batched=True)
    window = 512
    analyzer.analyze(speech.pcm[: silero.MAX_QUEUED * window])
    assert analyzer.verdicts == [] and passes == []
    analyzer.analyze(speech.pcm[silero.MAX_QUEUED * window :][:window])  # one more
    assert len(analyzer.verdicts) == silero.MAX_QUEUED
    assert passes == [1] * silero.MAX_QUEUED  # one stream: a pass per window, in order


def test_a_batch_runs_once_its_oldest_window_has_waited_max_wait(speech, monkeypatch):
    monkeypatch.setattr(silero, "MAX_WAIT", 0.0)
    first, second = Recording(16000, batched=True), Recording(16000, batched=True)
    first.analyze(speech.pcm[:512])  # judged at once: it has waited long enough
    assert len(first.verdicts) == 1
    monkeypatch.setattr(silero, "MAX_WAIT", 0.05)
    first.analyze(speech.pcm[512:1024])
    second.analyze(speech.pcm[:100])
    assert len(first.verdicts) == 1
    time.sleep(0.06)
    second.analyze(speech.pcm[100:200])  # any analysis on the thread runs a due batch
    assert len(first.verdicts) == 2


def test_streams_on_several_threads_batch_apart_and_agree(speech):
    expected = run_streams([Recording(16000) for _ in range(4)], speech.pcm)
    results = {}

    def worker(name):
        analyzers = [Recording(16000, batched=True) for _ in range(4)]
        results[name] = run_streams(analyzers, speech.pcm)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for verdicts in results.values():
        for mine, theirs in zip(expected, verdicts, strict=True):
            np.testing.assert_allclose(theirs, mine, atol=1e-4)


def test_reset_drops_the_windows_waiting_in_the_batch(speech):
    waiting, other = Recording(16000, batched=True), Recording(16000, batched=True)
    waiting.analyze(speech.pcm[:512])
    judged = len(waiting.verdicts)  # 0, unless the batch was already due
    waiting.reset()
    other.analyze(speech.pcm[:512])
    other.flush()
    assert len(other.verdicts) == 1
    assert len(waiting.verdicts) == judged
    assert waiting.state is VADState.QUIET and waiting.confidence == 0.0


def test_batched_calls_in_a_pipeline_hear_what_they_hear_alone(runtime, speech):
    def events(batched: bool, calls: int = 6) -> list[list[tuple[str, float]]]:
        heard = [[] for _ in range(calls)]
        pipeline = Pipeline(
            [lambda: VADProcessor(lambda rate: SileroVADAnalyzer(rate, batched=batched))]
        )
        opened = []
        for i in range(calls):
            log = heard[i]
            position = [0.0]

            def collect(frame, direction, log=log, position=position):
                if isinstance(frame, InputAudioRawFrame):
                    position[0] += frame.num_frames / frame.sample_rate
                elif isinstance(frame, UserStartedSpeakingFrame | UserStoppedSpeakingFrame):
                    log.append((frame.name, round(position[0], 3)))

            opened.append(runtime.open_call(pipeline, collect))
        for start in range(0, len(speech.pcm) - 319, 320):
            chunk = speech.pcm[start : start + 320].tobytes()
            for call in opened:
                call.push_audio(chunk, 16000)
        for call in opened:
            call.end()
        assert all(call.wait(10) for call in opened)
        return heard

    alone, together = events(False), events(True)
    for mine, theirs in zip(alone, together, strict=True):
        assert [name for name, _ in theirs] == [name for name, _ in mine]
        assert len(mine) == 2 * len(TEXTS)
        for (_, t_alone), (_, t_together) in zip(mine, theirs, strict=True):
            # Later by what waited in the batch: at most MAX_QUEUED windows of audio.
            assert 0 <= t_together - t_alone <= silero.MAX_QUEUED * 0.032 + 0.02


def test_only_the_models_rates_are_taken():
    with pytest.raises(ValueError):
        SileroVADAnalyzer(44100)
