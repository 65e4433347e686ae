"""Exotel AgentStream (Voicebot applet): a call as Exotel sends it (shapes from its WebSocket
protocol page: snake_case, sample rate as a string, 16-bit PCM), the messages sent back with
the stream_sid, the stop reasons, and bad input."""

import base64
import json

import pytest
from serializer_helpers import edited, receive_all
from websockets.frames import CloseCode

from flowcat_ft.serializers import (
    AudioIn,
    DtmfIn,
    ExotelSerializer,
    Ignored,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)

STREAM = "MZa1b2c3d4e5f6a7b8c9d0e1f2a3"
CALL = "CAf0e1d2c3b4a5f6e7d8c9b0a1b2"

CONNECTED = {"event": "connected"}
START = {
    "event": "start",
    "sequence_number": "1",
    "stream_sid": STREAM,
    "start": {
        "stream_sid": STREAM,
        "call_sid": CALL,
        "account_sid": "ACexotel",
        "from": "+919876543210",
        "to": "+918047491899",
        "custom_parameters": {"key1": "value1"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
    },
}
PCM = bytes(range(256)) * 6 + bytes(64)  # 100 ms at 8 kHz: 800 samples, 1600 bytes
DTMF = {
    "event": "dtmf",
    "sequence_number": "7",
    "stream_sid": STREAM,
    "dtmf": {"digit": "5", "duration": "100"},
}
MARK = {"event": "mark", "sequence_number": "15", "stream_sid": STREAM, "mark": {"name": "t3"}}
STOP = {
    "event": "stop",
    "sequence_number": "20",
    "stream_sid": STREAM,
    "stop": {"call_sid": CALL, "account_sid": "ACexotel", "reason": "callended"},
}


def media(payload: bytes, chunk: int) -> dict:
    return {
        "event": "media",
        "sequence_number": str(chunk + 2),
        "stream_sid": STREAM,
        "media": {
            "chunk": str(chunk),
            "timestamp": str(100 * chunk),
            "payload": base64.b64encode(payload).decode(),
        },
    }


def started(start: dict = START) -> ExotelSerializer:
    serializer = ExotelSerializer()
    receive_all(serializer, CONNECTED, start)
    return serializer


def test_a_call_as_exotel_sends_it():
    serializer = ExotelSerializer()
    events = receive_all(serializer, CONNECTED, START, media(PCM, 1), DTMF, MARK, STOP)
    assert events == [
        Ignored("connected"),
        StreamStarted(
            call_id=CALL,
            stream_id=STREAM,
            sample_rate=8000,
            codec="pcm16",
            channels=1,
            metadata={"parameters": {"key1": "value1"}, "message": START},
        ),
        AudioIn(PCM),
        DtmfIn("5"),
        MarkPlayed("t3"),
        StreamStopped("callended"),
    ]


@pytest.mark.parametrize("rate", ["16000", 24000])
def test_higher_sample_rates(rate):
    assert started(edited(START, "start.media_format.sample_rate", rate)).sample_rate == int(rate)


def test_stop_without_a_reason():
    assert receive_all(started(), edited(STOP, "stop")) == [StreamStopped("stop")]


def test_messages_to_exotel_carry_the_stream_sid():
    serializer = started()
    sent = json.loads(serializer.send_audio(PCM))
    assert sent == {
        "event": "media",
        "stream_sid": STREAM,
        "media": {"payload": base64.b64encode(PCM).decode()},
    }
    assert json.loads(serializer.send_mark("t4")) == {
        "event": "mark",
        "stream_sid": STREAM,
        "mark": {"name": "t4"},
    }
    assert json.loads(serializer.send_clear()) == {"event": "clear", "stream_sid": STREAM}


def test_exotel_wants_100_ms_chunks():
    # Exotel refuses chunks under 3.2 kB (100 ms at 8 kHz); the transport reads this.
    assert ExotelSerializer.audio_chunk_ms == 100


BEFORE_START = [
    (media(PCM, 1), CloseCode.POLICY_VIOLATION, "a media message before the stream started"),
    (DTMF, CloseCode.POLICY_VIOLATION, "DTMF before the stream started"),
    (MARK, CloseCode.POLICY_VIOLATION, "a mark before the stream started"),
    (edited(START, "start.call_sid"), CloseCode.INVALID_DATA, "missing field 'start.call_sid'"),
    (
        edited(START, "start.media_format.sample_rate", "8kHz"),
        CloseCode.INVALID_DATA,
        "'start.media_format.sample_rate' must be a positive integer, not '8kHz'",
    ),
    (
        edited(START, "start.media_format.encoding", "audio/x-mulaw"),
        CloseCode.UNSUPPORTED_DATA,
        "unsupported audio encoding 'audio/x-mulaw'",
    ),
    (
        edited(START, "start.custom_parameters", "key1=value1"),
        CloseCode.INVALID_DATA,
        "'start.custom_parameters' must be an object, not a string",
    ),
    ({"event": "clear", "stream_sid": STREAM}, CloseCode.POLICY_VIOLATION, "unknown event"),
]

AFTER_START = [
    (START, CloseCode.POLICY_VIOLATION, "a second start"),
    (media(PCM[:-1], 1), CloseCode.INVALID_DATA, "1599 bytes of audio are not a whole number"),
    (edited(media(PCM, 1), "media.payload", "AAAA===="), CloseCode.INVALID_DATA, "base64"),
    (edited(media(PCM, 1), "media"), CloseCode.INVALID_DATA, "missing field 'media.payload'"),
    (edited(DTMF, "dtmf.digit", ""), CloseCode.INVALID_DATA, "'' is not a DTMF digit"),
    (edited(STOP, "stop.reason", 1), CloseCode.INVALID_DATA, "'stop.reason' must be a string"),
]


@pytest.mark.parametrize(("message", "code", "match"), BEFORE_START)
def test_bad_input_before_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(ExotelSerializer(), CONNECTED, message)
    assert info.value.close_code == code


@pytest.mark.parametrize(("message", "code", "match"), AFTER_START)
def test_bad_input_after_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(started(), message)
    assert info.value.close_code == code
