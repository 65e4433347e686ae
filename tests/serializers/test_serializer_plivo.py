"""Plivo Audio Streams: a call as Plivo sends it (shapes from its stream event protocol page:
camelCase, numbers as numbers, extra_headers as a string), playAudio / checkpoint /
clearAudio as Plivo reads them, and bad input."""

import base64
import json

import pytest
from serializer_helpers import edited, receive_all
from websockets.frames import CloseCode

from flowcat_ft.serializers import (
    AudioIn,
    DtmfIn,
    Ignored,
    MarkPlayed,
    PlivoSerializer,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from flowcat_ft.serializers.plivo import parse_extra_headers

STREAM = "87654321-4321-4321-4321-cba987654321"
CALL = "12345678-1234-1234-1234-123456789abc"

START = {
    "event": "start",
    "sequenceNumber": 1,
    "start": {
        "callId": CALL,
        "streamId": STREAM,
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": "userId=12345;sessionId=abc-xyz",
}
ULAW = bytes(range(40, 200))
DTMF = {"event": "dtmf", "sequenceNumber": 5, "streamId": STREAM, "dtmf": {"digit": "9"}}
PLAYED = {"event": "playedStream", "streamId": STREAM, "name": "customer greeting audio"}
CLEARED = {"sequenceNumber": 0, "event": "clearedAudio", "streamId": STREAM}


def media(payload: bytes, chunk: int, track: str = "inbound") -> dict:
    return {
        "event": "media",
        "sequenceNumber": chunk + 1,
        "streamId": STREAM,
        "media": {
            "track": track,
            "timestamp": str(1705312200000 + 20 * chunk),
            "chunk": chunk,
            "payload": base64.b64encode(payload).decode(),
        },
        "extra_headers": "userId=12345;sessionId=abc-xyz",
    }


def started(start: dict = START) -> PlivoSerializer:
    serializer = PlivoSerializer()
    receive_all(serializer, start)
    return serializer


def test_a_call_as_plivo_sends_it():
    serializer = PlivoSerializer()
    events = receive_all(serializer, START, media(ULAW, 1), DTMF, PLAYED, CLEARED)
    assert events == [
        StreamStarted(
            call_id=CALL,
            stream_id=STREAM,
            sample_rate=8000,
            codec="mulaw",
            channels=1,
            metadata={"parameters": {"userId": "12345", "sessionId": "abc-xyz"}, "message": START},
        ),
        AudioIn(ULAW),
        DtmfIn("9"),
        MarkPlayed("customer greeting audio"),
        Ignored("clearedAudio"),
    ]


def test_l16_at_16_khz():
    start = edited(START, "start.mediaFormat", {"encoding": "audio/x-l16", "sampleRate": 16000})
    serializer = started(start)
    assert (serializer.codec, serializer.sample_rate) == ("pcm16", 16000)
    assert json.loads(serializer.send_audio(b"\x01\x00"))["media"] == {
        "contentType": "audio/x-l16",
        "sampleRate": 16000,
        "payload": "AQA=",
    }


def test_undocumented_but_tolerated_messages():
    assert receive_all(started(), {"event": "played", "name": "m"}) == [MarkPlayed("m")]
    assert receive_all(started(), {"event": "stop"}) == [StreamStopped("stop")]


@pytest.mark.parametrize(
    ("text", "parameters"),
    [
        ("userId=12345;sessionId=abc-xyz", {"userId": "12345", "sessionId": "abc-xyz"}),
        ("test1=12,test2=123", {"test1": "12", "test2": "123"}),
        ("a=1; b = 2 ;", {"a": "1", "b": "2"}),
        ("{}", {}),
        ("", {}),
        ("novalue;=orphan;k=v=w", {"k": "v=w"}),
    ],
)
def test_extra_headers(text, parameters):
    assert parse_extra_headers(text) == parameters


def test_start_without_extra_headers():
    assert started(edited(START, "extra_headers")).stream.metadata["parameters"] == {}


def test_messages_to_plivo():
    serializer = started()
    sent = json.loads(serializer.send_audio(ULAW))
    assert sent == {
        "event": "playAudio",
        "media": {
            "contentType": "audio/x-mulaw",
            "sampleRate": 8000,
            "payload": base64.b64encode(ULAW).decode(),
        },
    }
    assert base64.b64decode(sent["media"]["payload"], validate=True) == ULAW
    assert json.loads(serializer.send_mark("customer greeting audio")) == {
        "event": "checkpoint",
        "streamId": STREAM,
        "name": "customer greeting audio",
    }
    assert json.loads(serializer.send_clear()) == {"event": "clearAudio", "streamId": STREAM}


BEFORE_START = [
    (media(ULAW, 1), CloseCode.POLICY_VIOLATION, "a media message before the stream started"),
    (DTMF, CloseCode.POLICY_VIOLATION, "DTMF before the stream started"),
    (PLAYED, CloseCode.POLICY_VIOLATION, "a mark before the stream started"),
    (edited(START, "start.streamId"), CloseCode.INVALID_DATA, "missing field 'start.streamId'"),
    (
        edited(START, "start.mediaFormat.encoding", "audio/x-alaw"),
        CloseCode.UNSUPPORTED_DATA,
        "unsupported audio encoding 'audio/x-alaw'.*audio/x-l16, audio/x-mulaw",
    ),
    (
        edited(START, "start.mediaFormat.sampleRate", -8000),
        CloseCode.INVALID_DATA,
        "'start.mediaFormat.sampleRate' must be a positive integer",
    ),
    (
        edited(START, "extra_headers", {"userId": "1"}),
        CloseCode.INVALID_DATA,
        "'extra_headers' must be a string, not an object",
    ),
    ({"event": "connected"}, CloseCode.POLICY_VIOLATION, "unknown event 'connected' in the plivo"),
    ({"event": "checkpoint"}, CloseCode.POLICY_VIOLATION, "unknown event 'checkpoint'"),
]

L16 = edited(START, "start.mediaFormat.encoding", "audio/x-l16")
AFTER_START = [
    (START, START, CloseCode.POLICY_VIOLATION, "a second start"),
    (L16, media(b"\x00" * 321, 1), CloseCode.INVALID_DATA, "321 bytes of audio"),
    (START, edited(media(ULAW, 1), "media.payload", "QUJD\n"), CloseCode.INVALID_DATA, "base64"),
    (START, edited(media(ULAW, 1), "media", None), CloseCode.INVALID_DATA, "'media' must be an"),
    (START, edited(DTMF, "dtmf.digit", "10"), CloseCode.INVALID_DATA, "not a DTMF digit"),
    (START, edited(PLAYED, "name"), CloseCode.INVALID_DATA, "missing field 'name'"),
]


@pytest.mark.parametrize(("message", "code", "match"), BEFORE_START)
def test_bad_input_before_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(PlivoSerializer(), message)
    assert info.value.close_code == code


@pytest.mark.parametrize(("start", "message", "code", "match"), AFTER_START)
def test_bad_input_after_start(start, message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(started(start), message)
    assert info.value.close_code == code
