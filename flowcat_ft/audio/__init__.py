"""Sans-I/O audio kernels: G.711 codecs, a streaming resampler and an energy VAD."""

from flowcat_ft.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams, VADState

__all__ = [
    "EnergyVADAnalyzer",
    "StreamingResampler",
    "VADParams",
    "VADState",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]
