"""Twilio Media Streams: a call as Twilio sends it (shapes from its WebSocket messages page),
the messages sent back as Twilio reads them, and every kind of bad input."""

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
    ProtocolError,
    StreamStarted,
    StreamStopped,
    TwilioSerializer,
)

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA5a6b4c3d2e1f0a9b8c7d6e5f4a3b2c1d"
ACCOUNT = "AC25e16e9a716a4a1786a7c83f58e30482"

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe"},
    },
    "streamSid": STREAM,
}
ULAW = bytes(range(40, 200))  # 20 ms at 8 kHz


def media(payload: bytes, chunk: int, track: str = "inbound") -> dict:
    return {
        "event": "media",
        "sequenceNumber": str(chunk + 1),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(20 * chunk),
            "payload": base64.b64encode(payload).decode(),
        },
        "streamSid": STREAM,
    }


DTMF = {
    "event": "dtmf",
    "streamSid": STREAM,
    "sequenceNumber": "4",
    "dtmf": {"track": "inbound_track", "digit": "1"},
}
MARK = {"event": "mark", "sequenceNumber": "5", "streamSid": STREAM, "mark": {"name": "my label"}}
STOP = {
    "event": "stop",
    "sequenceNumber": "6",
    "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    "streamSid": STREAM,
}


def started() -> TwilioSerializer:
    serializer = TwilioSerializer()
    receive_all(serializer, CONNECTED, START)
    return serializer


def test_a_call_as_twilio_sends_it():
    serializer = TwilioSerializer()
    assert (serializer.started, serializer.sample_rate, serializer.codec) == (False, None, None)
    events = receive_all(
        serializer, CONNECTED, START, media(ULAW, 1), media(ULAW[::-1], 2), DTMF, MARK, STOP
    )
    assert events == [
        Ignored("connected"),
        StreamStarted(
            call_id=CALL,
            stream_id=STREAM,
            sample_rate=8000,
            codec="mulaw",
            channels=1,
            metadata={"parameters": {"FirstName": "Jane", "LastName": "Doe"}, "message": START},
        ),
        AudioIn(ULAW),
        AudioIn(ULAW[::-1]),
        DtmfIn("1"),
        MarkPlayed("my label"),
        StreamStopped("stop"),
    ]
    assert (serializer.started, serializer.sample_rate, serializer.codec) == (True, 8000, "mulaw")
    assert serializer.stream == events[1]


def test_media_sent_back_is_the_message_twilio_reads():
    serializer = TwilioSerializer()
    receive_all(serializer, START)
    for payload in (ULAW, b"", ULAW[::-1]):  # the first message and those after it
        assert json.loads(serializer.send_audio(payload)) == {
            "event": "media",
            "streamSid": STREAM,
            "media": {"payload": base64.b64encode(payload).decode()},
        }


def test_start_without_custom_parameters_or_channels():
    start = edited(edited(START, "start.customParameters"), "start.mediaFormat.channels")
    (stream,) = TwilioSerializer().receive(json.dumps(start))
    assert stream.metadata["parameters"] == {}
    assert stream.channels == 1


def test_outbound_track_is_not_caller_audio():
    assert receive_all(started(), media(ULAW, 1, track="outbound")) == [
        Ignored("media", "outbound track")
    ]


def test_messages_to_twilio():
    serializer = started()
    sent = json.loads(serializer.send_audio(ULAW))
    assert sent == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(ULAW).decode()},
    }
    assert base64.b64decode(sent["media"]["payload"], validate=True) == ULAW
    assert json.loads(serializer.send_mark("turn-1")) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "turn-1"},
    }
    assert json.loads(serializer.send_clear()) == {"event": "clear", "streamSid": STREAM}
    assert isinstance(serializer.send_clear(), str)  # a text frame


def test_unknown_event_closes_unless_told_to_ignore():
    message = json.dumps({"event": "transcription", "streamSid": STREAM})
    with pytest.raises(ProtocolError, match="unknown event 'transcription' in the twilio"):
        started().receive(message)
    assert TwilioSerializer(ignore_unknown_events=True).receive(message) == [
        Ignored("transcription")
    ]


def b64(text: str) -> dict:
    return edited(media(b"", 1), "media.payload", text)


BEFORE_START = [
    (media(ULAW, 1), CloseCode.POLICY_VIOLATION, "a media message before the stream started"),
    (DTMF, CloseCode.POLICY_VIOLATION, "DTMF before the stream started"),
    (MARK, CloseCode.POLICY_VIOLATION, "a mark before the stream started"),
    (edited(START, "start.callSid"), CloseCode.INVALID_DATA, "missing field 'start.callSid'"),
    (
        edited(START, "start.mediaFormat"),
        CloseCode.INVALID_DATA,
        "missing field 'start.mediaFormat.sampleRate'",
    ),
    (
        edited(START, "start.streamSid", 8000),
        CloseCode.INVALID_DATA,
        "field 'start.streamSid' must be a string, not a number",
    ),
    (
        edited(START, "start.mediaFormat.sampleRate", "8 kHz"),
        CloseCode.INVALID_DATA,
        "field 'start.mediaFormat.sampleRate' must be a positive integer",
    ),
    (
        edited(START, "start.mediaFormat.encoding", "audio/x-alaw"),
        CloseCode.UNSUPPORTED_DATA,
        "unsupported audio encoding 'audio/x-alaw'",
    ),
    (
        edited(START, "start.customParameters", ["a=b"]),
        CloseCode.INVALID_DATA,
        "field 'start.customParameters' must be an object, not an array",
    ),
    ({"event": "transcription"}, CloseCode.POLICY_VIOLATION, "unknown event 'transcription'"),
]

AFTER_START = [
    (START, CloseCode.POLICY_VIOLATION, "a second start"),
    (b64("no+JhoaJjpz!"), CloseCode.INVALID_DATA, "field 'media.payload' is not valid base64"),
    (b64("no+JhoaJjpz"), CloseCode.INVALID_DATA, "field 'media.payload' is not valid base64"),
    (b64("no+J hoaJ"), CloseCode.INVALID_DATA, "field 'media.payload' is not valid base64"),
    (
        edited(media(ULAW, 1), "media.payload"),
        CloseCode.INVALID_DATA,
        "missing field 'media.payload'",
    ),
    (
        edited(media(ULAW, 1), "media.payload", 160),
        CloseCode.INVALID_DATA,
        "field 'media.payload' must be a string, not a number",
    ),
    (
        edited(media(ULAW, 1), "media", "payload"),
        CloseCode.INVALID_DATA,
        "field 'media' must be an object, not a string",
    ),
    (edited(DTMF, "dtmf.digit", "11"), CloseCode.INVALID_DATA, "'11' is not a DTMF digit"),
    (edited(DTMF, "dtmf.digit", "X"), CloseCode.INVALID_DATA, "'X' is not a DTMF digit"),
    (edited(DTMF, "dtmf.digit", 1), CloseCode.INVALID_DATA, "'dtmf.digit' must be a string"),
    (edited(MARK, "mark"), CloseCode.INVALID_DATA, "missing field 'mark.name'"),
]


@pytest.mark.parametrize(("message", "code", "match"), BEFORE_START)
def test_bad_input_before_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(TwilioSerializer(), CONNECTED, message)
    assert info.value.close_code == code


@pytest.mark.parametrize(("message", "code", "match"), AFTER_START)
def test_bad_input_after_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(started(), message)
    assert info.value.close_code == code
