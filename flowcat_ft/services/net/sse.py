"""Server-Sent Events as a Sans-I/O parser: bytes in, events out.

Follows the WHATWG HTML standard's event-stream interpretation
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- the stream is UTF-8 (a leading byte order mark is dropped, invalid bytes become U+FFFD);
- lines end with CRLF, LF or CR, and a CR at the end of one chunk may pair with an LF at the
  start of the next;
- a line starting with ``:`` is a comment; otherwise ``field:value`` (one space after the
  colon is dropped) or a bare ``field`` with an empty value;
- ``event`` sets the type of the event being built, ``data`` appends a line to its data,
  ``id`` sets the last event id (unless the value holds a NUL), ``retry`` sets the
  reconnection time when it is all ASCII digits; other fields are ignored;
- a blank line dispatches the event: none if no data line came, else its data without the
  last newline, its type (``"message"`` by default) and the last event id;
- at the end of the stream an event not yet dispatched is dropped.

Threading: a parser holds one stream's state; use it from one thread at a time.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str = ""


class SSEParser:
    """Feed it the bytes of an event stream as they arrive; it returns complete events.

    ``max_line`` bounds one line (and ``max_event`` one event's data) in characters, so a
    peer that never sends a newline cannot make it buffer without end: past them
    :meth:`feed` raises :class:`ValueError`.
    """

    def __init__(self, *, max_line: int = 1 << 20, max_event: int = 4 << 20) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self.last_event_id = ""
        self.retry_ms: int | None = None
        """The reconnection time the stream asked for, in milliseconds (None if not)."""
        self.max_line = max_line
        self.max_event = max_event

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events completed by ``data`` (often none, sometimes several)."""
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        return self._lines(self._buffer + text, final=False)

    def close(self) -> list[SSEEvent]:
        """The stream ended: a last line without its newline is still a line, but an event
        without the blank line that dispatches it is dropped (per the standard)."""
        text = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        if text:
            self._lines(text + "\n", final=True)
        self._data, self._data_size, self._event = [], 0, ""
        return []

    def _lines(self, text: str, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        start = 0
        n = len(text)
        while start < n:
            cr = text.find("\r", start)
            lf = text.find("\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < n:
                end, nxt = cr, cr + 2 if text[cr + 1] == "\n" else cr + 1
            elif final:
                end, nxt = cr, cr + 1
            else:
                break  # a CR at the end of the chunk: the LF may follow in the next one
            event = self._line(text[start:end])
            if event is not None:
                events.append(event)
            start = nxt
        rest = text[start:]
        if len(rest) > self.max_line:
            raise ValueError(f"an event-stream line over {self.max_line} characters")
        self._buffer = rest
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_event:
                raise ValueError(f"an event's data is over {self.max_event} characters")
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._data_size, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self.last_event_id)
