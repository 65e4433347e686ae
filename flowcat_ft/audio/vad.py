"""Voice activity detection: pipecat's parameters and states, and an energy analyzer.

Every analyzer judges audio one window at a time and hands each window's speech
confidence and level to a :class:`VADStateMachine`, which follows the volume and the noise
floor, applies the thresholds of :class:`VADParams` and moves between the four
:class:`VADState` states with the start/stop hysteresis that pipecat users know.

:class:`EnergyVADAnalyzer` needs no model: its confidence is how far a frame stands above
the background noise.  It suits clean close-talk audio; a model-based analyzer
(:class:`~flowcat_ft.audio.silero.SileroVADAnalyzer`) does better in babble or music.
"""

import enum
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EnergyVADAnalyzer", "VADParams", "VADState", "VADStateMachine", "level_db"]

# Volume is the window level mapped linearly from this range of dBFS onto 0..1: the scale
# of pipecat's loudness-based volume (about -20 to 80 dB above one 16-bit step).
_VOLUME_RANGE_DB = (-110.0, -10.0)
# The volume follows a rise at once and a fall with this time constant.  (Smoothing the
# rise too, as pipecat does, held starts back while the volume climbed from the
# background's level to min_volume: by 20-40 ms on espeak-ng speech over -64 dBFS noise,
# by 40-80 ms over -81 dBFS.)
_VOLUME_RELEASE_SECS = 0.1
_SILENCE_POWER = 1e-12  # -120 dBFS, the level given to digital silence
# The noise floor is the lowest window level of the last _FLOOR_BLOCKS blocks (about 2 s).
_FLOOR_BLOCK_SECS = 0.25
_FLOOR_BLOCKS = 8
# Once speech has started, a window less than this far above the noise floor is not speech,
# whatever the analyzer's confidence.  Silero's probability of speech trails the audio:
# after an utterance's last sound it stayed at 0.7 or more for 0 to 4 windows (up to
# 128 ms) of bare background, so its ends came up to 136 ms late (espeak-ng speech under
# white or pink noise of -81 to -49 dBFS).  Those windows lay within 1.1 dB of the floor in
# white noise and 4 dB in pink; background windows of 32 ms stay within 2.3 dB of it in
# white noise and 5 dB (99 in 100; 7 at most) in pink, so 6 dB is past the background (at
# 3 dB, Silero's ends in pink noise still came 72 ms late).  With it they came -4..+32 ms
# from the truth.  The gate overrules the model only on windows at the background's level:
# a quiet tail over it (the "s" of "Yes." at 8 kHz, 8-10 dB over the noise) stays speech.
# Not before speech starts: the floor is the lowest level heard so far, which in a stream
# that opens with speech is the speech's own (gated there too, Silero missed a "Yes." that
# opened a stream), and the model's verdict does not run ahead of speech anyway.
_SPEECH_OVER_FLOOR_DB = 6.0
# Energy analyzer: confidence grows linearly from 0 at the noise floor to 1 this far above
# it (so it reaches 0.7, the default confidence, 10.5 dB above the floor).
_FULL_CONFIDENCE_DB = 15.0


@dataclass(frozen=True, slots=True)
class VADParams:
    """Thresholds and timings of a voice activity analyzer, as pipecat names them.

    A window is speech when its confidence reaches *confidence* and the smoothed volume
    reaches *min_volume* (both 0..1).  Speech must last *start_secs* to start a turn, and
    non-speech *stop_secs* to end it.
    """

    confidence: float = 0.7
    start_secs: float = 0.2
    stop_secs: float = 0.8
    min_volume: float = 0.6

    def __post_init__(self) -> None:
        if not (0.0 <= self.confidence <= 1.0 and 0.0 <= self.min_volume <= 1.0):
            raise ValueError("confidence and min_volume must lie in 0..1")
        if self.start_secs < 0 or self.stop_secs < 0:
            raise ValueError("start_secs and stop_secs must not be negative")


class VADState(enum.Enum):
    """Where an analyzer stands between silence and speech."""

    QUIET = 1
    STARTING = 2
    SPEAKING = 3
    STOPPING = 4


def level_db(power: float) -> float:
    """Return the level in dBFS of a mean power relative to full scale (1.0 is 0 dBFS)."""
    return 10.0 * math.log10(max(power, _SILENCE_POWER))


class VADStateMachine:
    """Decide speech window by window and smooth the decisions into :class:`VADState`.

    Each :meth:`update` takes one window of *n* samples: its confidence that it is speech
    (0..1, from the analyzer) and its level in dBFS.  The level, mapped from -110..-10 dBFS
    onto 0..1, is the volume, which rises at once and falls over about 0.1 s.  The lowest
    level of the last 2 s or so is the noise floor.  The window is speech when
    ``confidence >= params.confidence`` and ``volume >= params.min_volume``, and, once
    speech has started (SPEAKING or STOPPING), when its level also stands 6 dB above the
    noise floor: so speech ends where the audio falls back to the background, even while
    a model's confidence trails on (Silero's does, by up to 100 ms).  Speech and
    non-speech windows then drive the state::

        QUIET     -- speech -------------------------------------> STARTING
        STARTING  -- speech, lasting start_secs in all ----------> SPEAKING
        STARTING  -- non-speech ---------------------------------> QUIET
        SPEAKING  -- non-speech ---------------------------------> STOPPING
        STOPPING  -- speech -------------------------------------> SPEAKING
        STOPPING  -- non-speech, lasting stop_secs in all -------> QUIET

    A window long enough to complete start_secs (or stop_secs) on its own goes straight
    through STARTING (or STOPPING).

    Threading: an instance holds one stream's state and is not locked; use it from one
    thread at a time.
    """

    def __init__(self, sample_rate: int, params: VADParams) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, not {sample_rate}")
        self.sample_rate = sample_rate
        self.params = params
        self._start_samples = round(params.start_secs * sample_rate)
        self._stop_samples = round(params.stop_secs * sample_rate)
        self._block_samples = round(_FLOOR_BLOCK_SECS * sample_rate)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: state QUIET, confidence and volume 0, no noise floor."""
        self.state = VADState.QUIET
        self.confidence = 0.0
        self.volume = 0.0
        self._speech_run = 0  # samples of speech without a break
        self._quiet_run = 0  # samples of non-speech without a break
        self._block_minima = [math.inf] * _FLOOR_BLOCKS  # lowest level of each block
        self._block = 0  # the block being filled
        self._block_filled = 0  # its samples so far

    @property
    def noise_floor_db(self) -> float:
        """The noise floor in dBFS: the lowest window level of the last 2 s or so (infinite
        before the first window)."""
        return min(self._block_minima)

    def update(self, confidence: float, level: float, n: int) -> VADState:
        """Take the next window's confidence and level (dBFS) and return the state after it."""
        self.confidence = confidence
        low, high = _VOLUME_RANGE_DB
        volume = min(max((level - low) / (high - low), 0.0), 1.0)
        if volume >= self.volume:
            self.volume = volume
        else:
            release = 1.0 - math.exp(-n / (_VOLUME_RELEASE_SECS * self.sample_rate))
            self.volume += release * (volume - self.volume)
        floor = self._track_floor(level, n)
        params = self.params
        state = self.state
        speech = confidence >= params.confidence and self.volume >= params.min_volume
        if speech and (state is VADState.SPEAKING or state is VADState.STOPPING):
            speech = level >= floor + _SPEECH_OVER_FLOOR_DB

        if speech:
            self._speech_run += n
            self._quiet_run = 0
            if state is VADState.QUIET:
                state = VADState.STARTING
            elif state is VADState.STOPPING:
                state = VADState.SPEAKING
            if state is VADState.STARTING and self._speech_run >= self._start_samples:
                state = VADState.SPEAKING
        else:
            self._quiet_run += n
            self._speech_run = 0
            if state is VADState.STARTING:
                state = VADState.QUIET
            elif state is VADState.SPEAKING:
                state = VADState.STOPPING
            if state is VADState.STOPPING and self._quiet_run >= self._stop_samples:
                state = VADState.QUIET
        self.state = state
        return state

    def _track_floor(self, level: float, n: int) -> float:
        """Add a window's level to the running minima and return the noise floor."""
        minima = self._block_minima
        minima[self._block] = min(minima[self._block], level)
        self._block_filled += n
        if self._block_filled >= self._block_samples:
            self._block = (self._block + 1) % len(minima)
            minima[self._block] = math.inf
            self._block_filled = 0
        return min(minima)


class StateMachineAnalyzer:
    """What the analyzers share: their parameters, and the :class:`VADStateMachine` their
    per-window verdicts drive (subclasses feed it in ``analyze``)."""

    def __init__(self, sample_rate: int, params: VADParams | None) -> None:
        self.sample_rate = sample_rate
        self.params = VADParams() if params is None else params
        self._machine = VADStateMachine(sample_rate, self.params)

    def reset(self) -> None:
        """Forget the stream: state QUIET, no noise floor, volume 0."""
        self._machine.reset()

    @property
    def state(self) -> VADState:
        """The state after the last window judged."""
        return self._machine.state

    @property
    def confidence(self) -> float:
        """The last judged window's confidence that it is speech, 0..1."""
        return self._machine.confidence

    @property
    def volume(self) -> float:
        """The smoothed volume after the last judged window, 0..1."""
        return self._machine.volume

    @property
    def noise_floor_db(self) -> float:
        """The noise floor in dBFS (infinite before the first window)."""
        return self._machine.noise_floor_db


class EnergyVADAnalyzer(StateMachineAnalyzer):
    """Detect speech in one stream of int16 frames from their energy.

    Each call to :meth:`analyze` judges one frame as one window (20 ms is usual; any length
    works).  Its confidence is how far the frame's RMS level L, in dBFS, stands above the
    :class:`VADStateMachine`'s noise floor F, ``(L - F) / 15 dB`` clipped to 0..1.  The
    floor is the lowest level seen over the last 2 seconds or so, so that a steady
    background, however loud, settles at the floor within that time (the floor starts at
    the first frame's level, so a stream that opens with speech is heard from its first
    pause on).

    Threading: an instance holds one stream's state and is not locked; use it from one
    thread at a time.
    """

    def __init__(self, sample_rate: int, params: VADParams | None = None) -> None:
        super().__init__(sample_rate, params)
        self._samples = np.zeros(sample_rate // 50)  # the frame as float64, for its energy

    def analyze(self, pcm: np.ndarray) -> VADState:
        """Take the next frame of int16 samples and return the state after it."""
        n = len(pcm)
        if n == 0:
            return self._machine.state
        if n > len(self._samples):
            self._samples = np.zeros(n)
        samples = self._samples[:n]
        samples[:] = pcm
        level = level_db(float(np.dot(samples, samples)) / (n * 32768.0**2))
        # The floor with this frame in it (the machine adds the frame to it next).
        floor = min(self._machine.noise_floor_db, level)
        confidence = min(max((level - floor) / _FULL_CONFIDENCE_DB, 0.0), 1.0)
        return self._machine.update(confidence, level, n)
