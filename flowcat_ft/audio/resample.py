"""Streaming sample-rate conversion of 16-bit PCM by a polyphase FIR filter.

:class:`StreamingResampler` converts between rates whose ratio reduces to a small fraction
``up/down`` (8, 16, 24 and 48 kHz in any direction: ratios 2, 3, 3/2, 6 and their inverses).
It is one stream's state: the filter history and the output phase carry from one
:meth:`~StreamingResampler.process` call to the next, so a stream cut into frames of any
size gives exactly the output of the whole stream converted at once.

The filter is a Kaiser-windowed sinc, designed once per resampler: its passband ends at
80% of the lower of the two Nyquist frequencies, and from that Nyquist frequency up it
attenuates by about 80 dB, which keeps aliases and images far below the signal.
"""

import functools
import math

import numpy as np

__all__ = ["StreamingResampler", "resample"]

_STOPBAND_DB = 80.0
_PASSBAND_EDGE = 0.8  # of the lower Nyquist frequency; the stopband starts at 1.0


@functools.cache
def _design(up: int, down: int, in_rate: int) -> tuple[np.ndarray, int]:
    """Return the polyphase kernels, one row per phase, and the delay in output samples.

    Designed once per ratio and shared, read-only, by every resampler of that ratio: at
    22.05 to 8 kHz a design costs about as much CPU as resampling a second of speech, and
    a text-to-speech reply makes a resampler per utterance.

    Row ``p`` holds the taps ``h[p], h[p + up], h[p + 2 * up], ...`` of the prototype
    filter ``h`` (which runs at ``in_rate * up``), reversed so that a row multiplies a
    window of input samples in time order.
    """
    if up == down:
        kernels = np.ones((1, 1))
        kernels.flags.writeable = False
        return kernels, 0
    rate = in_rate * up
    nyquist = min(in_rate, in_rate * up / down) / 2
    cutoff = (1 + _PASSBAND_EDGE) / 2 * nyquist
    transition = 2 * math.pi * (1 - _PASSBAND_EDGE) * nyquist / rate
    # Kaiser's estimates of the window's shape and length for the wanted attenuation.
    beta = 0.1102 * (_STOPBAND_DB - 8.7)
    min_taps = (_STOPBAND_DB - 7.95) / (2.285 * transition) + 1
    # An odd length whose middle tap falls on an output sample: the filter then delays the
    # output by a whole number of output samples.
    delay = math.ceil((min_taps - 1) / (2 * down))
    taps = 2 * down * delay + 1
    t = np.arange(taps) - down * delay
    h = np.sinc(2 * cutoff / rate * t) * np.kaiser(taps, beta)
    per_phase = -(-taps // up)
    h = np.concatenate([h, np.zeros(per_phase * up - taps)])
    phases = h.reshape(per_phase, up).T
    # Unit gain at DC in every phase, so that a constant input gives a constant output.
    phases /= phases.sum(axis=1, keepdims=True)
    kernels = np.ascontiguousarray(phases[:, ::-1])
    kernels.flags.writeable = False
    return kernels, delay


class StreamingResampler:
    """Convert one stream of int16 samples from *in_rate* to *out_rate*.

    Feed the stream to :meth:`process` in frames of any size; *frame_samples*, the largest
    frame expected (20 ms at *in_rate* when None), sizes the scratch buffers up front, and a
    larger frame grows them once.  Frames of a whole multiple of
    ``in_rate / gcd(in_rate, out_rate)`` samples (every multiple of 10 ms at the rates
    above) each give the same number of output samples, ``out_samples(len(frame))``.

    The output lags the input by :attr:`delay_samples` output samples, the group delay of
    the linear-phase filter; the stream starts from silence.

    Threading: an instance holds one stream's state and is not locked; use it from one
    thread at a time.
    """

    def __init__(self, in_rate: int, out_rate: int, frame_samples: int | None = None) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"rates must be positive, not {in_rate} and {out_rate}")
        gcd = math.gcd(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._up = out_rate // gcd
        self._down = in_rate // gcd
        self._kernels, self.delay_samples = _design(self._up, self._down, in_rate)
        self._history = self._kernels.shape[1] - 1
        # The last `history` input samples, then room for a frame.
        self._buffer = np.zeros(self._history)
        self._scratch = np.zeros(0)
        self._reserve(in_rate // 50 if frame_samples is None else frame_samples)
        # When the next output sample falls, from the first input sample of the next call,
        # in periods of in_rate * up; always in range(down).
        self._time = 0

    def reset(self) -> None:
        """Forget the stream: the next sample processed starts a new one, from silence."""
        self._buffer[: self._history] = 0.0
        self._time = 0

    def out_samples(self, n_in: int) -> int:
        """Return the number of samples that :meth:`process` writes for *n_in* samples next."""
        return max(0, -((self._time - n_in * self._up) // self._down))

    def process(self, src: np.ndarray, out: np.ndarray) -> int:
        """Resample the int16 samples *src* into the start of *out*; return the count written.

        *out* (int16) must hold at least ``out_samples(len(src))`` samples.
        """
        n = len(src)
        count = self.out_samples(n)
        if out.dtype != np.int16:
            raise TypeError(f"out must be an int16 array, not {out.dtype}")
        if len(out) < count:
            raise ValueError(f"out holds {len(out)} samples, {count} needed")
        self._reserve(n)
        up, down, history = self._up, self._down, self._history
        buffer = self._buffer
        buffer[history : history + n] = src
        taps = self._kernels.shape[1]
        size = buffer.itemsize
        y = self._scratch[:count]
        if down == 1:
            # Up-sampling by a whole factor: each window of input gives one output per phase.
            windows = np.ndarray((n, taps), buffer.dtype, buffer, 0, (size, size))
            np.matmul(windows, self._kernels.T, out=y.reshape(n, up))
        else:
            # The outputs cycle through the phases: take them one phase at a time, each as a
            # matrix of input windows, down samples apart, times that phase's kernel.
            for first in range(min(up, count)):
                start, phase = divmod(self._time + first * down, up)
                rows = len(range(first, count, up))
                windows = np.ndarray(
                    (rows, taps), buffer.dtype, buffer, start * size, (down * size, size)
                )
                np.einsum("ij,j->i", windows, self._kernels[phase], out=y[first::up])
        np.rint(y, out=y)
        np.maximum(y, -32768.0, out=y)  # cheaper than np.clip on short arrays
        np.minimum(y, 32767.0, out=y)
        np.copyto(out[:count], y, casting="unsafe")
        buffer[:history] = buffer[n : n + history]
        self._time += count * down - n * up
        return count

    def _reserve(self, n_in: int) -> None:
        """Grow the scratch buffers, if needed, for a frame of *n_in* input samples."""
        if self._history + n_in > len(self._buffer):
            buffer = np.zeros(self._history + n_in)
            buffer[: self._history] = self._buffer[: self._history]
            self._buffer = buffer
            self._scratch = np.zeros(-(-n_in * self._up // self._down))


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """A whole clip of int16 *samples* converted from *in_rate* to *out_rate*, aligned with
    the input: the filter's delay is cut off the start and its tail fed in silence, so the
    result holds ``len(samples) * out_rate // in_rate`` samples."""
    if in_rate == out_rate:
        return samples.copy()
    resampler = StreamingResampler(in_rate, out_rate, len(samples) + in_rate // 10)
    padded = np.concatenate([samples, np.zeros(in_rate // 10, np.int16)])
    out = np.empty(resampler.out_samples(len(padded)), np.int16)
    resampler.process(padded, out)
    start = resampler.delay_samples
    return out[start : start + len(samples) * out_rate // in_rate]
