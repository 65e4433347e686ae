"""The playground's protocol: the raw protocol at 16 kHz PCM16, and the conversation's events
the page shows, one JSON message per frame."""

import json

import pytest

from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterimTranscriptionFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.serializers import (
    AudioIn,
    BrowserSerializer,
    MarkPlayed,
    RawSerializer,
    StreamStarted,
    make_serializer,
)

PCM = bytes(range(256)) * 2 + bytes(128)  # 20 ms at 16 kHz


def started() -> BrowserSerializer:
    serializer = make_serializer("browser")
    assert isinstance(serializer, BrowserSerializer)
    (stream,) = serializer.receive(json.dumps({"event": "start", "call_id": "page-1"}))
    assert isinstance(stream, StreamStarted) and stream.call_id == "page-1"
    return serializer


def test_audio_and_control_are_the_raw_protocol_at_16_khz_pcm16():
    serializer = started()
    assert (serializer.codec, serializer.sample_rate) == ("pcm16", 16000)
    assert serializer.receive(PCM) == [AudioIn(PCM)]
    assert serializer.receive('{"event": "mark", "name": "utterance-1"}') == [
        MarkPlayed("utterance-1")
    ]
    assert serializer.send_audio(PCM) == PCM
    assert json.loads(serializer.send_clear()) == {"event": "clear"}
    assert json.loads(serializer.send_mark("m1")) == {"event": "mark", "name": "m1"}
    with pytest.raises(TypeError):
        make_serializer("browser", sample_rate=8000)  # the page speaks 16 kHz only


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (UserStartedSpeakingFrame(), {"event": "user_started_speaking"}),
        (UserStoppedSpeakingFrame(), {"event": "user_stopped_speaking"}),
        (BotStartedSpeakingFrame(), {"event": "bot_started_speaking"}),
        (BotStoppedSpeakingFrame(), {"event": "bot_stopped_speaking"}),
        (
            InterimTranscriptionFrame("what time"),
            {"event": "transcript", "text": "what time", "final": False},
        ),
        (
            TranscriptionFrame("what time is it"),
            {"event": "transcript", "text": "what time is it", "final": True},
        ),
        (TTSTextFrame("It is noon."), {"event": "bot_text", "text": "It is noon."}),
        (
            MetricsFrame("transport", {"turn_latency_ms": 642.4567}),
            {"event": "latency", "ms": 642.5},
        ),
    ],
)
def test_the_conversation_becomes_events_for_the_page(frame, message):
    text = started().send_frame(frame)
    assert isinstance(text, str)
    assert json.loads(text) == message


@pytest.mark.parametrize(
    "frame",
    [
        StartFrame(),
        TTSStartedFrame(),
        TextFrame("not spoken yet"),  # bot text is shown as it is spoken: TTSTextFrame
        LLMTextFrame("Hello"),
        MetricsFrame("openai", {"ttfb_ms": 120.0}),
    ],
)
def test_other_frames_have_no_message(frame):
    assert started().send_frame(frame) is None


def test_text_of_any_kind_is_valid_json():
    text = 'She said "hi"\n\u00e9\u2014\U0001f600 </script>'
    assert json.loads(started().send_frame(TTSTextFrame(text)))["text"] == text


def test_carriers_say_nothing_about_frames():
    raw = RawSerializer()
    raw.receive(PCM)
    assert raw.send_frame(TranscriptionFrame("hello")) is None
    assert make_serializer("twilio").send_frame(UserStartedSpeakingFrame()) is None
