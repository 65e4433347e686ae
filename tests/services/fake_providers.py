"""Local stand-ins for the cloud providers, speaking their documented wire formats.

Each runs on 127.0.0.1 (port 0) on an event-loop thread of its own, records what clients
sent, and can misbehave on demand: garbage, a close mid-stream, a stall, an error message,
a 429 with Retry-After. What a test wants of a server is set on its attributes before (or
while) the client talks to it. Given a server-side ``ssl_context``, the HTTP and WebSocket
servers speak TLS (``https``/``wss`` URLs); the HTTP server speaks HTTP/2 (over hyper-h2's
Sans-I/O state machine) to TLS clients that take it, when asked to offer it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WSRequest

from flowcat_ft import (
    Direction,
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from flowcat_ft.loops import EventLoopThread

# -- shared bits ---------------------------------------------------------------------------


def tone(seconds: float, rate: int, value: int = 1000) -> bytes:
    """``seconds`` of a quiet 440 Hz tone as 16-bit PCM."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    return (np.sin(2 * math.pi * 440 * t) * value).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def server_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    """A TLS server context with ``certificate`` (a fresh one each time: a server may set
    its ALPN protocols)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


class _Threaded:
    """A server on an event-loop thread of its own."""

    def __init__(self, name: str) -> None:
        self.io = EventLoopThread(name)
        self.changed = threading.Condition()

    def run(self, coro: Awaitable[Any], timeout: float = 5.0) -> Any:
        return self.io.submit(coro).result(timeout)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


# -- HTTP ----------------------------------------------------------------------------------


@dataclass
class HTTPRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str = "HTTP/1.1"

    def json(self) -> Any:
        return json.loads(self.body)


class Reply:
    """What a handler uses to answer one request; :class:`_H1Reply` and :class:`_H2Reply`
    put it on the wire. ``closed_by_client`` is set once the client has gone away (over
    HTTP/1.1 it closed the connection; over HTTP/2 it reset the stream)."""

    def __init__(self, server: FakeHTTPServer) -> None:
        self.server = server
        self.closed_by_client = asyncio.Event()

    def _client_gone(self) -> None:
        if not self.closed_by_client.is_set():
            self.closed_by_client.set()
            self.server.disconnects += 1
            self.server.notify()

    async def head(self, status: int, headers: dict[str, str]) -> None:
        raise NotImplementedError

    async def body(self, data: bytes, end: bool = False) -> bool:
        """Send part of the body (``end``: the last part); False if the client has gone."""
        raise NotImplementedError

    def cut(self) -> None:
        """Drop the connection mid-response."""
        raise NotImplementedError

    async def stop_watching(self) -> None:
        """Stop watching for the client going away (at the end of the response)."""

    async def json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        await self.head(
            status,
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                **(headers or {}),
            },
        )
        await self.body(body, end=True)

    async def start_chunked(self, content_type: str) -> None:
        """Start a body streamed in parts of any size (chunked, over HTTP/1.1)."""
        raise NotImplementedError

    async def chunk(self, data: bytes) -> bool:
        """Send one part; False if the client has gone."""
        if self.closed_by_client.is_set():
            return False
        return await self.body(data)

    async def end_chunked(self) -> None:
        await self.body(b"", end=True)
        await self.stop_watching()

    async def sse(
        self,
        events: list[str],
        delay: float = 0.0,
        cut_after: int | None = None,
        stall_after: int | None = None,
    ) -> None:
        """Stream ``events`` (each a complete ``data: ...`` block) as chunks; cut the
        connection after ``cut_after`` events, or stall for ever after ``stall_after``."""
        await self.start_chunked("text/event-stream")
        for i, event in enumerate(events):
            if cut_after is not None and i == cut_after:
                self.cut()
                return
            if stall_after is not None and i == stall_after:
                await self.closed_by_client.wait()
                return
            if not await self.chunk(event.encode()):
                return
            self.server.events_sent += 1
            self.server.notify()
            if delay:
                try:
                    await asyncio.wait_for(self.closed_by_client.wait(), delay)
                    return
                except TimeoutError:
                    pass
        await self.end_chunked()


class _H1Reply(Reply):
    def __init__(self, server: FakeHTTPServer, reader, writer) -> None:
        super().__init__(server)
        self.reader = reader
        self.writer = writer
        self._chunked = False
        self._watch: asyncio.Task | None = None

    def watch_client(self) -> None:
        """Notice the client going away while we stream (it sends nothing mid-response)."""

        async def watch() -> None:
            # Poll rather than read: a read could take a byte of the next request.
            while not self.reader.at_eof():
                await asyncio.sleep(0.01)
            self._client_gone()

        self._watch = asyncio.ensure_future(watch())

    async def head(self, status: int, headers: dict[str, str]) -> None:
        reason = HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def start_chunked(self, content_type: str) -> None:
        await self.head(200, {"Content-Type": content_type, "Transfer-Encoding": "chunked"})
        self._chunked = True
        self.watch_client()

    async def body(self, data: bytes, end: bool = False) -> bool:
        if self._chunked:
            data = (b"%x\r\n%s\r\n" % (len(data), data) if data else b"") + (
                b"0\r\n\r\n" if end else b""
            )
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def cut(self) -> None:
        self.writer.close()

    async def stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None


class _H2Connection:
    """One HTTP/2 connection's server side, on hyper-h2's Sans-I/O state machine: bytes
    in, events out; each complete request runs its handler as a task of its own."""

    def __init__(self, server: FakeHTTPServer, reader, writer) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.window_open = asyncio.Event()
        self._requests: dict[int, HTTPRequest] = {}
        self._replies: dict[int, _H2Reply] = {}
        self._tasks: set[asyncio.Task] = set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def serve(self) -> None:
        self.h2.initiate_connection()
        self.flush()
        try:
            while data := await self.reader.read(65536):
                for event in self.h2.receive_data(data):
                    self._event(event)
                self.flush()
        finally:
            for reply in self._replies.values():
                reply._client_gone()
            for task in self._tasks:
                task.cancel()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers)
            request = HTTPRequest(
                headers.pop(":method"),
                headers.pop(":path"),
                {k: v for k, v in headers.items() if not k.startswith(":")},
                b"",
                "HTTP/2",
            )
            self._requests[event.stream_id] = request
        elif isinstance(event, h2.events.DataReceived):
            self._requests[event.stream_id].body += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            request = self._requests.pop(event.stream_id)
            reply = self._replies[event.stream_id] = _H2Reply(self, event.stream_id)
            task = asyncio.ensure_future(self.server._answer(request, reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(event, h2.events.StreamReset):
            reply = self._replies.pop(event.stream_id, None)
            if reply is not None:
                reply._client_gone()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_open.set()


class _H2Reply(Reply):
    def __init__(self, connection: _H2Connection, stream_id: int) -> None:
        super().__init__(connection.server)
        self.connection = connection
        self.stream_id = stream_id

    async def head(self, status: int, headers: dict[str, str]) -> None:
        fields = [(":status", str(status))] + [(k.lower(), v) for k, v in headers.items()]
        self.connection.h2.send_headers(self.stream_id, fields)
        self.connection.flush()
        await self.connection.writer.drain()

    async def start_chunked(self, content_type: str) -> None:
        await self.head(200, {"Content-Type": content_type})

    async def body(self, data: bytes, end: bool = False) -> bool:
        connection = self.connection
        conn = connection.h2
        try:
            while data:
                size = min(
                    len(data),
                    conn.local_flow_control_window(self.stream_id),
                    conn.max_outbound_frame_size,
                )
                if size <= 0:  # wait for the client to open its window
                    connection.window_open.clear()
                    await connection.window_open.wait()
                    continue
                conn.send_data(self.stream_id, data[:size])
                data = data[size:]
            if end:
                conn.end_stream(self.stream_id)
                connection._replies.pop(self.stream_id, None)  # answered: no longer watched
            connection.flush()
            await connection.writer.drain()
        except (h2.exceptions.StreamClosedError, ConnectionError, OSError):
            return False
        return True

    def cut(self) -> None:
        self.connection.writer.close()


Handler = Callable[[HTTPRequest, Reply], Awaitable[None]]


class FakeHTTPServer(_Threaded):
    """HTTP on 127.0.0.1 with keep-alive. ``routes[path]`` is a handler, or a list of
    handlers taken one per request (the last one repeats). Over TLS with ``http2``, the
    server offers HTTP/2 in ALPN (and HTTP/1.1 to clients that do not take it)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, http2: bool = False) -> None:
        super().__init__("fake-http")
        self.routes: dict[str, Handler | list[Handler]] = {}
        self.requests: list[HTTPRequest] = []
        self.connections = 0
        self.connections_closed = 0
        self.disconnects = 0
        self.events_sent = 0
        if http2:
            if ssl_context is None:
                raise ValueError("HTTP/2 is offered in TLS's ALPN: give an ssl_context")
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self._ssl = ssl_context
        self._server: asyncio.AbstractServer | None = None
        self.port = self.run(self._start())

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.io.loop.is_closed():
            return

        async def stop() -> None:
            self._server.close()

        self.run(stop())
        self.io.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        tls = writer.get_extra_info("ssl_object")
        try:
            if tls is not None and tls.selected_alpn_protocol() == "h2":
                await _H2Connection(self, reader, writer).serve()
                return
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                reply = _H1Reply(self, reader, writer)
                await self._answer(request, reply)
                await reply.stop_watching()
                if writer.is_closing() or reply.closed_by_client.is_set():
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.connections_closed += 1
            self.notify()

    async def _answer(self, request: HTTPRequest, reply: Reply) -> None:
        self.requests.append(request)
        self.notify()
        route = self.routes.get(request.path)
        if isinstance(route, list):
            handler = route.pop(0) if len(route) > 1 else route[0]
        else:
            handler = route
        if handler is None:
            await reply.json(404, {"error": {"message": "no such route"}})
            return
        await handler(request, reply)

    async def _read_request(self, reader: asyncio.StreamReader) -> HTTPRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return HTTPRequest(method, path, headers, body)


# -- OpenAI chat completions and Anthropic messages, as SSE -------------------------------


def openai_chunks(
    tokens: list[str],
    tool_calls: list[dict] | None = None,
    usage: tuple[int, int] = (10, 5),
    done: bool = True,
) -> list[str]:
    """The documented chunk sequence: role, content deltas, tool call fragments (id and name
    first, arguments in two pieces), finish_reason, usage, [DONE]."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake"}

    def event(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    out = [event({"role": "assistant", "content": ""})]
    out += [event({"content": t}) for t in tokens]
    for i, call in enumerate(tool_calls or ()):
        args = call["arguments"]
        half = len(args) // 2
        out.append(
            event(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        out.append(event({"tool_calls": [{"index": i, "function": {"arguments": args[:half]}}]}))
        out.append(event({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]}))
    out.append(event({}, "tool_calls" if tool_calls else "stop"))
    prompt, completion = usage
    counts = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    out.append(f"data: {json.dumps({**base, 'choices': [], 'usage': counts})}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return out


def anthropic_events(
    tokens: list[str], tool_uses: list[dict] | None = None, error: dict | None = None
) -> list[str]:
    """The documented event sequence, with a ping, text deltas and input_json_delta."""

    def event(name: str, payload: dict) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"

    out = [
        event(
            "message_start",
            {
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "fake",
                    "stop_reason": None,
                    "usage": {"input_tokens": 12, "output_tokens": 1},
                }
            },
        ),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("ping", {}),
    ]
    out += [
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
        for t in tokens
    ]
    out.append(event("content_block_stop", {"index": 0}))
    if error is not None:
        out.append(event("error", {"error": error}))
        return out
    for i, use in enumerate(tool_uses or (), start=1):
        out.append(
            event(
                "content_block_start",
                {
                    "index": i,
                    "content_block": {
                        "type": "tool_use",
                        "id": use["id"],
                        "name": use["name"],
                        "input": {},
                    },
                },
            )
        )
        args = use["arguments"]
        for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
            out.append(
                event(
                    "content_block_delta",
                    {"index": i, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
            )
        out.append(event("content_block_stop", {"index": i}))
    stop = "tool_use" if tool_uses else "end_turn"
    out.append(
        event(
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 7}},
        )
    )
    out.append(event("message_stop", {}))
    return out


def sse_handler(events: list[str], delay: float = 0.0, **kwargs: Any) -> Handler:
    async def handle(request: HTTPRequest, reply: Reply) -> None:
        await reply.sse(events, delay, **kwargs)

    return handle


def status_handler(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: HTTPRequest, reply: Reply) -> None:
        await reply.json(status, body or {"error": {"message": HTTPStatus(status).phrase}}, headers)

    return handle


def raw_handler(data: bytes, close: bool = True) -> Handler:
    async def handle(request: HTTPRequest, reply: Reply) -> None:
        await reply.body(data)
        if close:
            reply.cut()

    return handle


def pcm_handler(
    pcm: bytes, chunk_bytes: int = 4800, delay: float = 0.0, stall_after: int | None = None
) -> Handler:
    """Stream raw PCM in chunks (the OpenAI speech endpoint's ``pcm`` format)."""

    async def handle(request: HTTPRequest, reply: Reply) -> None:
        await reply.start_chunked("application/octet-stream")
        for i in range(0, len(pcm), chunk_bytes):
            if stall_after is not None and i // chunk_bytes == stall_after:
                await reply.closed_by_client.wait()
                return
            if not await reply.chunk(pcm[i : i + chunk_bytes]):
                return
            if delay:
                try:
                    await asyncio.wait_for(reply.closed_by_client.wait(), delay)
                    return
                except TimeoutError:
                    pass
        await reply.end_chunked()

    return handle


# -- WebSocket servers ---------------------------------------------------------------------


class FakeWSServer(_Threaded):
    """A websockets server; subclasses implement :meth:`session`. ``reject`` (a status and
    headers) refuses the next handshakes, one per entry."""

    def __init__(self, name: str, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(name)
        self.handshakes: list[dict[str, str]] = []
        self.reject: deque[tuple[int, dict[str, str]]] = deque()
        self.connections = 0
        self.closed_by_client = 0
        self._ssl = ssl_context
        self._server: Server | None = None
        self.port = self.run(self._start())

    async def _start(self) -> int:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            ssl=self._ssl,
        )
        return self._server.sockets[0].getsockname()[1]

    def _process_request(self, connection: ServerConnection, request: WSRequest):
        self.handshakes.append(
            {"path": request.path, **{k.lower(): v for k, v in request.headers.raw_items()}}
        )
        if self.reject:
            status, headers = self.reject.popleft()
            response = connection.respond(HTTPStatus(status), "go away\n")
            for k, v in headers.items():
                response.headers[k] = v
            return response
        return None

    @property
    def url(self) -> str:
        return f"{'wss' if self._ssl else 'ws'}://127.0.0.1:{self.port}"

    async def _handle(self, ws: ServerConnection) -> None:
        self.opening(ws)
        self.connections += 1
        self.notify()
        try:
            await self.session(ws)
        except ConnectionClosed:
            pass
        finally:
            if ws.protocol.close_rcvd_then_sent:
                self.closed_by_client += 1
            self.notify()

    def opening(self, ws: ServerConnection) -> None:
        """Take what the connection keeps of the settings, before it is counted: a test
        waiting for the count may change them as soon as it sees it (on another thread)."""

    async def session(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.io.loop.is_closed():
            return

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        try:
            self.run(stop())
        finally:
            self.io.stop()


class FakeDeepgram(FakeWSServer):
    """Deepgram live: interim results as audio arrives, a final (is_final, speech_final)
    once ``final_after`` seconds of audio came or on Finalize, and an empty final for each
    message of audio after it; KeepAlive, Finalize and CloseStream recorded, and in
    ``received`` every message in order (an audio message as its length in bytes, a control
    message as its type). With ``utterance_end``, the final is not ``speech_final`` and an
    ``UtteranceEnd`` message follows it (as when noise keeps endpointing from firing).
    ``mode``: "normal", "garbage" (a non-JSON message first), "error" (an Error message
    first), "drop" (close with 1011 after the first result), "silent" (take the audio,
    answer nothing, until the mode changes), "stall" (the same on this connection for
    ever). Each connection takes the mode it opens with, but for "silent"."""

    def __init__(
        self,
        words: list[str],
        final_after: float = 0.3,
        rate: int = 16000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__("fake-deepgram", ssl_context)
        self.words = words
        self.final_after = final_after
        self.rate = rate
        self.mode = "normal"
        self.utterance_end = False
        self.audio_bytes = 0
        self.controls: list[str] = []
        self.received: list[int | str] = []
        self._modes: dict[ServerConnection, str] = {}  # each connection's, as it opened

    def _results(self, text: str, final: bool, start: float) -> str:
        return json.dumps(
            {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": 0.5,
                "start": start,
                "is_final": final,
                "speech_final": final and not self.utterance_end,
                "channel": {
                    "alternatives": [{"transcript": text, "confidence": 0.98, "words": []}]
                },
                "metadata": {"request_id": "r1", "model_info": {"name": "fake"}},
            }
        )

    async def _final(self, ws: ServerConnection) -> None:
        await ws.send(self._results(" ".join(self.words), True, 0.0))
        if self.utterance_end:
            await ws.send(
                json.dumps({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.4})
            )

    def opening(self, ws: ServerConnection) -> None:
        self._modes[ws] = self.mode

    async def session(self, ws: ServerConnection) -> None:
        mode = self._modes.pop(ws)
        if mode == "garbage":
            await ws.send("this is not json")
        elif mode == "error":
            await ws.send(json.dumps({"type": "Error", "description": "bad audio", "variant": "x"}))
        heard = 0
        shown = 0
        step = int(0.1 * self.rate * 2)
        async for message in ws:
            if isinstance(message, bytes):
                self.audio_bytes += len(message)
                self.received.append(len(message))
                if mode == "stall" or self.mode == "silent":
                    self.notify()
                    continue
                heard += len(message)
                while heard >= step * (shown + 1) and shown < len(self.words):
                    shown += 1
                    await ws.send(self._results(" ".join(self.words[:shown]), False, 0.0))
                    if mode == "drop":
                        self.mode = "normal"
                        await ws.close(1011, "NET-0000 internal error")
                        return
                if heard >= self.final_after * self.rate * 2 and shown >= 0:
                    await self._final(ws)
                    heard = -(10**12)  # one final per connection
                elif heard < 0:  # audio after it is answered, as Deepgram answers silence
                    await ws.send(self._results("", True, 0.0))
                self.notify()
                continue
            kind = json.loads(message).get("type")
            self.controls.append(kind)
            self.received.append(kind)
            if kind == "Finalize" and heard > 0:  # flush the final for the audio so far
                await self._final(ws)
                heard = -(10**12)
            self.notify()
            if kind == "CloseStream":
                await ws.send(json.dumps({"type": "Metadata", "request_id": "r1", "duration": 1.0}))
                await ws.close(1000)
                return


class FakeCartesia(FakeWSServer):
    """Cartesia TTS: for each generation request, ``word_secs`` of audio per word, in
    chunks of ``chunk_secs`` sent ``delay`` apart, with word timestamps (seconds from the
    context's start) sent before the chunks; ``done`` after ``continue: false``. ``mode``:
    "normal", "garbage", "close" (after the first chunk), "stall" (after the first chunk),
    "error" (an error message for the context); with ``fault_on`` set, only contexts whose
    first text contains it get ``mode``, the others "normal"."""

    def __init__(self, word_secs: float = 0.1, chunk_secs: float = 0.05, delay: float = 0.0):
        super().__init__("fake-cartesia")
        self.word_secs = word_secs
        self.chunk_secs = chunk_secs
        self.delay = delay
        self.mode = "normal"
        self.fault_on: str | None = None
        self.requests: list[dict] = []
        self.cancelled: list[str] = []
        self.chunks_sent = 0

    async def session(self, ws: ServerConnection) -> None:
        offsets: dict[str, float] = {}
        tasks: dict[str, asyncio.Task] = {}
        queues: dict[str, asyncio.Queue] = {}
        async for message in ws:
            request = json.loads(message)
            self.requests.append(request)
            self.notify()
            ctx = request["context_id"]
            if request.get("cancel"):
                self.cancelled.append(ctx)
                task = tasks.pop(ctx, None)
                if task is not None:
                    task.cancel()
                continue
            queue = queues.setdefault(ctx, asyncio.Queue())
            queue.put_nowait(request)
            if ctx not in tasks:
                offsets[ctx] = 0.0
                tasks[ctx] = asyncio.ensure_future(self._context(ws, ctx, queue))

    async def _context(self, ws: ServerConnection, ctx: str, queue: asyncio.Queue) -> None:
        offset = 0.0
        first = True
        faulty = None
        while True:
            request = await queue.get()
            if faulty is None:
                faulty = self.fault_on is None or self.fault_on in request["transcript"]
            mode = self.mode if faulty else "normal"
            if mode == "garbage":
                await ws.send("<html>502 Bad Gateway</html>")
                return
            if mode == "error":
                await ws.send(
                    json.dumps(
                        {
                            "type": "error",
                            "context_id": ctx,
                            "done": True,
                            "error": "voice not found",
                            "status_code": 400,
                        }
                    )
                )
                return
            rate = request["output_format"]["sample_rate"]
            words = request["transcript"].split()
            if words:
                starts = [offset + i * self.word_secs for i in range(len(words))]
                await ws.send(
                    json.dumps(
                        {
                            "type": "timestamps",
                            "context_id": ctx,
                            "done": False,
                            "status_code": 206,
                            "word_timestamps": {
                                "words": words,
                                "start": starts,
                                "end": [s + self.word_secs for s in starts],
                            },
                        }
                    )
                )
                audio = tone(len(words) * self.word_secs, rate)
                step = int(self.chunk_secs * rate) * 2
                for i in range(0, len(audio), step):
                    await ws.send(
                        json.dumps(
                            {
                                "type": "chunk",
                                "context_id": ctx,
                                "done": False,
                                "status_code": 206,
                                "step_time": 1,
                                "data": b64(audio[i : i + step]),
                            }
                        )
                    )
                    self.chunks_sent += 1
                    self.notify()
                    if first and mode == "close":
                        await ws.close(1011, "internal error")
                        return
                    if first and mode == "stall":
                        await asyncio.sleep(3600)
                    first = False
                    if self.delay:
                        await asyncio.sleep(self.delay)
                offset += len(words) * self.word_secs
            if not request.get("continue", False):
                await ws.send(
                    json.dumps(
                        {"type": "done", "context_id": ctx, "done": True, "status_code": 206}
                    )
                )
                return


class FakeElevenLabs(FakeWSServer):
    """ElevenLabs stream-input: a chunk of ``word_secs`` per word of each text message, with
    alignment (ms from the chunk's start), ``delay`` apart; ``isFinal`` after ``{"text":
    ""}``. ``mode``: "normal", "error" (an error message, then close), "garbage"."""

    def __init__(self, word_secs: float = 0.1, delay: float = 0.0, rate: int = 16000) -> None:
        super().__init__("fake-elevenlabs")
        self.word_secs = word_secs
        self.delay = delay
        self.rate = rate
        self.mode = "normal"
        self.messages: list[dict] = []
        self.finals_sent = 0
        self.cut_before_final = 0

    async def session(self, ws: ServerConnection) -> None:
        final = False
        try:
            async for message in ws:
                payload = json.loads(message)
                self.messages.append(payload)
                self.notify()
                if self.mode == "error":
                    await ws.send(
                        json.dumps(
                            {"message": "quota exceeded", "error": "quota_exceeded", "code": 1008}
                        )
                    )
                    await ws.close(1008, "quota")
                    return
                if self.mode == "garbage":
                    await ws.send("\x00\x01garbage")
                    continue
                text = payload.get("text")
                if text == " ":
                    continue  # the opening message
                if text == "":
                    await ws.send(json.dumps({"audio": None, "isFinal": True}))
                    self.finals_sent += 1
                    final = True
                    self.notify()
                    continue
                for word in text.split():
                    chars = list(word + " ")
                    step = self.word_secs * 1000 / len(chars)
                    await ws.send(
                        json.dumps(
                            {
                                "audio": b64(tone(self.word_secs, self.rate)),
                                "isFinal": None,
                                "alignment": {
                                    "chars": chars,
                                    "charStartTimesMs": [int(i * step) for i in range(len(chars))],
                                    "charDurationsMs": [int(step)] * len(chars),
                                },
                            }
                        )
                    )
                    if self.delay:
                        await asyncio.sleep(self.delay)
        finally:
            if not final:
                self.cut_before_final += 1
                self.notify()


class FakeRealtime(FakeWSServer):
    """OpenAI Realtime: with server VAD, after ``speech_after`` seconds of audio appended
    (24 kHz) in a session, VAD events, a commit and a transcription, then a response:
    ``chunks`` audio deltas of ``chunk_secs`` sent ``delay`` apart with transcript deltas,
    then response.done. With ``turn_detection`` null, ``input_audio_buffer.commit`` commits
    (an error if nothing was appended) and ``response.create`` answers. With
    ``function_call`` set, the first response is that call; its output and response.create
    bring a spoken answer. :meth:`drop` cuts the connection. Records every client event."""

    def __init__(
        self,
        chunks: int = 10,
        chunk_secs: float = 0.1,
        delay: float = 0.0,
        speech_after: float = 0.2,
    ) -> None:
        super().__init__("fake-realtime")
        self.chunks = chunks
        self.chunk_secs = chunk_secs
        self.delay = delay
        self.speech_after = speech_after
        self.events: list[dict] = []
        self.audio_bytes = 0
        self.responses = 0
        self.function_call: dict | None = None
        self.send_error = False
        self.send_garbage = False
        self._current: ServerConnection | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    def drop(self) -> None:
        """Close the current connection as a server failing would (1011)."""

        async def close() -> None:
            await self._current.close(1011, "server error")

        self.run(close())

    async def _heard(self, ws: ServerConnection, item: str, vad: bool) -> None:
        if vad:
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": 0,
                        "item_id": item,
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": 200,
                        "item_id": item,
                    }
                )
            )
        await ws.send(json.dumps({"type": "input_audio_buffer.committed", "item_id": item}))
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item,
                    "content_index": 0,
                    "transcript": "what is the weather",
                }
            )
        )

    def _start_response(self, ws: ServerConnection, call: dict | None) -> asyncio.Task:
        self.responses += 1
        return asyncio.ensure_future(self._respond(ws, self.responses, call))

    async def session(self, ws: ServerConnection) -> None:
        self._current = ws
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "s1"}}))
        responding: asyncio.Task | None = None
        server_vad = True
        buffered = 0  # bytes appended since the last commit
        triggered = False
        async for message in ws:
            event = json.loads(message)
            if event["type"] != "input_audio_buffer.append":
                self.events.append(event)
                self.notify()
            kind = event["type"]
            if kind == "session.update":
                server_vad = event["session"].get("turn_detection") is not None
                await ws.send(json.dumps({"type": "session.updated", "session": event["session"]}))
                if self.send_error:
                    await ws.send(
                        json.dumps(
                            {
                                "type": "error",
                                "error": {
                                    "type": "invalid_request_error",
                                    "code": "bad",
                                    "message": "bad voice",
                                },
                            }
                        )
                    )
                if self.send_garbage:
                    await ws.send("{not json")
            elif kind == "input_audio_buffer.append":
                size = len(base64.b64decode(event["audio"]))
                self.audio_bytes += size
                buffered += size
                self.notify()
                if server_vad and not triggered and buffered >= self.speech_after * 24000 * 2:
                    triggered = True
                    buffered = 0
                    await self._heard(ws, f"u{self.responses + 1}", vad=True)
                    responding = self._start_response(ws, self.function_call)
            elif kind == "input_audio_buffer.commit":
                if not buffered:
                    error = {
                        "type": "invalid_request_error",
                        "code": "input_audio_buffer_commit_empty",
                        "message": "buffer too small",
                    }
                    await ws.send(json.dumps({"type": "error", "error": error}))
                    continue
                buffered = 0
                await self._heard(ws, f"u{self.responses + 1}", vad=False)
            elif kind == "response.create":
                call = self.function_call if not server_vad and not self.responses else None
                responding = self._start_response(ws, call)
            elif kind == "response.cancel" and responding is not None:
                responding.cancel()
                await ws.send(
                    json.dumps(
                        {
                            "type": "response.done",
                            "response": {"id": "r", "status": "cancelled", "usage": {}},
                        }
                    )
                )

    async def _respond(self, ws: ServerConnection, n: int, call: dict | None) -> None:
        rid, item = f"resp_{n}", f"item_{n}"
        await ws.send(
            json.dumps(
                {"type": "response.created", "response": {"id": rid, "status": "in_progress"}}
            )
        )
        if call is not None:
            await ws.send(
                json.dumps(
                    {
                        "type": "response.output_item.added",
                        "response_id": rid,
                        "item": {"id": "fc1", "type": "function_call"},
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "response.function_call_arguments.done",
                        "response_id": rid,
                        "item_id": "fc1",
                        "output_index": 0,
                        "call_id": call["call_id"],
                        "name": call["name"],
                        "arguments": call["arguments"],
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "response.done",
                        "response": {
                            "id": rid,
                            "status": "completed",
                            "usage": {"input_tokens": 5, "output_tokens": 3},
                        },
                    }
                )
            )
            return
        await ws.send(
            json.dumps(
                {
                    "type": "response.output_item.added",
                    "response_id": rid,
                    "item": {"id": item, "type": "message", "role": "assistant"},
                }
            )
        )
        for i in range(self.chunks):
            await ws.send(
                json.dumps(
                    {
                        "type": "response.audio_transcript.delta",
                        "response_id": rid,
                        "item_id": item,
                        "delta": f"word{i} ",
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "response.audio.delta",
                        "response_id": rid,
                        "item_id": item,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": b64(tone(self.chunk_secs, 24000)),
                    }
                )
            )
            if self.delay:
                await asyncio.sleep(self.delay)
        await ws.send(
            json.dumps(
                {
                    "type": "response.done",
                    "response": {
                        "id": rid,
                        "status": "completed",
                        "usage": {"input_tokens": 20, "output_tokens": 40},
                    },
                }
            )
        )


@dataclass
class Recorder:
    """Collects a call's output frames (any thread) for tests to look at."""

    frames: list = field(default_factory=list)

    def __call__(self, frame, direction) -> None:
        self.frames.append((frame, direction))

    def of(self, kind, direction=None) -> list:
        return [
            f
            for f, d in list(self.frames)
            if isinstance(f, kind) and (direction is None or d == direction)
        ]


def errors(out: Recorder) -> list[ErrorFrame]:
    """The error frames a call sent upstream (out of its pipeline's first processor)."""
    return out.of(ErrorFrame, Direction.UPSTREAM)


def texts(out: Recorder) -> list[str]:
    """The text of the LLM's text frames a call put out, in order."""
    return [f.text for f in out.of(LLMTextFrame)]


def say_hello(call) -> None:
    """Push one LLM response, "Hello.", into ``call`` (for a TTS to speak)."""
    call.push(LLMFullResponseStartFrame())
    call.push(LLMTextFrame("Hello."))
    call.push(LLMFullResponseEndFrame())
