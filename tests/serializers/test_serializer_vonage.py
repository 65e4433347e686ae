"""Vonage Voice WebSockets: websocket:connected then binary 16-bit PCM with JSON events
interleaved (shapes from Vonage's WebSockets guide), binary audio and JSON commands back
(clear, notify), unknown events ignored, and bad input."""

import json

import pytest
from websockets.frames import CloseCode

from flowcat_ft.serializers import (
    AudioIn,
    DtmfIn,
    Ignored,
    MarkPlayed,
    ProtocolError,
    StreamStarted,
    VonageSerializer,
)
from flowcat_ft.serializers.vonage import parse_content_type

CONNECTED = {
    "event": "websocket:connected",
    "content-type": "audio/l16;rate=16000",
    "language": "en-GB",
    "caller-id": "447700900123",
}
FRAME = bytes(range(256)) * 2 + bytes(128)  # 20 ms at 16 kHz: 640 bytes
DTMF = {"event": "websocket:dtmf", "digit": "5", "duration": 260}


def receive_all(serializer: VonageSerializer, *messages: dict | bytes) -> list:
    events = []
    for message in messages:
        wire = message if isinstance(message, bytes) else json.dumps(message)
        events += serializer.receive(wire)
    return events


def started(connected: dict = CONNECTED) -> VonageSerializer:
    serializer = VonageSerializer()
    receive_all(serializer, connected)
    return serializer


def test_a_call_as_vonage_sends_it():
    serializer = VonageSerializer()
    assert serializer.sample_rate is None
    events = receive_all(
        serializer,
        CONNECTED,
        FRAME,
        FRAME[::-1],
        DTMF,
        {"event": "websocket:cleared"},
        {"event": "websocket:notify", "payload": {"name": "turn-1"}},
        {"event": "websocket:hangup"},  # not in the guide: ignored, as it asks
    )
    assert events == [
        StreamStarted(
            call_id="",
            stream_id="",
            sample_rate=16000,
            codec="pcm16",
            channels=1,
            metadata={
                "parameters": {"language": "en-GB", "caller-id": "447700900123"},
                "message": CONNECTED,
            },
        ),
        AudioIn(FRAME),
        AudioIn(FRAME[::-1]),
        DtmfIn("5"),
        Ignored("websocket:cleared"),
        MarkPlayed("turn-1"),
        Ignored("websocket:hangup"),
    ]
    assert (serializer.sample_rate, serializer.codec) == (16000, "pcm16")


@pytest.mark.parametrize(
    ("content_type", "rate"),
    [("audio/l16;rate=8000", 8000), ("audio/L16; rate=24000", 24000)],
)
def test_sample_rate_comes_from_the_content_type(content_type, rate):
    assert parse_content_type(content_type) == rate


def test_dtmf_in_a_nested_object_too():
    message = {"event": "websocket:dtmf", "dtmf": {"digit": "#", "duration": 100}}
    assert receive_all(started(), message) == [DtmfIn("#")]


def test_messages_to_vonage():
    serializer = started()
    assert serializer.send_audio(FRAME) == FRAME
    assert isinstance(serializer.send_audio(bytearray(FRAME)), bytes)
    assert json.loads(serializer.send_clear()) == {"action": "clear"}
    assert json.loads(serializer.send_mark("turn-2")) == {
        "action": "notify",
        "payload": {"name": "turn-2"},
    }


def test_unknown_events_can_be_made_to_close():
    serializer = VonageSerializer(ignore_unknown_events=False)
    receive_all(serializer, CONNECTED)
    with pytest.raises(ProtocolError, match="unknown event 'websocket:hangup' in the vonage"):
        receive_all(serializer, {"event": "websocket:hangup"})


BEFORE_START = [
    (FRAME, CloseCode.POLICY_VIOLATION, "audio before the stream started"),
    (DTMF, CloseCode.POLICY_VIOLATION, "DTMF before the stream started"),
    (
        {"event": "websocket:notify", "payload": {"name": "m"}},
        CloseCode.POLICY_VIOLATION,
        "a mark before the stream started",
    ),
    ({"event": "websocket:connected"}, CloseCode.INVALID_DATA, "missing field 'content-type'"),
    (
        {**CONNECTED, "content-type": "audio/l16;rate=44100"},
        CloseCode.UNSUPPORTED_DATA,
        "unsupported content-type 'audio/l16;rate=44100'",
    ),
    (
        {**CONNECTED, "content-type": "audio/pcmu;rate=8000"},
        CloseCode.UNSUPPORTED_DATA,
        "unsupported content-type",
    ),
    (
        {**CONNECTED, "content-type": "audio/l16"},
        CloseCode.UNSUPPORTED_DATA,
        "unsupported content-type",
    ),
    (
        {**CONNECTED, "content-type": 16000},
        CloseCode.INVALID_DATA,
        "field 'content-type' must be a string",
    ),
]

AFTER_START = [
    (CONNECTED, CloseCode.POLICY_VIOLATION, "a second start"),
    (FRAME[:-1], CloseCode.INVALID_DATA, "639 bytes of audio are not a whole number of pcm16"),
    ({"event": "websocket:dtmf"}, CloseCode.INVALID_DATA, "missing field 'dtmf.digit'"),
    ({**DTMF, "digit": 5}, CloseCode.INVALID_DATA, "field 'digit' must be a string"),
    ({**DTMF, "digit": "55"}, CloseCode.INVALID_DATA, "'55' is not a DTMF digit"),
    (
        {"event": "websocket:notify", "payload": "turn-1"},
        CloseCode.INVALID_DATA,
        "field 'payload' must be an object",
    ),
    ({"event": "websocket:notify"}, CloseCode.INVALID_DATA, "missing field 'payload.name'"),
    ({"action": "clear"}, CloseCode.INVALID_DATA, "missing field 'event'"),
]


@pytest.mark.parametrize(("message", "code", "match"), BEFORE_START)
def test_bad_input_before_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(VonageSerializer(), message)
    assert info.value.close_code == code


@pytest.mark.parametrize(("message", "code", "match"), AFTER_START)
def test_bad_input_after_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(started(), message)
    assert info.value.close_code == code
