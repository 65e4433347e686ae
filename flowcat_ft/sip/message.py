"""SIP messages (RFC 3261), Sans-I/O: bytes in, :class:`Request` / :class:`Response` out,
and back.

:func:`parse` reads one whole message (a UDP datagram, or one message a
:class:`StreamParser` cut from a TCP stream). It is strict where a mistake would make us
answer the wrong dialog or transaction, and says what is wrong: every
:class:`SipError` names the problem (``"missing header: Call-ID"``, ``"CSeq method
'BYE' does not match the request's INVITE"``), and where enough of a request was read to
address an answer, ``error.request`` holds it so that the transport answers ``400`` with
that reason (RFC 3261 section 21.4.1) instead of dropping it.

What it handles: header folding (continuation lines), compact header names (``v``, ``i``,
``m``...), comma-separated header lists (split outside quotes and angle brackets), name
-addresses with tags, Via with ``branch``, ``received`` and ``rport`` (RFC 3581), CSeq,
and Content-Length: on UDP the body is the rest of the datagram, cut to Content-Length; on
TCP Content-Length frames the message.

Why not a library: the maintained pure-Python SIP code that installs on 3.13t (rfcvoip,
a fork of pyVoIP) is a softphone whose parser is part of its client, which owns its own
sockets and runs two polling threads per call; the runtime needs a parser it can call from
its event loops, and a strict one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "CSeq",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "SipError",
    "StreamParser",
    "Uri",
    "Via",
    "parse",
    "reason_phrase",
]

MAX_MESSAGE_BYTES = 64 * 1024
"""The largest message accepted (a UDP datagram cannot be larger)."""

_COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept",
        "Allow",
        "Authorization",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Disposition",
        "Content-Length",
        "Content-Type",
        "Event",
        "Expires",
        "From",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Session-Expires",
        "Subscription-State",
        "Supported",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "WWW-Authenticate",
    )
} | {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate"}

_LISTS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "allow",
        "accept",
        "allow-events",
    }
)
"""Headers whose comma-separated values are separate values (RFC 3261 section 7.3.1)."""

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z")
_REQUEST_LINE = re.compile(r"([A-Za-z0-9.!%*_+`'~-]+) (\S+) SIP/2\.0\Z")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)\Z")

_PHRASES = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
}


def reason_phrase(status: int) -> str:
    """The usual reason phrase for ``status``."""
    return _PHRASES.get(status, "Unknown")


class SipError(ValueError):
    """A message that breaks RFC 3261; ``status`` is the response it deserves (400 unless
    said otherwise) and ``request`` the request as far as it was read, where it can be
    answered (it has Via, From, To, Call-ID and CSeq headers)."""

    def __init__(self, reason: str, status: int = 400, request: Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request = request


# -- header values -------------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """A header's comma-separated values, split outside quotes and angle brackets."""
    parts, start, quoted, angle, i = [], 0, False, False, 0
    while i < len(value):
        char = value[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [part for part in parts if part]


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=1;b;c="x"`` as ``{"a": "1", "b": None, "c": "x"}`` (names in lower case)."""
    params: dict[str, str | None] = {}
    for part in _split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not _TOKEN.match(name):
            raise SipError(f"bad parameter {part!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        params[name] = value if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, start, quoted = [], 0, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


@dataclass(frozen=True, slots=True)
class Uri:
    """A ``sip:`` or ``sips:`` URI (other schemes, such as ``tel:``, keep their text in
    ``host``)."""

    scheme: str = "sip"
    user: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> Uri:
        scheme, colon, rest = text.strip().partition(":")
        scheme = scheme.lower()
        if not colon or not rest or not _TOKEN.match(scheme):
            raise SipError(f"bad URI {text!r}")
        if scheme not in ("sip", "sips"):
            return cls(scheme, None, rest)
        rest, _, headers = rest.partition("?")
        user = None
        if "@" in rest:
            user, _, rest = rest.rpartition("@")
            user = user.partition(":")[0]  # a password in a URI is deprecated: dropped
        hostport, _, params = rest.partition(";")
        host, port = _split_hostport(hostport, text)
        return cls(scheme, user or None, host, port, parse_params(params), headers)

    @property
    def transport(self) -> str:
        """``udp``, ``tcp`` or ``tls``: the URI's ``transport`` parameter (by default UDP,
        TLS for a ``sips:`` URI)."""
        return (self.params.get("transport") or ("tls" if self.scheme == "sips" else "udp")).lower()

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.host}"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        headers = f"?{self.headers}" if self.headers else ""
        params = format_params(self.params)
        return f"{self.scheme}:{user}{_bracket(self.host)}{port}{params}{headers}"


def _split_hostport(text: str, whole: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise SipError(f"bad host in {whole!r}")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise SipError(f"bad host in {whole!r}")
    else:
        host, _, port = text.partition(":")
        port = port or None
    if not host or any(c in host for c in " <>\"'"):
        raise SipError(f"bad host in {whole!r}")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise SipError(f"bad port in {whole!r}")
    return host, int(port) if port is not None else None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From, To, Contact, Route or Record-Route value: ``"Name" <uri>;tag=...``."""

    uri: Uri
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if "<" in text:
            display, _, rest = text.partition("<")
            uri, bracket, params = rest.partition(">")
            if not bracket:
                raise SipError(f"no closing '>' in {text!r}")
            display = display.strip().strip('"')
        else:  # addr-spec: parameters after it belong to the header, not the URI
            uri, _, params = text.partition(";")
            display, params = "", f";{params}" if params else ""
        if params and not params.lstrip().startswith(";"):
            raise SipError(f"junk after the address in {text!r}")
        return cls(Uri.parse(uri), display, parse_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display, {**self.params, "tag": tag})

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=z9hG4bK...;rport``."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @classmethod
    def parse(cls, text: str) -> Via:
        sent, _, params = text.strip().partition(";")
        protocol, _, hostport = sent.strip().partition(" ")
        parts = [p.strip() for p in protocol.split("/")]
        if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0":
            raise SipError(f"bad Via {text!r}")
        host, port = _split_hostport(hostport, text)
        return cls(parts[2].upper(), host, port, parse_params(params))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {_bracket(self.host)}{port}{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        number, _, method = text.strip().partition(" ")
        method = method.strip()
        if not number.isdigit() or int(number) >= 2**31 or not _TOKEN.match(method):
            raise SipError(f"bad CSeq {text!r}")
        return cls(int(number), method)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# -- headers and messages ------------------------------------------------------------------


def canonical(name: str) -> str:
    """A header name as this module writes it (compact forms expanded)."""
    lower = name.lower()
    if lower in _COMPACT:
        return _COMPACT[lower]
    return _CANONICAL.get(lower) or "-".join(part.capitalize() for part in name.split("-"))


class Headers:
    """A message's headers in order; names are matched in any case and compact form.

    Values of list headers (Via, Route, Contact, Supported...) are split at commas by
    :meth:`values`; :meth:`get` gives the first value.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical(n), v) for n, v in items]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __contains__(self, name: str) -> bool:
        name = canonical(name)
        return any(n == name for n, _ in self._items)

    def values(self, name: str) -> list[str]:
        """Every value of ``name``, in order (list headers split at their commas)."""
        name = canonical(name)
        found = [v for n, v in self._items if n == name]
        if name.lower() in _LISTS:
            return [part for value in found for part in split_list(value)]
        return found

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.values(name)
        return values[0] if values else default

    def add(self, name: str, value: object) -> None:
        self._items.append((canonical(name), str(value)))

    def set(self, name: str, value: object) -> None:
        """Replace every ``name`` header with one (where the first one was)."""
        name = canonical(name)
        index = next((i for i, (n, _) in enumerate(self._items) if n == name), None)
        self.remove(name)
        item = (name, str(value))
        self._items.insert(len(self._items) if index is None else index, item)

    def remove(self, name: str) -> None:
        name = canonical(name)
        self._items = [(n, v) for n, v in self._items if n != name]

    def copy(self) -> Headers:
        copy = Headers()
        copy._items = list(self._items)
        return copy


class _Message:
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self.headers.get("CSeq") or "")

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(value) for value in self.headers.values("Via")]

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("To") or "")

    @property
    def contact(self) -> NameAddr | None:
        value = self.headers.get("Contact")
        return None if value is None or value == "*" else NameAddr.parse(value)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()

    def options(self, name: str) -> set[str]:
        """The option tags of a Supported, Require or Proxy-Require header."""
        return {value.strip().lower() for value in self.headers.values(name)}

    def _head(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        lines = [self._head()]
        lines += [f"{n}: {v}" for n, v in self.headers if n != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class Request(_Message):
    """A SIP request. ``bytes(request)`` is its wire form (Content-Length written)."""

    def __init__(self, method: str, uri: Uri, headers: Headers | None = None, body=b"") -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def _head(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} Call-ID {self.call_id}>"

    @property
    def branch(self) -> str | None:
        return Via.parse(self.headers.get("Via") or "").branch

    def response(
        self, status: int, reason: str | None = None, *, to_tag: str | None = None, body=b""
    ) -> Response:
        """The response to this request: Via, From, Call-ID and CSeq copied; To with
        ``to_tag`` added where it has none (RFC 3261 section 8.2.6.2)."""
        headers = Headers()
        for value in self.headers.values("Via"):
            headers.add("Via", value)
        to = self.headers.get("To")
        if to and to_tag and status > 100 and ";tag=" not in to.replace(" ", "").lower():
            to = f"{to};tag={to_tag}"
        for name, value in (
            ("From", self.headers.get("From")),
            ("To", to),
            ("Call-ID", self.headers.get("Call-ID")),
            ("CSeq", self.headers.get("CSeq")),
        ):
            if value:
                headers.add(name, value)
        return Response(status, reason or reason_phrase(status), headers, body)


class Response(_Message):
    """A SIP response."""

    def __init__(self, status: int, reason: str, headers: Headers | None = None, body=b"") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def _head(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} Call-ID {self.call_id}>"


# -- parsing -------------------------------------------------------------------------------

_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def parse(data: bytes, *, stream: bool = False) -> Request | Response:
    """One whole message. On UDP (``stream`` False) the body is the rest of the datagram,
    cut to Content-Length; on TCP (``stream`` True) the caller cut the message by its
    Content-Length already, which must then be there.

    Raises :class:`SipError` naming what is wrong.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipError(f"a {len(data)}-byte message is over the {MAX_MESSAGE_BYTES}-byte limit")
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        head, separator, body = data.partition(b"\n\n")
        if not separator:
            raise SipError("no blank line after the headers: the message is cut short")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("the headers are not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0]
    headers = Headers(_header_lines(lines[1:]))
    if match := _STATUS_LINE.match(start):
        message: Request | Response = Response(int(match[1]), match[2], headers)
    elif match := _REQUEST_LINE.match(start):
        uri = Uri.parse(match[2])
        message = Request(match[1].upper(), uri, headers)
    else:
        raise SipError(f"not a SIP request or status line: {start[:60]!r}")
    message.body = _body(headers, body, stream, message)
    _check(message)
    return message


def _header_lines(lines: list[str]) -> Iterator[tuple[str, str]]:
    name, value = None, ""
    for number, line in enumerate(lines, 2):
        if line[:1] in (" ", "\t"):  # folded onto the line before (RFC 3261 section 7.3.1)
            if name is None:
                raise SipError(f"line {number}: a continuation line before any header")
            value += " " + line.strip()
            continue
        if name is not None:
            yield name, value
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not _TOKEN.match(name):
            raise SipError(f"line {number}: not a header: {line[:60]!r}")
    if name is not None:
        yield name, value


def _body(headers: Headers, rest: bytes, stream: bool, message: Request | Response) -> bytes:
    value = headers.get("Content-Length")
    if value is None:
        if stream:
            raise SipError("no Content-Length on a stream transport", request=_answerable(message))
        return rest
    if not value.isdigit():
        raise SipError(f"bad Content-Length {value!r}", request=_answerable(message))
    length = int(value)
    if length > len(rest):
        raise SipError(
            f"Content-Length {length} is more than the {len(rest)} bytes of body",
            request=_answerable(message),
        )
    return rest[:length]


def _answerable(message: Request | Response) -> Request | None:
    """The request, if a 400 can reach its sender and be matched to its transaction: its
    top Via (with a branch) and its CSeq are there; the rest is copied as it came."""
    if not isinstance(message, Request) or message.method == "ACK":
        return None
    if message.headers.get("CSeq") is None:
        return None
    try:
        return message if message.vias and message.branch else None
    except SipError:
        return None


def _check(message: Request | Response) -> None:
    """The headers every message needs, each well formed."""
    request = _answerable(message)
    headers = message.headers
    for name in _REQUIRED:
        if headers.get(name) is None:
            raise SipError(f"missing header: {name}", request=request)
    try:
        vias = message.vias
        cseq = message.cseq
        message.from_  # noqa: B018
        message.to  # noqa: B018
        message.contact  # noqa: B018
    except SipError as error:
        raise SipError(error.reason, request=request) from None
    if isinstance(message, Request):
        if cseq.method != message.method:
            raise SipError(
                f"CSeq method {cseq.method!r} does not match the request's {message.method}",
                request=request,
            )
        if not vias[0].branch:
            raise SipError("the top Via has no branch", request=request)
        forwards = headers.get("Max-Forwards")
        if forwards is not None and not forwards.isdigit():
            raise SipError(f"bad Max-Forwards {forwards!r}", request=request)


class StreamParser:
    """Cuts SIP messages out of a byte stream (TCP), by their Content-Length.

    :meth:`feed` returns the messages completed so far, each a :class:`Request`, a
    :class:`Response` or a :class:`SipError`; a blank-line keep-alive (RFC 5626) between
    messages is counted in ``pings``. A stream that goes wrong (headers past the size
    limit, or no way to find where the next message starts) raises :class:`SipError`:
    close the connection.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self.max_bytes = max_bytes
        self.pings = 0

    def feed(self, data: bytes) -> list[Request | Response | SipError]:
        buffer = self._buffer
        buffer += data
        out: list[Request | Response | SipError] = []
        while True:
            while buffer[:2] == b"\r\n":  # keep-alives between messages
                if buffer[:4] == b"\r\n\r\n":
                    self.pings += 1
                    del buffer[:4]
                else:
                    del buffer[:2]
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_bytes:
                    raise SipError("headers past the size limit")
                return out
            head = bytes(buffer[:end])
            match = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$", head)
            if match is None or not match[1].isdigit():
                raise SipError("a message without a Content-Length on a stream")
            total = end + 4 + int(match[1])
            if total > self.max_bytes:
                raise SipError(f"a {total}-byte message is over the size limit")
            if len(buffer) < total:
                return out
            raw = bytes(buffer[:total])
            del buffer[:total]
            try:
                out.append(parse(raw, stream=True))
            except SipError as error:
                out.append(error)
