"""Helpers the serializer tests share: edit a carrier message, feed a session of them."""

from __future__ import annotations

import json

from flowcat_ft.serializers import Serializer

DELETE = object()


def edited(message: dict, path: str, value=DELETE) -> dict:
    """A copy of ``message`` with the field at dotted ``path`` set to ``value``, or deleted."""
    message = json.loads(json.dumps(message))
    *parents, key = path.split(".")
    inner = message
    for parent in parents:
        inner = inner[parent]
    if value is DELETE:
        del inner[key]
    else:
        inner[key] = value
    return message


def receive_all(serializer: Serializer, *messages: dict) -> list:
    """Every event ``serializer`` makes of ``messages``, sent as JSON text."""
    return [event for message in messages for event in serializer.receive(json.dumps(message))]
