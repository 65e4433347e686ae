"""Telnyx media streaming: a call as Telnyx sends it (shapes from its media streaming guide and
AsyncAPI reference), PCMU, PCMA and big-endian L16, the messages sent back, error frames, and
bad input."""

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
    TelnyxSerializer,
)

STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CALL = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"
USER = "3E6F995F-85F7-4705-9741-53B116D28237"

CONNECTED = {"event": "connected", "version": "1.0.0"}
START = {
    "event": "start",
    "sequence_number": "1",
    "start": {
        "user_id": USER,
        "call_control_id": CALL,
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
    "stream_id": STREAM,
}
AUDIO = bytes(range(40, 200))
DTMF = {
    "event": "dtmf",
    "stream_id": STREAM,
    "occurred_at": "2025-06-05T08:54:19.698408Z",
    "sequence_number": "5",
    "dtmf": {"digit": "#"},
}
MARK = {"event": "mark", "sequence_number": "6", "stream_id": STREAM, "mark": {"name": "m1"}}
ERROR = {
    "stream_id": STREAM,
    "event": "error",
    "sequence_number": "7",
    "error": {"title": "rate_limit_reached", "code": "100005", "detail": "Too many requests"},
}
STOP = {
    "event": "stop",
    "sequence_number": "8",
    "stop": {"user_id": USER, "call_control_id": CALL},
    "stream_id": STREAM,
}


def media(payload: bytes, chunk: int, track: str = "inbound") -> dict:
    return {
        "event": "media",
        "sequence_number": str(chunk + 1),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(20 * chunk),
            "payload": base64.b64encode(payload).decode(),
        },
        "stream_id": STREAM,
    }


def started(start: dict = START) -> TelnyxSerializer:
    serializer = TelnyxSerializer()
    receive_all(serializer, CONNECTED, start)
    return serializer


def test_a_call_as_telnyx_sends_it():
    serializer = TelnyxSerializer()
    events = receive_all(
        serializer,
        CONNECTED,
        START,
        media(AUDIO, 2),
        media(AUDIO, 1),  # Telnyx does not promise order; the transport reads what it gets.
        media(AUDIO, 3, track="outbound"),
        DTMF,
        MARK,
        ERROR,
        STOP,
    )
    assert events == [
        Ignored("connected"),
        StreamStarted(
            call_id=CALL,
            stream_id=STREAM,
            sample_rate=8000,
            codec="mulaw",
            channels=1,
            metadata={"parameters": {}, "message": START},
        ),
        AudioIn(AUDIO),
        AudioIn(AUDIO),
        Ignored("media", "outbound track"),
        DtmfIn("#"),
        MarkPlayed("m1"),
        Ignored("error", "100005 rate_limit_reached Too many requests"),
        StreamStopped("stop"),
    ]


@pytest.mark.parametrize(
    ("encoding", "codec"),
    [("PCMU", "mulaw"), ("PCMA", "alaw"), ("L16", "pcm16"), ("audio/x-mulaw", "mulaw")],
)
def test_encodings(encoding, codec):
    serializer = started(edited(START, "start.media_format.encoding", encoding))
    assert serializer.codec == codec


def test_custom_parameters():
    start = edited(START, "start.custom_parameters", {"tenant": "acme"})
    assert started(start).stream.metadata["parameters"] == {"tenant": "acme"}


def test_l16_is_big_endian_on_the_wire():
    start = edited(
        edited(START, "start.media_format.encoding", "L16"), "start.media_format.sample_rate", 16000
    )
    serializer = started(start)
    assert serializer.sample_rate == 16000
    little = (1).to_bytes(2, "little") + (-2).to_bytes(2, "little", signed=True)
    big = (1).to_bytes(2, "big") + (-2).to_bytes(2, "big", signed=True)
    assert receive_all(serializer, media(big, 1)) == [AudioIn(little)]
    sent = json.loads(serializer.send_audio(little))
    assert base64.b64decode(sent["media"]["payload"], validate=True) == big
    with pytest.raises(ValueError):
        serializer.send_audio(b"\x01\x02\x03")


def test_messages_to_telnyx_carry_no_stream_id():
    serializer = started(edited(START, "start.media_format.encoding", "PCMA"))
    sent = json.loads(serializer.send_audio(AUDIO))
    assert sent == {"event": "media", "media": {"payload": base64.b64encode(AUDIO).decode()}}
    assert json.loads(serializer.send_mark("m1")) == {"event": "mark", "mark": {"name": "m1"}}
    assert json.loads(serializer.send_clear()) == {"event": "clear"}


def test_error_frame_without_details():
    assert receive_all(started(), {"event": "error"}) == [Ignored("error", "")]


BEFORE_START = [
    (media(AUDIO, 1), CloseCode.POLICY_VIOLATION, "a media message before the stream started"),
    (DTMF, CloseCode.POLICY_VIOLATION, "DTMF before the stream started"),
    (MARK, CloseCode.POLICY_VIOLATION, "a mark before the stream started"),
    (edited(START, "stream_id"), CloseCode.INVALID_DATA, "missing field 'stream_id'"),
    (
        edited(START, "start.call_control_id", None),
        CloseCode.INVALID_DATA,
        "field 'start.call_control_id' must be a string, not null",
    ),
    (
        edited(START, "start.media_format.encoding", "G722"),
        CloseCode.UNSUPPORTED_DATA,
        "unsupported audio encoding 'G722'.*L16, PCMA, PCMU",
    ),
    (
        edited(START, "start.media_format.encoding", "OPUS"),
        CloseCode.UNSUPPORTED_DATA,
        "unsupported audio encoding 'OPUS'",
    ),
    (
        edited(START, "start.media_format.sample_rate", 0),
        CloseCode.INVALID_DATA,
        "'start.media_format.sample_rate' must be a positive integer",
    ),
    (
        edited(START, "start.media_format.channels", "two"),
        CloseCode.INVALID_DATA,
        "'start.media_format.channels' must be a positive integer",
    ),
    ({"event": "clear"}, CloseCode.POLICY_VIOLATION, "unknown event 'clear' in the telnyx"),
]

L16 = edited(START, "start.media_format.encoding", "L16")
AFTER_START = [
    (START, START, CloseCode.POLICY_VIOLATION, "a second start"),
    (START, edited(media(AUDIO, 1), "media.payload", "%%%"), CloseCode.INVALID_DATA, "base64"),
    (START, edited(media(AUDIO, 1), "media.payload"), CloseCode.INVALID_DATA, "'media.payload'"),
    (START, edited(media(AUDIO, 1), "media.track", 1), CloseCode.INVALID_DATA, "'media.track'"),
    (L16, media(b"\x00\x01\x02", 1), CloseCode.INVALID_DATA, "3 bytes of audio are not a whole"),
    (START, edited(DTMF, "dtmf", "5"), CloseCode.INVALID_DATA, "'dtmf' must be an object"),
    (START, edited(MARK, "mark.name", ["m1"]), CloseCode.INVALID_DATA, "'mark.name' must be a"),
    (START, edited(ERROR, "error", "x"), CloseCode.INVALID_DATA, "'error' must be an object"),
]


@pytest.mark.parametrize(("message", "code", "match"), BEFORE_START)
def test_bad_input_before_start(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(TelnyxSerializer(), CONNECTED, message)
    assert info.value.close_code == code


@pytest.mark.parametrize(("start", "message", "code", "match"), AFTER_START)
def test_bad_input_after_start(start, message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(started(start), message)
    assert info.value.close_code == code
