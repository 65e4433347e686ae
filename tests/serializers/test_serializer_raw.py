"""flowcat's raw protocol for custom clients and browsers: binary audio in the configured codec
and rate, JSON control messages, the optional start, and bad input."""

import json

import pytest
from websockets.frames import CloseCode

from flowcat_ft.serializers import (
    AudioIn,
    DtmfIn,
    Ignored,
    MarkPlayed,
    ProtocolError,
    RawSerializer,
    StreamStarted,
    StreamStopped,
)

PCM = bytes(range(256)) * 2 + bytes(128)  # 20 ms at 16 kHz
START = {"event": "start", "call_id": "c1", "stream_id": "s1", "parameters": {"lang": "fr"}}


def receive_all(serializer: RawSerializer, *messages: dict | bytes) -> list:
    events = []
    for message in messages:
        wire = message if isinstance(message, bytes) else json.dumps(message)
        events += serializer.receive(wire)
    return events


def stream(**fields) -> StreamStarted:
    """The StreamStarted of a default raw serializer, with ``fields`` changed."""
    defaults = {
        "call_id": "",
        "stream_id": "",
        "sample_rate": 16000,
        "codec": "pcm16",
        "channels": 1,
        "metadata": {"parameters": {}, "message": {}},
    }
    return StreamStarted(**{**defaults, **fields})


def test_a_session_with_a_start():
    serializer = RawSerializer()
    events = receive_all(
        serializer,
        START,
        PCM,
        {"event": "dtmf", "digit": "*"},
        {"event": "mark", "name": "m1"},
        {"event": "stop", "reason": "bye"},
    )
    assert events == [
        stream(
            call_id="c1",
            stream_id="s1",
            metadata={"parameters": {"lang": "fr"}, "message": START},
        ),
        AudioIn(PCM),
        DtmfIn("*"),
        MarkPlayed("m1"),
        StreamStopped("bye"),
    ]


def test_the_first_message_starts_the_stream():
    assert receive_all(RawSerializer(), PCM) == [stream(), AudioIn(PCM)]
    assert receive_all(RawSerializer(), {"event": "dtmf", "digit": "1"}) == [stream(), DtmfIn("1")]
    assert receive_all(RawSerializer(), {"event": "stop"}) == [stream(), StreamStopped("stop")]


def test_codec_and_rate_are_configured_and_known_before_the_start():
    serializer = RawSerializer(codec="mulaw", sample_rate=8000)
    assert (serializer.started, serializer.codec, serializer.sample_rate) == (False, "mulaw", 8000)
    ulaw = bytes(range(161))  # any number of µ-law bytes is whole samples
    assert receive_all(serializer, ulaw) == [
        stream(codec="mulaw", sample_rate=8000),
        AudioIn(ulaw),
    ]


def test_messages_to_the_client():
    serializer = RawSerializer()
    receive_all(serializer, START)
    assert serializer.send_audio(PCM) == PCM
    assert json.loads(serializer.send_clear()) == {"event": "clear"}
    assert json.loads(serializer.send_mark("m2")) == {"event": "mark", "name": "m2"}


BEFORE_ANY = [
    (PCM[:-1], CloseCode.INVALID_DATA, "639 bytes of audio are not a whole number of pcm16"),
    ({**START, "call_id": 7}, CloseCode.INVALID_DATA, "field 'call_id' must be a string"),
    ({**START, "parameters": []}, CloseCode.INVALID_DATA, "field 'parameters' must be an object"),
    ({"event": "dtmf", "digit": "E"}, CloseCode.INVALID_DATA, "'E' is not a DTMF digit"),
    ({"event": "dtmf"}, CloseCode.INVALID_DATA, "missing field 'digit'"),
    ({"event": "mark", "name": None}, CloseCode.INVALID_DATA, "field 'name' must be a string"),
    ({"event": "stop", "reason": {}}, CloseCode.INVALID_DATA, "field 'reason' must be a string"),
    ({"event": "clear"}, CloseCode.POLICY_VIOLATION, "unknown event 'clear' in the raw protocol"),
    ({"event": "media", "payload": "AAAA"}, CloseCode.POLICY_VIOLATION, "unknown event 'media'"),
]


@pytest.mark.parametrize(("message", "code", "match"), BEFORE_ANY)
def test_bad_input(message, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        receive_all(RawSerializer(), message)
    assert info.value.close_code == code


@pytest.mark.parametrize("first", [START, PCM, {"event": "dtmf", "digit": "0"}])
def test_start_only_as_the_first_message(first):
    serializer = RawSerializer()
    receive_all(serializer, first)
    with pytest.raises(ProtocolError, match="a second start") as info:
        receive_all(serializer, START)
    assert info.value.close_code == CloseCode.POLICY_VIOLATION


def test_unknown_events_can_be_ignored():
    serializer = RawSerializer(ignore_unknown_events=True)
    assert receive_all(serializer, {"event": "ping"}) == [stream(), Ignored("ping")]
