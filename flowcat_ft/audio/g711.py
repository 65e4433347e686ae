"""G.711 µ-law and A-law codecs for 16-bit PCM, by table lookup.

The codecs follow ITU-T G.711 bit for bit, with the conventions of the classic Sun
``g711.c`` (and so of the old ``audioop.lin2ulaw``/``ulaw2lin`` and ``lin2alaw``/``alaw2lin``):
the µ-law encoder quantises the top 14 bits of a sample and the A-law encoder its top 13
bits; the decoders return the middle of each quantisation interval, scaled to 16 bits.

All four tables are computed once, at import.  Each function maps ``len(src)`` items of
``src`` into the start of the caller's ``out`` array (which may be longer) and returns that
count, allocating no sample buffer::

    codes = np.empty(160, np.uint8)
    ulaw_encode(frame, codes)
"""

import numpy as np

__all__ = ["DECODERS", "ENCODERS", "alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

# Largest magnitude of each of the eight segments, in the encoders' 14-bit (µ-law, biased)
# and 13-bit (A-law) units.
_ULAW_SEGMENT_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ULAW_BIAS = 0x84  # 33 in 14-bit units, scaled to 16 bits

_CODE = np.dtype(np.uint8)
_SAMPLE = np.dtype(np.int16)
_UNSIGNED = {1: _CODE, 2: np.dtype(np.uint16)}  # by item size

_CODES = np.arange(256, dtype=np.int32)
# Every int16 sample, at the index of its bit pattern read as uint16.
_SAMPLES = np.arange(65536).astype(np.uint16).view(np.int16).astype(np.int32)


def _ulaw_decode_table() -> np.ndarray:
    code = ~_CODES & 0xFF  # µ-law codes are sent with every bit inverted
    mantissa = code & 0x0F
    segment = (code >> 4) & 0x07
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << segment) - _ULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _ulaw_encode_table() -> np.ndarray:
    value = _SAMPLES >> 2
    # Magnitudes past the last segment take its largest code.
    magnitude = np.minimum(np.abs(value) + (_ULAW_BIAS >> 2), _ULAW_SEGMENT_END[-1])
    segment = np.searchsorted(_ULAW_SEGMENT_END, magnitude)
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    return (code ^ np.where(value < 0, 0x7F, 0xFF)).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    code = _CODES ^ 0x55  # A-law codes are sent with the even bits inverted
    mantissa = code & 0x0F
    segment = (code >> 4) & 0x07
    magnitude = (mantissa << 4) + 8 + np.where(segment > 0, 0x100, 0)
    magnitude <<= np.maximum(segment - 1, 0)
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    value = _SAMPLES >> 3
    magnitude = np.where(value < 0, -value - 1, value)
    segment = np.searchsorted(_ALAW_SEGMENT_END, magnitude)
    code = (segment << 4) | ((magnitude >> np.maximum(segment, 1)) & 0x0F)
    return (code ^ np.where(value < 0, 0x55, 0xD5)).astype(np.uint8)


_ULAW_DECODE = _ulaw_decode_table()
_ULAW_ENCODE = _ulaw_encode_table()
_ALAW_DECODE = _alaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()


def _lookup(table: np.ndarray, src: np.ndarray, src_dtype: np.dtype, out: np.ndarray) -> int:
    if src.dtype != src_dtype:
        raise TypeError(f"src must be a {src_dtype} array, not {src.dtype}")
    if out.dtype != table.dtype:
        raise TypeError(f"out must be a {table.dtype} array, not {out.dtype}")
    n = len(src)
    if len(out) < n:
        raise ValueError(f"out holds {len(out)} items, {n} needed")
    # Each item's bit pattern, read as an unsigned integer, is its index in the table.
    # mode="clip" never clips (every index is in range) but, unlike the default mode, lets
    # take() write straight into out.
    np.take(table, src.view(_UNSIGNED[src.itemsize]), out=out[:n], mode="clip")
    return n


def ulaw_decode(src: np.ndarray, out: np.ndarray) -> int:
    """Decode µ-law codes (uint8) into int16 samples in ``out``; return ``len(src)``."""
    return _lookup(_ULAW_DECODE, src, _CODE, out)


def ulaw_encode(src: np.ndarray, out: np.ndarray) -> int:
    """Encode int16 samples into µ-law codes (uint8) in ``out``; return ``len(src)``."""
    return _lookup(_ULAW_ENCODE, src, _SAMPLE, out)


def alaw_decode(src: np.ndarray, out: np.ndarray) -> int:
    """Decode A-law codes (uint8) into int16 samples in ``out``; return ``len(src)``."""
    return _lookup(_ALAW_DECODE, src, _CODE, out)


def alaw_encode(src: np.ndarray, out: np.ndarray) -> int:
    """Encode int16 samples into A-law codes (uint8) in ``out``; return ``len(src)``."""
    return _lookup(_ALAW_ENCODE, src, _SAMPLE, out)


DECODERS = {"mulaw": ulaw_decode, "alaw": alaw_decode}
"""Each G.711 codec's decoder, by the codec's name in frames and serializers."""

ENCODERS = {"mulaw": ulaw_encode, "alaw": alaw_encode}
"""Each G.711 codec's encoder, by name."""
