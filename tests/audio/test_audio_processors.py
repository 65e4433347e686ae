"""G711Decoder, G711Encoder and Resampler in a running pipeline: the kernels' output in
slabs from the runtime's pool, frame classes and times kept, input slabs returned, and
the other frames passed on."""

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import wait_until

from flowcat_ft import (
    AudioRawFrame,
    Direction,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    Pipeline,
    SlabPool,
    TextFrame,
    TTSAudioRawFrame,
)
from flowcat_ft.audio.g711 import alaw_encode, ulaw_decode, ulaw_encode
from flowcat_ft.audio.processors import G711Decoder, G711Encoder, Resampler
from flowcat_ft.audio.resample import StreamingResampler


def tone(rate: int, seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(9000 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def ulaw(pcm: np.ndarray) -> np.ndarray:
    codes = np.empty(len(pcm), np.uint8)
    ulaw_encode(pcm, codes)
    return codes


def run(runtime, pipeline, frames):
    """Push frames into a call and end it; return the audio and text frames that came out,
    each with a copy of its samples (None for text)."""
    out = []

    def collect(frame, direction):
        if isinstance(frame, AudioRawFrame):
            out.append((frame, frame.samples.copy()))
        elif isinstance(frame, TextFrame):
            out.append((frame, None))

    call = runtime.open_call(pipeline, collect)
    for frame in frames:
        call.push(frame)
    call.end()
    assert call.wait(5)
    # Every frame refers to its call, which refers to this list through collect: hand the
    # frames over in a new list so that dropping it frees them.
    frames, out[:] = out[:], []
    return frames


def test_ulaw_8k_in_becomes_pcm_16k(runtime):
    pcm = tone(8000, 0.4)
    codes = ulaw(pcm)
    frames = [
        InputAudioRawFrame.from_bytes(
            runtime.pool, codes[i : i + 160].tobytes(), 8000, codec="mulaw"
        )
        for i in range(0, len(codes), 160)
    ]
    times = [frame.pts for frame in frames]
    out = run(runtime, Pipeline([G711Decoder, lambda: Resampler(16000)]), frames)

    assert [type(f) for f, _ in out] == [InputAudioRawFrame] * len(frames)
    assert [f.pts for f, _ in out] == times
    assert {(f.sample_rate, f.codec, f.num_frames) for f, _ in out} == {(16000, "pcm16", 320)}
    decoded = np.empty(len(codes), np.int16)
    ulaw_decode(codes, decoded)
    resampler = StreamingResampler(8000, 16000)
    expected = np.empty(2 * len(codes), np.int16)
    resampler.process(decoded, expected)
    np.testing.assert_array_equal(np.concatenate([a for _, a in out]), expected)
    del out, frames
    assert wait_until(lambda: runtime.pool.in_use == 0)


@pytest.mark.parametrize(("codec", "encode"), [("mulaw", ulaw_encode), ("alaw", alaw_encode)])
def test_bot_audio_is_encoded_and_the_callers_audio_left_alone(runtime, codec, encode):
    pcm = tone(8000, 0.02)
    bot = TTSAudioRawFrame.from_bytes(runtime.pool, pcm.tobytes(), 8000)
    caller = InputAudioRawFrame.from_bytes(runtime.pool, pcm.tobytes(), 8000)
    out = run(runtime, Pipeline([lambda: G711Encoder(codec)]), [bot, caller, TextFrame("hi")])
    del bot, caller
    (encoded, codes), (passed, samples), (text, _) = out
    assert type(encoded) is TTSAudioRawFrame and encoded.codec == codec
    expected = np.empty(len(pcm), np.uint8)
    encode(pcm, expected)
    np.testing.assert_array_equal(codes, expected)
    assert passed.codec == "pcm16"
    np.testing.assert_array_equal(samples, pcm)
    assert text.text == "hi"
    del out, encoded, passed
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_a_change_of_rate_starts_a_new_stream_and_the_out_rate_passes(runtime):
    frames = [
        InputAudioRawFrame.from_bytes(runtime.pool, tone(rate, 0.02).tobytes(), rate)
        for rate in (8000, 8000, 48000, 16000)
    ]
    out = run(runtime, Pipeline([lambda: Resampler(16000)]), frames)
    assert [(f.sample_rate, f.num_frames) for f, _ in out] == [(16000, 320)] * 4
    fresh = StreamingResampler(48000, 16000)
    expected = np.empty(320, np.int16)
    fresh.process(tone(48000, 0.02), expected)
    np.testing.assert_array_equal(out[2][1], expected)  # not continued from the 8 kHz stream
    np.testing.assert_array_equal(out[3][1], tone(16000, 0.02))


def test_stereo_is_refused_by_the_resampler(runtime):
    frame = InputAudioRawFrame.from_bytes(runtime.pool, bytes(640), 8000, num_channels=2)
    call = runtime.open_call(Pipeline([lambda: Resampler(16000)]), lambda f, d: None)
    call.push(frame)
    del frame
    assert call.wait(5)
    assert call.failed


def peak_bytes(step, times: int = 7) -> int:
    """The most memory ``step()`` allocates, at its peak, in any of *times* calls."""
    tracemalloc.start()
    try:
        peaks = []
        for _ in range(times):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            step()
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    return max(peaks)


def kernel_step(kernel, rate: int, codec: str):
    """One frame through the bare kernel, into a preallocated array."""
    n = rate // 50
    src = np.zeros(n, np.uint8 if codec == "mulaw" else np.int16)
    if kernel is StreamingResampler:
        resampler = StreamingResampler(rate, 16000)
        out = np.empty(320, np.int16)
        return lambda: resampler.process(src, out)
    out = np.empty(n, np.int16 if codec == "mulaw" else np.uint8)
    return lambda: kernel(src, out)


@pytest.mark.parametrize(
    ("make", "kernel", "codec", "rate", "kind"),
    [
        (G711Decoder, ulaw_decode, "mulaw", 8000, InputAudioRawFrame),
        (lambda: Resampler(16000), StreamingResampler, "pcm16", 8000, InputAudioRawFrame),
        (lambda: Resampler(16000), StreamingResampler, "pcm16", 48000, InputAudioRawFrame),
        (G711Encoder, ulaw_encode, "pcm16", 8000, OutputAudioRawFrame),
    ],
)
def test_the_processors_allocate_no_sample_buffer_per_frame(make, kernel, codec, rate, kind):
    pool = SlabPool(256)  # big enough that its free list never shrinks or grows here
    processor = make()
    out = []
    processor._wire(SimpleNamespace(pool=pool), out.append, out.append)
    silence = bytes((1 if codec == "mulaw" else 2) * rate // 50)
    frames = [kind.from_bytes(pool, silence, rate, codec=codec) for _ in range(10)]
    for frame in frames[:3]:  # the resampler is made on the first frame
        processor.process(frame, Direction.DOWNSTREAM)
    rest = iter(frames[3:])
    processor_peak = peak_bytes(lambda: processor.process(next(rest), Direction.DOWNSTREAM))
    assert len(out) == 10 and out[-1].slab.pool is pool
    # Beyond the kernel's own temporaries (numpy's index and cast buffers), a frame and a
    # few array views, but no buffer of samples as big as the frame made.
    assert processor_peak < peak_bytes(kernel_step(kernel, rate, codec)) + len(out[-1].audio)
