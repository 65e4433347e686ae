"""espeak-ng text to speech: the WAV stream read in pieces, audio resampled into 20 ms
slabs at the pipeline's rate, sentences spoken in order between TTSStarted/Stopped frames,
output kept a little ahead of real time, and an interruption that kills espeak-ng and drops
what was left to say."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until
from peers import need_program

from flowcat_ft import (
    EndFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    Pipeline,
    SlabPool,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.services.offline.espeak_tts import (
    AudioFramer,
    EspeakTTS,
    WavReader,
    split_sentences,
)


def test_sentences_are_split_where_they_end():
    assert split_sentences("Hello there. How are") == (["Hello there."], "How are")
    assert split_sentences("One! Two? Three.\nFour") == (["One!", "Two?", "Three."], "Four")
    assert split_sentences("It costs 3.50 dollars") == ([], "It costs 3.50 dollars")
    assert split_sentences("Done.\n") == (["Done."], "")


def espeak_wav(text: str) -> bytes:
    need_program("espeak-ng")
    return subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout


def test_the_wav_stream_is_read_in_pieces_of_any_size():
    data = espeak_wav("Testing, one two three.")
    whole = WavReader()
    expected = whole.feed(data)
    assert whole.sample_rate == 22050 and len(expected) == (len(data) - 44) // 2
    for size in (1, 7, 4096):
        reader = WavReader()
        pieces = [reader.feed(data[i : i + size]) for i in range(0, len(data), size)]
        np.testing.assert_array_equal(np.concatenate(pieces), expected)
    with pytest.raises(ValueError, match="not a WAV stream"):
        WavReader().feed(b"OggS" + bytes(40))
    stereo = bytearray(data[:44])
    stereo[22] = 2
    with pytest.raises(ValueError, match="16-bit mono"):
        WavReader().feed(bytes(stereo))


def test_audio_is_framed_in_20_ms_slabs_at_the_output_rate():
    pool = SlabPool(256)
    tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 8000).astype(np.int16)
    framer = AudioFramer(22050, 16000, pool)
    frames = []
    for start in range(0, len(tone), 1000):
        frames += framer.push(tone[start : start + 1000])
    frames += framer.finish()
    assert {(f.num_frames, f.sample_rate) for f in frames} == {(320, 16000)}
    assert len(frames) == 50  # one second
    got = np.concatenate([f.samples for f in frames])
    # The same as the whole tone resampled at once, with the filter's delay cut off.
    reference = StreamingResampler(22050, 16000, 30000)
    padded = np.concatenate([tone, np.zeros(2205, np.int16)])
    out = np.empty(reference.out_samples(len(padded)), np.int16)
    reference.process(padded, out)
    delay = reference.delay_samples
    np.testing.assert_array_equal(got, out[delay : delay + 16000])
    del frames, got
    assert pool.in_use == 0


def run_tts(runtime, frames, rate=24000, **options):
    need_program("espeak-ng")
    out = []
    call = runtime.open_call(
        Pipeline([lambda: EspeakTTS(**options)]),
        lambda f, d: out.append(f),
        start_frame=StartFrame(audio_out_sample_rate=rate),
    )
    for frame in frames:
        call.push(frame)
    return call, out


def kinds(out):
    return [type(f) for f in out]


def test_sentences_are_spoken_in_order_at_the_call_s_output_rate(runtime):
    pieces = ["Hello th", "ere. How are", " you today? Fi", "ne"]
    frames = [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in pieces),
        LLMFullResponseEndFrame(),
        TextFrame("Spoken as it is"),
        TranscriptionFrame("not for speaking"),
    ]
    call, out = run_tts(runtime, frames, max_ahead_secs=60)
    assert wait_until(lambda: TranscriptionFrame in kinds(out), 10)
    call.close()
    said = [f.text for f in out if isinstance(f, TTSTextFrame)]
    assert said == ["Hello there.", "How are you today?", "Fine", "Spoken as it is"]
    audio = [f for f in out if isinstance(f, TTSAudioRawFrame)]
    assert {(f.num_frames, f.sample_rate) for f in audio} == {(480, 24000)}
    assert 3.0 < len(audio) * 0.02 < 8.0
    # Frames keep their place behind the audio queued before them.
    order = [k for k in kinds(out) if k is not TTSAudioRawFrame]
    start = order.index(LLMFullResponseStartFrame)
    assert order[start:] == [
        LLMFullResponseStartFrame,
        TTSStartedFrame,
        TTSTextFrame,
        TTSTextFrame,
        TTSTextFrame,
        TTSStoppedFrame,
        LLMFullResponseEndFrame,
        TTSStartedFrame,
        TTSTextFrame,
        TTSStoppedFrame,
        TranscriptionFrame,
        *order[start + 11 :],
    ]
    assert call.processors[0].ttfb.count >= 1
    audio.clear()
    out.clear()
    assert wait_until(lambda: runtime.pool.in_use == 0)


def espeak_children() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and name == "espeak-ng" and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def test_an_interruption_kills_espeak_and_drops_what_was_left(runtime):
    long = " ".join(["this sentence goes on and on without a stop"] * 25) + "."
    frames = [TextFrame(long), TextFrame("This one is never said.")]
    call, out = run_tts(runtime, frames, rate=16000)
    assert wait_until(lambda: any(isinstance(f, TTSAudioRawFrame) for f in out), 5)
    first = time.monotonic()
    # espeak-ng could say it all in a moment; the stage reads only what would have played
    # by now, plus a second (and a pipe read), then pauses: espeak-ng waits on its pipe.
    assert wait_until(lambda: call.processors[0].ahead_pauses > 0, 5)
    assert len(espeak_children()) == 1
    made = sum(isinstance(f, TTSAudioRawFrame) for f in out) * 0.02
    assert made < time.monotonic() - first + 1.0 + 0.3
    call.interrupt()
    assert wait_until(lambda: InterruptionFrame in kinds(out))
    assert wait_until(lambda: not espeak_children())
    cut = kinds(out).index(InterruptionFrame)
    call.push(TextFrame("After."))
    assert wait_until(lambda: any(isinstance(f, TTSTextFrame) for f in out), 5)
    after = out[cut:]
    assert [f.text for f in after if isinstance(f, TTSTextFrame)] == ["After."]
    assert kinds(out)[:cut].count(TTSStoppedFrame) == 1  # the bot stopped at the cut
    call.close()


def test_an_end_waits_until_the_reply_has_been_spoken(runtime):
    pieces = ["One two three. Four", " five six. Seven"]  # no end frame, no full stop
    frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(p) for p in pieces)]
    call, out = run_tts(runtime, frames, max_ahead_secs=60)
    call.end()
    assert call.wait(15) and call.end_reason == "ended"
    said = [f.text for f in out if isinstance(f, TTSTextFrame)]
    assert said == ["One two three.", "Four five six.", "Seven"]
    assert kinds(out)[-2:] == [TTSStoppedFrame, EndFrame]  # after all of its audio
    audio = [f for f in out if isinstance(f, TTSAudioRawFrame)]
    assert len(audio) * 0.02 > 1.5
    audio.clear()
    out.clear()
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_a_cancel_kills_espeak_and_drops_the_reply_at_once(runtime):
    long = " ".join(["this sentence goes on and on without a stop"] * 25) + "."
    call, out = run_tts(runtime, [TextFrame(long), TextFrame("Never said.")], rate=16000)
    assert wait_until(lambda: any(isinstance(f, TTSAudioRawFrame) for f in out), 5)
    call.cancel("hung up")
    assert call.wait(5) and call.end_reason == "hung up"
    assert wait_until(lambda: not espeak_children())
    assert EndFrame not in kinds(out) and TTSTextFrame not in kinds(out)


def test_a_missing_espeak_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
        EspeakTTS(executable="espeak-ng-not-here")


def test_speech_waits_for_slabs_when_the_pool_runs_low(runtime):
    """A server behind on its calls: speech leaves a quarter of the pool to callers' audio,
    waiting instead of failing the call."""
    need_program("espeak-ng")
    pool = runtime.pool
    held = [pool.take() for _ in range(pool.capacity - 100)]  # 100 free: under the reserve
    seen: list[type] = []  # the frames' kinds: the frames themselves go (and their slabs)
    call = runtime.open_call(
        Pipeline([lambda: EspeakTTS(max_ahead_secs=60)]),
        lambda f, d: seen.append(type(f)),
        start_frame=StartFrame(audio_out_sample_rate=16000),
    )
    call.push(TextFrame(" ".join(["this sentence goes on for a while"] * 8) + "."))  # ~8 s
    tts = call.processors[0]
    # Paused after its first read of espeak-ng's output, and held there by `held`:
    assert wait_until(lambda: tts.reserve_pauses == 1 and TTSAudioRawFrame in seen, 5)
    assert ErrorFrame not in seen and TTSTextFrame not in seen
    assert seen.count(TTSAudioRawFrame) < 50
    for slab in held:
        slab.release()
    assert wait_until(lambda: TTSTextFrame in seen, 10)
    assert ErrorFrame not in seen and pool.drops == 0
    assert seen.count(TTSAudioRawFrame) * 0.02 > 5
    call.close()
