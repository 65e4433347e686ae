"""What the JSON carrier protocols share: parsing and field access that raise
:class:`~flowcat_ft.serializers.base.ProtocolError`, strict base64, the ``event``-keyed
message dispatch, and the message shape Twilio set and Telnyx and Exotel follow.

Fields are named by dotted paths, ``"media.payload"`` for ``message["media"]["payload"]``,
and errors quote the path, so a log line says exactly which field of which message was bad.
"""

from __future__ import annotations

import abc
import base64
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from websockets.frames import CloseCode

from flowcat_ft.serializers.base import (
    Event,
    Ignored,
    ProtocolError,
    Serializer,
    StreamStarted,
    StreamStopped,
    quoted,
)

_MISSING = object()

_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _describe(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


# -- parsing and field access --------------------------------------------------------------


def loads(text: str) -> dict[str, Any]:
    """Parse one text message, which must be a JSON object."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ProtocolError("malformed JSON: nested too deeply", CloseCode.INVALID_DATA) from None
    except ValueError as error:
        raise ProtocolError(f"malformed JSON: {error}", CloseCode.INVALID_DATA) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            f"a message must be a JSON object, not {_describe(value)}", CloseCode.INVALID_DATA
        )
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"))
_MEDIA_TAIL = '"}}'  # what follows the payload in a media message


def dumps(message: Mapping[str, Any]) -> str:
    """Serialize one outgoing message, compactly."""
    return _ENCODER.encode(message)


def _lookup(message: Mapping[str, Any], path: str) -> Any:
    """The value at ``path``, or ``_MISSING``; a non-object on the way is an error."""
    value: Any = message
    walked: list[str] = []
    for key in path.split("."):
        if not isinstance(value, dict):
            raise ProtocolError(
                f"field {'.'.join(walked)!r} must be an object, not {_describe(value)}",
                CloseCode.INVALID_DATA,
            )
        walked.append(key)
        value = value.get(key, _MISSING)
        if value is _MISSING:
            break
    return value


def _check[T](path: str, value: object, kind: type[T]) -> T:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ProtocolError(
        f"field {path!r} must be {_JSON_TYPE_NAMES[kind]}, not {_describe(value)}",
        CloseCode.INVALID_DATA,
    )


def require[T](message: Mapping[str, Any], path: str, kind: type[T]) -> T:
    """The field at ``path``, which must be present and a ``kind`` (str, int, dict, list)."""
    value = _lookup(message, path)
    if value is _MISSING:
        raise ProtocolError(f"missing field {path!r}", CloseCode.INVALID_DATA)
    return _check(path, value, kind)


def optional[T, D](message: Mapping[str, Any], path: str, kind: type[T], default: D) -> T | D:
    """The field at ``path`` if present and not null (then it must be a ``kind``), else
    ``default``."""
    value = _lookup(message, path)
    if value is _MISSING or value is None:
        return default
    return _check(path, value, kind)


def positive_int(message: Mapping[str, Any], path: str, default: int | None = None) -> int:
    """A count or a rate: a positive integer, sent as a JSON number or a decimal string."""
    value = _lookup(message, path)
    if value is _MISSING and default is not None:
        return default
    if value is _MISSING:
        raise ProtocolError(f"missing field {path!r}", CloseCode.INVALID_DATA)
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) < 10:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ProtocolError(
        f"field {path!r} must be a positive integer, not {quoted(value)}", CloseCode.INVALID_DATA
    )


def codec(message: Mapping[str, Any], path: str, encodings: Mapping[str, str]) -> str:
    """The flowcat codec for the encoding named at ``path``, looked up in ``encodings``."""
    encoding = require(message, path, str)
    try:
        return encodings[encoding]
    except KeyError:
        raise ProtocolError(
            f"unsupported audio encoding {quoted(encoding)} in {path!r}: expected one of "
            f"{', '.join(sorted(encodings))}",
            CloseCode.UNSUPPORTED_DATA,
        ) from None


def b64decode(message: Mapping[str, Any], path: str) -> bytes:
    """The bytes in the base64 string at ``path``: strict (RFC 4648 alphabet, padded, no
    whitespace), as every carrier sends it."""
    text = require(message, path, str)
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(f"field {path!r} is not valid base64", CloseCode.INVALID_DATA) from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- event-keyed protocols -----------------------------------------------------------------


class JsonSerializer(Serializer):
    """A protocol of JSON text messages that name their type in an ``event`` field."""

    def _receive_text(self, text: str) -> list[Event]:
        message = loads(text)
        return self._receive_event(require(message, "event", str), message)

    @abc.abstractmethod
    def _receive_event(self, event: str, message: dict[str, Any]) -> list[Event]:
        """The events in one message whose ``event`` field is ``event``."""

    def _media(self, message: dict[str, Any]) -> list[Event]:
        """The audio in a ``media`` message: base64 in ``media.payload``.

        In a stream of both tracks, ``media.track`` tells the caller's audio (``inbound``)
        from the carrier's copy of what it played (``outbound``), which is dropped.
        """
        self._require_stream("a media message")
        if optional(message, "media.track", str, "inbound") == "outbound":
            return [Ignored("media", "outbound track")]
        return self._audio(b64decode(message, "media.payload"))


class MediaStreamSerializer(JsonSerializer):
    """The protocol Twilio's Media Streams defined, which Telnyx and Exotel follow.

    In: ``connected``, ``start`` (the carrier's fields, parsed by :meth:`_parse_start`),
    ``media`` ``{media: {track, payload}}``, ``dtmf`` ``{dtmf: {digit}}``, ``mark``
    ``{mark: {name}}`` (the echo of a mark sent earlier) and ``stop``. Out::

        {"event": "media", STREAM_KEY: id, "media": {"payload": BASE64}}
        {"event": "mark", STREAM_KEY: id, "mark": {"name": NAME}}
        {"event": "clear", STREAM_KEY: id}

    where ``STREAM_KEY`` is :attr:`stream_key`, left out when it is ``None``.
    """

    stream_key: ClassVar[str | None]
    """The field that names the stream in outgoing messages, or ``None`` if they omit it."""

    def _receive_event(self, event: str, message: dict[str, Any]) -> list[Event]:
        match event:
            case "connected":
                return [Ignored(event)]
            case "start":
                return self._start(self._parse_start(message))
            case "media":
                return self._media(message)
            case "dtmf":
                return self._dtmf(require(message, "dtmf.digit", str))
            case "mark":
                return self._mark(require(message, "mark.name", str))
            case "stop":
                return [StreamStopped(self._stop_reason(message))]
        return self._unknown(event)

    @abc.abstractmethod
    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        """The stream a ``start`` message describes."""

    def _stop_reason(self, message: dict[str, Any]) -> str:
        """Why the stream stopped, when the ``stop`` message says."""
        return "stop"

    _media_head = ""  # a media message up to its payload, once the stream has started

    def send_audio(self, payload: bytes) -> str:
        # Sent 50 times a second: the message is put together around the payload (base64
        # needs no escaping in JSON), from its head, encoded once (a stream starts once).
        if not self._media_head:
            empty = self._send("media", media={"payload": ""})
            self._media_head = empty[: -len(_MEDIA_TAIL)]
        return self._media_head + b64encode(payload) + _MEDIA_TAIL

    def send_mark(self, name: str) -> str:
        return self._send("mark", mark={"name": name})

    def send_clear(self) -> str:
        return self._send("clear")

    def _send(self, event: str, **fields: Any) -> str:
        stream = self._outgoing_stream()
        message: dict[str, Any] = {"event": event}
        if self.stream_key is not None:
            message[self.stream_key] = stream.stream_id
        message.update(fields)
        return dumps(message)
