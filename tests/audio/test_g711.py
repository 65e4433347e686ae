"""G.711 codecs against a scalar implementation of the standard, over every input."""

import numpy as np
import pytest

from flowcat_ft.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_SAMPLES = np.arange(-32768, 32768).astype(np.int16)
ALL_CODES = np.arange(256).astype(np.uint8)


# Scalar reference, one sample at a time, written from G.711's segment tables.


def ref_ulaw_encode(sample: int) -> int:
    value = sample >> 2  # the top 14 bits
    sign = 0x80 if value < 0 else 0x00
    biased = min(abs(value), 8159) + 33
    for segment in range(8):
        if biased < 64 << segment:
            code = sign | segment << 4 | (biased >> (segment + 1)) & 0x0F
            break
    else:
        code = sign | 0x7F
    return ~code & 0xFF


def ref_ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    segment, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = ((2 * mantissa + 33) << segment) - 33  # 14-bit units
    return 4 * (-magnitude if code & 0x80 else magnitude)


def ref_alaw_encode(sample: int) -> int:
    value = sample >> 3  # the top 13 bits
    sign = 0x80 if value >= 0 else 0x00
    magnitude = value if value >= 0 else -value - 1
    segment = next(s for s in range(8) if magnitude < 32 << s)
    mantissa = (magnitude >> max(segment, 1)) & 0x0F
    return (sign | segment << 4 | mantissa) ^ 0x55


def ref_alaw_decode(code: int) -> int:
    code ^= 0x55
    segment, mantissa = (code >> 4) & 0x07, code & 0x0F
    # 13-bit units
    magnitude = 2 * mantissa + 1 if segment == 0 else (2 * mantissa + 33) << (segment - 1)
    return 8 * (magnitude if code & 0x80 else -magnitude)


def encode(function, samples: np.ndarray) -> np.ndarray:
    out = np.empty(len(samples), np.uint8)
    assert function(samples, out) == len(samples)
    return out


def decode(function, codes: np.ndarray) -> np.ndarray:
    out = np.empty(len(codes), np.int16)
    assert function(codes, out) == len(codes)
    return out


@pytest.mark.parametrize(
    ("function", "reference"), [(ulaw_encode, ref_ulaw_encode), (alaw_encode, ref_alaw_encode)]
)
def test_encoders_match_the_reference_on_every_sample(function, reference):
    expected = np.array([reference(int(x)) for x in ALL_SAMPLES], np.uint8)
    np.testing.assert_array_equal(encode(function, ALL_SAMPLES), expected)


@pytest.mark.parametrize(
    ("function", "reference"), [(ulaw_decode, ref_ulaw_decode), (alaw_decode, ref_alaw_decode)]
)
def test_decoders_match_the_reference_on_every_code(function, reference):
    expected = np.array([reference(int(c)) for c in ALL_CODES], np.int16)
    np.testing.assert_array_equal(decode(function, ALL_CODES), expected)


def test_known_values():
    codes = np.array([0xFF, 0x7F, 0x00, 0x80], np.uint8)
    assert decode(ulaw_decode, codes).tolist() == [0, 0, -32124, 32124]
    samples = np.array([0, 32767, -32768], np.int16)
    assert encode(ulaw_encode, samples).tolist() == [0xFF, 0x80, 0x00]
    codes = np.array([0xD5, 0x55, 0xAA, 0x2A], np.uint8)
    assert decode(alaw_decode, codes).tolist() == [8, -8, 32256, -32256]
    samples = np.array([0, -1, 32767, -32768], np.int16)
    assert encode(alaw_encode, samples).tolist() == [0xD5, 0x55, 0xAA, 0x2A]


def test_ulaw_error_is_half_a_step_of_the_segment():
    codes = encode(ulaw_encode, ALL_SAMPLES)
    error = np.abs(ALL_SAMPLES.astype(np.int32) - decode(ulaw_decode, codes))
    step = 8 << ((~codes >> 4) & 0x07).astype(np.int32)  # 16-bit step of each code's segment
    in_range = np.abs(ALL_SAMPLES.astype(np.int32)) <= 32632
    # Half a step, plus the two low bits the 14-bit encoder drops.
    assert np.all(error[in_range] <= step[in_range] // 2 + 3)
    # Beyond the last segment, samples take the largest magnitude.
    assert set(codes[~in_range].tolist()) == {0x00, 0x80}


def test_alaw_error_is_half_a_step_of_the_segment():
    codes = encode(alaw_encode, ALL_SAMPLES)
    error = np.abs(ALL_SAMPLES.astype(np.int32) - decode(alaw_decode, codes))
    segment = ((codes ^ 0x55) >> 4) & 0x07
    step = 16 << np.maximum(segment.astype(np.int32) - 1, 0)
    assert np.all(error <= step // 2)


def test_ulaw_codes_survive_a_round_trip():
    again = encode(ulaw_encode, decode(ulaw_decode, ALL_CODES))
    expected = ALL_CODES.copy()
    expected[0x7F] = 0xFF  # 0x7F is the other zero; the encoder writes 0xFF for zero
    np.testing.assert_array_equal(again, expected)


def test_alaw_codes_survive_a_round_trip():
    again = encode(alaw_encode, decode(alaw_decode, ALL_CODES))
    np.testing.assert_array_equal(again, ALL_CODES)


def test_out_may_be_longer_and_only_its_start_is_written():
    out = np.full(10, 7, np.int16)
    assert ulaw_decode(np.array([0xFF, 0x00], np.uint8), out) == 2
    assert out.tolist() == [0, -32124] + [7] * 8
    codes = np.full(4, 7, np.uint8)
    assert alaw_encode(np.array([0], np.int16), codes) == 1
    assert codes.tolist() == [0xD5, 7, 7, 7]


def test_arrays_too_short_or_of_the_wrong_type_are_refused():
    with pytest.raises(ValueError):
        ulaw_encode(np.zeros(4, np.int16), np.zeros(3, np.uint8))
    with pytest.raises(TypeError):
        alaw_decode(np.zeros(4, np.uint8), np.zeros(4, np.float32))
    with pytest.raises(TypeError):
        ulaw_encode(np.zeros(4, np.int32), np.zeros(4, np.uint8))
