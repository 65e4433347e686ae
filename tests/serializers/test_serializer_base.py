"""What every serializer shares: the registry, the JSON and base64 helpers, the size limit, the
close codes for input no carrier sends, and properties that hold for any payload or input
(hypothesis): audio and marks round-trip, and nothing a peer sends raises anything but
ProtocolError."""

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import CloseCode

from flowcat_ft.serializers import (
    MAX_MESSAGE_BYTES,
    SERIALIZERS,
    AudioIn,
    Ignored,
    MarkPlayed,
    ProtocolError,
    RawSerializer,
    Serializer,
    StreamStarted,
    TelnyxSerializer,
    make_serializer,
)
from flowcat_ft.serializers._json import (
    b64decode,
    codec,
    dumps,
    loads,
    optional,
    positive_int,
    require,
)

# A minimal start for each carrier, in its own shape.
STARTS = {
    "twilio": {
        "event": "start",
        "streamSid": "MZ1",
        "start": {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    },
    "telnyx": {
        "event": "start",
        "stream_id": "S1",
        "start": {
            "call_control_id": "v3:1",
            "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1},
        },
    },
    "plivo": {
        "event": "start",
        "start": {
            "callId": "C1",
            "streamId": "S1",
            "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000},
        },
    },
    "exotel": {
        "event": "start",
        "stream_sid": "S1",
        "start": {
            "stream_sid": "S1",
            "call_sid": "C1",
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000"},
        },
    },
    "vonage": {"event": "websocket:connected", "content-type": "audio/l16;rate=16000"},
    "raw": {"event": "start"},
    "browser": {"event": "start"},
}

JSON_AUDIO = ["twilio", "telnyx", "plivo", "exotel"]  # audio as base64 in JSON text frames


def started(name: str, **options) -> Serializer:
    serializer = make_serializer(name, **options)
    (stream,) = serializer.receive(json.dumps(STARTS[name]))
    assert isinstance(stream, StreamStarted)
    return serializer


def incoming_media(name: str, payload: bytes) -> str | bytes:
    """Audio as the carrier sends it."""
    if name in ("vonage", "raw", "browser"):
        return payload
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}})


def outgoing_audio(name: str, message: str | bytes) -> bytes:
    """The audio in a message the serializer built, read as the carrier reads it."""
    if name in ("vonage", "raw", "browser"):
        assert isinstance(message, bytes)
        return message
    media = json.loads(message)["media"]
    return base64.b64decode(media["payload"], validate=True)


def whole_samples(name: str) -> st.SearchStrategy[bytes]:
    width = 2 if started(name).codec == "pcm16" else 1
    return st.binary(min_size=2, max_size=4000).map(lambda b: b[: len(b) - len(b) % width])


# -- registry ------------------------------------------------------------------------------


def test_registry_has_one_serializer_per_url_path():
    assert sorted(SERIALIZERS) == [
        "browser",
        "exotel",
        "plivo",
        "raw",
        "telnyx",
        "twilio",
        "vonage",
    ]
    for name, cls in SERIALIZERS.items():
        assert cls.name == name
        assert isinstance(make_serializer(name), cls)


def test_make_serializer_names_the_choices():
    choices = "browser, exotel, plivo, raw, telnyx, twilio, vonage"
    with pytest.raises(ValueError, match=f"unknown serializer 'sip'; choose one of {choices}"):
        make_serializer("sip")


def test_make_serializer_passes_options():
    serializer = make_serializer("raw", codec="mulaw", sample_rate=8000, max_message_bytes=10)
    assert (serializer.codec, serializer.sample_rate, serializer.max_message_bytes) == (
        "mulaw",
        8000,
        10,
    )
    with pytest.raises(TypeError):
        make_serializer("twilio", codec="mulaw")
    with pytest.raises(ValueError, match="max_message_bytes"):
        make_serializer("twilio", max_message_bytes=0)


def test_events_are_small_frozen_values():
    event = MarkPlayed("m")
    assert not hasattr(event, "__dict__")
    with pytest.raises(AttributeError):
        event.name = "other"
    assert repr(AudioIn(b"\0" * 160)) == "AudioIn(<160 bytes>)"
    assert Ignored("connected") == Ignored("connected", "")


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def fails(code: CloseCode, match: str):
    """pytest.raises for a ProtocolError with this close code and message."""
    with pytest.raises(ProtocolError, match=match) as info:
        yield
    assert info.value.close_code == code


def test_loads_accepts_only_json_objects():
    assert loads('{"event": "x"}') == {"event": "x"}
    with fails(CloseCode.INVALID_DATA, "malformed JSON"):
        loads('{"event": ')
    with fails(CloseCode.INVALID_DATA, "must be a JSON object, not an array"):
        loads("[1, 2]")
    with fails(CloseCode.INVALID_DATA, "must be a JSON object, not null"):
        loads("null")
    with fails(CloseCode.INVALID_DATA, "nested too deeply"):
        loads("[" * 50_000)


def test_dumps_is_compact():
    assert dumps({"event": "clear", "streamSid": "MZ1"}) == '{"event":"clear","streamSid":"MZ1"}'


def test_require_walks_dotted_paths_and_names_the_bad_field():
    message = {"media": {"payload": "AA==", "chunk": 3, "flag": True}, "text": "x"}
    assert require(message, "media.payload", str) == "AA=="
    assert require(message, "media.chunk", int) == 3
    with fails(CloseCode.INVALID_DATA, "missing field 'media.track'"):
        require(message, "media.track", str)
    with fails(CloseCode.INVALID_DATA, "missing field 'mark.name'"):
        require(message, "mark.name", str)
    with fails(CloseCode.INVALID_DATA, "field 'media.chunk' must be a string, not a number"):
        require(message, "media.chunk", str)
    with fails(CloseCode.INVALID_DATA, "field 'media.flag' must be a number, not a boolean"):
        require(message, "media.flag", int)
    with fails(CloseCode.INVALID_DATA, "field 'text' must be an object, not a string"):
        require(message, "text.inner", str)


def test_optional_defaults_when_missing_or_null():
    message = {"a": None, "b": {"c": "x"}}
    assert optional(message, "a", dict, {}) == {}
    assert optional(message, "z", str, "d") == "d"
    assert optional(message, "b.c", str, "d") == "x"
    with fails(CloseCode.INVALID_DATA, "field 'b' must be a string, not an object"):
        optional(message, "b", str, "d")


@pytest.mark.parametrize("value", [8000, "8000"])
def test_positive_int_takes_numbers_and_decimal_strings(value):
    assert positive_int({"rate": value}, "rate") == 8000


@pytest.mark.parametrize("value", [0, -8000, "8k", "", "٨٠٠٠", True, 8000.0, None, "9" * 5000])
def test_positive_int_refuses_the_rest(value):
    with fails(CloseCode.INVALID_DATA, "field 'rate' must be a positive integer"):
        positive_int({"rate": value}, "rate")


def test_positive_int_default_only_when_missing():
    assert positive_int({}, "channels", default=1) == 1
    with fails(CloseCode.INVALID_DATA, "missing field 'rate'"):
        positive_int({}, "rate")


def test_codec_refuses_encodings_it_cannot_carry():
    assert codec({"e": "PCMU"}, "e", {"PCMU": "mulaw"}) == "mulaw"
    with fails(CloseCode.UNSUPPORTED_DATA, "unsupported audio encoding 'G722' in 'e'.*PCMU"):
        codec({"e": "G722"}, "e", {"PCMU": "mulaw"})


@pytest.mark.parametrize("text", ["AAE", "AA=A", "AA E=", "AA\nEC", "é===", "AA==AA==", "-_8="])
def test_b64decode_is_strict(text):
    with fails(CloseCode.INVALID_DATA, "field 'p' is not valid base64"):
        b64decode({"p": text}, "p")


def test_b64decode_takes_empty_and_padded():
    assert b64decode({"p": ""}, "p") == b""
    assert b64decode({"p": "AAE="}, "p") == b"\x00\x01"


# -- what no carrier sends -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
def test_message_over_the_limit_closes_with_1009(name):
    serializer = make_serializer(name, max_message_bytes=1000)
    with fails(CloseCode.MESSAGE_TOO_BIG, "1001-byte message is over the 1000-byte limit"):
        serializer.receive(b"\0" * 1001)
    # The limit counts UTF-8 bytes, not characters: 500 two-byte characters are 1000 bytes.
    with fails(CloseCode.MESSAGE_TOO_BIG, "1002-byte message"):
        serializer.receive('"' + "é" * 500 + '"')
    assert make_serializer(name).max_message_bytes == MAX_MESSAGE_BYTES


@pytest.mark.parametrize("name", JSON_AUDIO)
def test_binary_message_to_a_text_protocol_closes_with_1003(name):
    for serializer in (make_serializer(name), started(name)):
        with fails(CloseCode.UNSUPPORTED_DATA, f"binary message: the {name} protocol sends only"):
            serializer.receive(b"\xff" * 160)


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hello", "malformed JSON"),
        ("", "malformed JSON"),
        ('{"event": "media"', "malformed JSON"),
        ('["start"]', "must be a JSON object, not an array"),
        ('"start"', "must be a JSON object, not a string"),
        ('{"type": "start"}', "missing field 'event'"),
        ('{"event": 1}', "field 'event' must be a string, not a number"),
        ('{"event": null}', "field 'event' must be a string, not null"),
    ],
)
def test_malformed_text_closes_with_1007(name, text, match):
    with fails(CloseCode.INVALID_DATA, match):
        make_serializer(name).receive(text)


def test_errors_quote_what_the_peer_sent_cut_short():
    with pytest.raises(ProtocolError) as info:
        make_serializer("twilio").receive(json.dumps({"event": "x" * 10_000}))
    assert len(str(info.value)) < 100
    assert "unknown event 'xxxxxxxx" in str(info.value)


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
def test_sending_before_the_stream_started_is_a_bug(name):
    serializer = make_serializer(name)
    for send in (lambda: serializer.send_audio(b"\0\0"), serializer.send_clear):
        with pytest.raises(RuntimeError, match="before the stream started"):
            send()
    with pytest.raises(RuntimeError, match="before the stream started"):
        serializer.send_mark("m")


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
def test_empty_audio_is_no_event(name):
    assert started(name).receive(incoming_media(name, b"")) == []


# -- properties ----------------------------------------------------------------------------

# Not timed (the default deadline trips on a loaded CI box), and no example database on disk.
props = settings(max_examples=40, deadline=None, database=None)


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
@props
@given(data=st.data())
def test_audio_round_trips_both_ways(name, data):
    payload = data.draw(whole_samples(name))
    serializer = started(name)
    wire = outgoing_audio(name, serializer.send_audio(payload))
    assert wire == payload
    # The same bytes, sent by the carrier, are read back as the same audio.
    assert serializer.receive(incoming_media(name, wire)) == [AudioIn(payload)]


@props
@given(payload=st.binary(max_size=2000).map(lambda b: b[: len(b) & ~1]))
def test_telnyx_l16_goes_big_endian_on_the_wire(payload):
    stream = json.loads(json.dumps(STARTS["telnyx"]))
    stream["start"]["media_format"].update(encoding="L16", sample_rate=16000)
    serializer = TelnyxSerializer()
    serializer.receive(json.dumps(stream))
    wire = outgoing_audio("telnyx", serializer.send_audio(payload))
    assert wire == b"".join(payload[i : i + 2][::-1] for i in range(0, len(payload), 2))


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
@props
@given(mark=st.text(max_size=64))
def test_send_mark_carries_any_name(name, mark):
    message = json.loads(started(name).send_mark(mark))
    names = [
        message.get("name"),
        message.get("mark", {}).get("name"),
        message.get("payload", {}).get("name"),
    ]
    assert mark in names


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
@props
@given(text=st.text(max_size=300))
def test_any_text_is_events_or_protocol_error(name, text):
    for serializer in (make_serializer(name), started(name)):
        try:
            events = serializer.receive(text)
        except ProtocolError as error:
            assert error.close_code in set(CloseCode)
        else:
            assert isinstance(events, list)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["start", "media", "dtmf", "mark", "stop", "payload", "name", "digit", "track", "error"]
)


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
@props
@given(
    event=st.sampled_from(
        [
            "connected",
            "start",
            "media",
            "dtmf",
            "mark",
            "stop",
            "error",
            "playedStream",
            "clearedAudio",
            "websocket:connected",
            "websocket:dtmf",
            "websocket:notify",
            "other",
        ]
    ),
    fields=st.dictionaries(field_names, json_values, max_size=4),
)
def test_any_json_message_is_events_or_protocol_error(name, event, fields):
    text = json.dumps({"event": event, **fields})
    for serializer in (make_serializer(name), started(name)):
        with contextlib.suppress(ProtocolError):
            serializer.receive(text)


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
@props
@given(data=st.binary(max_size=2000))
def test_any_binary_is_events_or_protocol_error(name, data):
    for serializer in (make_serializer(name), started(name)):
        with contextlib.suppress(ProtocolError):
            serializer.receive(data)


def test_raw_options_are_checked():
    with pytest.raises(ValueError, match="codec must be one of pcm16, mulaw, alaw, not 'opus'"):
        RawSerializer(codec="opus")
    for rate in (0, 22050, 999_999_999, "16000", 16000.0):
        with pytest.raises(ValueError, match="sample_rate must be one of 8000, 16000, 24000"):
            RawSerializer(sample_rate=rate)


RATE_FIELDS = {
    "twilio": "start.mediaFormat.sampleRate",
    "telnyx": "start.media_format.sample_rate",
    "plivo": "start.mediaFormat.sampleRate",
    "exotel": "start.media_format.sample_rate",
}


@pytest.mark.parametrize("name", sorted(RATE_FIELDS))
@pytest.mark.parametrize("rate", [1, 11025, 22050, 96000, 999_999_999])
def test_a_start_at_a_rate_flowcat_does_not_take_closes_with_1003(name, rate):
    start = json.loads(json.dumps(STARTS[name]))
    *path, last = RATE_FIELDS[name].split(".")
    fields = start
    for key in path:
        fields = fields[key]
    fields[last] = rate
    refused = f"a sample rate of {rate} Hz: flowcat takes 8000, "
    with pytest.raises(ProtocolError, match=refused) as e:
        make_serializer(name).receive(json.dumps(start))
    assert e.value.close_code == CloseCode.UNSUPPORTED_DATA


@pytest.mark.parametrize("name", ["twilio", "telnyx"])  # the carriers that say how many
@pytest.mark.parametrize("channels", [2, 3, 64])
def test_a_start_with_more_than_two_channels_closes_with_1003(name, channels):
    start = json.loads(json.dumps(STARTS[name]))
    media_format = start["start"]["mediaFormat" if name == "twilio" else "media_format"]
    media_format["channels"] = channels
    serializer = make_serializer(name)
    if channels == 2:
        assert serializer.receive(json.dumps(start))[0].channels == 2
        return
    with pytest.raises(ProtocolError, match=f"{channels} channels: flowcat takes 1 to 2") as e:
        serializer.receive(json.dumps(start))
    assert e.value.close_code == CloseCode.UNSUPPORTED_DATA
