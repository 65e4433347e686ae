"""A media stream's WebSocket: each whole message handed to its session as it arrives.

``websockets``' asyncio connection queues every incoming message in an assembler, and the
reader's task wakes up to take it: a future, a task step and the assembler's bookkeeping
per message. A media session takes 50 small messages a second per call and handles each
without awaiting anything, so :class:`MediaConnection` hands each whole text or binary
message straight to the session's callback, from ``data_received``: the messages of one
read are handled in one go, in the loop turn that read them. Control frames (ping, pong,
close) still go through the library, which answers them.

The switch is made before any message can arrive: on the server,
:meth:`~MediaConnection.hold_messages` during the handshake (the route is a media stream;
other routes, such as the WebRTC companions' link, read the connection as usual); a
:class:`MediaClientConnection` holds from the start. The session then calls
:meth:`~MediaConnection.take_messages`, which first hands over what came in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import DATA_OPCODES, Frame, Opcode

from flowcat_ft.transports.http import HttpConnection

__all__ = ["MediaClientConnection", "MediaConnection", "OnMessage"]

OnMessage = Callable[[str | bytes], object]
"""Takes one whole message: ``str`` for a text message, ``bytes`` for a binary one."""


class _MessagesToCallback:
    """Data messages straight to a callback; mixed into a ``websockets`` connection.

    Threading contract: used on its connection's event loop only.
    """

    _held: list[str | bytes] | None = None  # messages that came before a callback
    _on_message: OnMessage | None = None
    _fragments: list[bytes] = []  # noqa: RUF012 (replaced, never changed in place)
    _text = False  # the message being assembled is text

    def hold_messages(self) -> None:
        """Keep data messages here, for :meth:`take_messages`, rather than in the library's
        queue (call during the handshake, before any can arrive)."""
        if self._held is None and self._on_message is None:
            self._held = []

    def take_messages(self, on_message: OnMessage) -> None:
        """Hand every data message to ``on_message`` as it arrives (those held so far
        first). ``recv()`` and ``async for`` then see none."""
        held, self._held = self._held or [], None
        self._on_message = on_message
        for message in held:
            on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        self._on_message = self._held = None  # the session and the connection part
        # The library's Sans-I/O protocol and its parser, a suspended generator whose frame
        # holds the protocol, are a cycle: end the parser (the protocol is closed now, and
        # reads nothing more), or every connection leaves its protocol to the collector.
        self.protocol.parser.close()
        if exc is not None:
            # Kept by the library, the error's traceback would keep the frames it went
            # through alive, and with them a cycle back to this connection and its session.
            exc.__traceback__ = None

    def process_event(self, event: object) -> None:
        direct = self._held is not None or self._on_message is not None
        if not (direct and isinstance(event, Frame) and event.opcode in DATA_OPCODES):
            super().process_event(event)  # type: ignore[misc]
            return
        if event.opcode is not Opcode.CONT:
            self._fragments, self._text = [], event.opcode is Opcode.TEXT
        self._fragments.append(event.data)
        if not event.fin:
            return
        data = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        self._fragments = []
        # The library has checked a text message's UTF-8 as it parsed its frames.
        message = bytes(data).decode() if self._text else bytes(data)
        if self._on_message is not None:
            self._on_message(message)
        else:
            self._held.append(message)


class MediaConnection(_MessagesToCallback, HttpConnection):
    """The server's connection: pages and webhooks (see
    :class:`~flowcat_ft.transports.http.HttpConnection`), and media streams whose messages
    go to their session once :meth:`hold_messages` is called."""


class MediaClientConnection(_MessagesToCallback, ClientConnection):
    """A client's connection for a media stream: it holds data messages from the start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_messages()
