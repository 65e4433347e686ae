"""Carrier media-stream protocols as Sans-I/O codecs, and the registry that picks one.

Each module speaks one protocol (its docstring gives the message shapes and the carrier's
documentation it follows); :mod:`~flowcat_ft.serializers.base` defines the events and the
:class:`Serializer` they share. The transport picks a serializer by name, from the URL path
(``/twilio``, ``/telnyx``...) or its configuration::

    serializer = make_serializer("twilio")
    for event in serializer.receive(message):
        ...
    await websocket.send(serializer.send_audio(mulaw_bytes))
"""

from __future__ import annotations

from typing import Any

from flowcat_ft.serializers.base import (
    DTMF_DIGITS,
    MAX_MESSAGE_BYTES,
    AudioIn,
    DtmfIn,
    Event,
    Ignored,
    MarkPlayed,
    ProtocolError,
    Serializer,
    StreamStarted,
    StreamStopped,
)
from flowcat_ft.serializers.browser import BrowserSerializer
from flowcat_ft.serializers.exotel import ExotelSerializer
from flowcat_ft.serializers.plivo import PlivoSerializer
from flowcat_ft.serializers.raw import RawSerializer
from flowcat_ft.serializers.telnyx import TelnyxSerializer
from flowcat_ft.serializers.twilio import TwilioSerializer
from flowcat_ft.serializers.vonage import VonageSerializer

__all__ = [
    "DTMF_DIGITS",
    "MAX_MESSAGE_BYTES",
    "SERIALIZERS",
    "AudioIn",
    "BrowserSerializer",
    "DtmfIn",
    "Event",
    "ExotelSerializer",
    "Ignored",
    "MarkPlayed",
    "PlivoSerializer",
    "ProtocolError",
    "RawSerializer",
    "Serializer",
    "StreamStarted",
    "StreamStopped",
    "TelnyxSerializer",
    "TwilioSerializer",
    "VonageSerializer",
    "make_serializer",
]

SERIALIZERS: dict[str, type[Serializer]] = {
    cls.name: cls
    for cls in (
        TwilioSerializer,
        TelnyxSerializer,
        PlivoSerializer,
        ExotelSerializer,
        VonageSerializer,
        RawSerializer,
        BrowserSerializer,
    )
}
"""Every serializer, by :attr:`Serializer.name`."""


def make_serializer(name: str, **options: Any) -> Serializer:
    """A new serializer for one connection: ``SERIALIZERS[name](**options)``.

    Every serializer takes ``max_message_bytes`` and ``ignore_unknown_events``; ``raw``
    also takes ``codec`` and ``sample_rate`` (``browser``, the playground's, is ``raw`` at
    its defaults, with the conversation's events).
    """
    try:
        cls = SERIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown serializer {name!r}; choose one of {', '.join(sorted(SERIALIZERS))}"
        ) from None
    return cls(**options)
