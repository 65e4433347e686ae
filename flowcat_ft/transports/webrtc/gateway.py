"""WebRTC for the server, through companion processes on an interpreter where aiortc imports.

aiortc cannot be installed on free-threaded 3.13t (cryptography and pylibsrtp have no
cp313t wheels), so the server does not terminate WebRTC itself: :class:`WebRTCGateway`
runs a pool of companion processes (:mod:`flowcat_ft.transports.webrtc.companion`) under
a python that has aiortc (the GIL twin, ``.venv-gil``), which do ICE, DTLS-SRTP and Opus.
For each WebRTC peer its companion opens a WebSocket connection to the server's own media
route on loopback (``media_path``, by default the playground's ``/playground``; any route
speaking the raw protocol, :mod:`flowcat_ft.serializers.raw`, with PCM16), so a WebRTC
call is a media session like any other: pacing, interruptions (``clear``), marks, flood
control, idle timeouts and the call's lifecycle are the
:class:`~flowcat_ft.transports.session.MediaSession`'s. The companion's first message on
that connection is ``{"event": "start", "call_id": PEER, "parameters": {"transport":
"webrtc", "peer": PEER}}``. The server's JSON text messages go on to the peer over its
``events`` data channel (if it opened one), and the peer's text there comes back to the
server.

Signalling is one HTTP exchange, with no trickle ICE (the companion gathers its candidates
before answering): ``POST /webrtc/offer`` with ``{"sdp": ..., "type": "offer"}`` answers
``{"sdp": ..., "type": "answer"}``. ICE uses host candidates only unless ``ice_servers``
(``stun:`` / ``turn:`` URIs) are given: enough on a LAN or loopback; a public server
needs a STUN or TURN server.

The control link: each companion connects back to the server as a WebSocket client on
``/webrtc/companion`` (:meth:`WebRTCGateway.sockets`) and speaks JSON objects:

    companion → gateway  {"op": "hello", "token": T, "pid": P, "aiortc": VERSION}
    gateway → companion  {"op": "offer", "id": N, "sdp": ..., "type": "offer"}
    companion → gateway  {"op": "answer", "id": N, "sdp": ..., "type": "answer", "peer": P}
                         {"op": "error", "id": N, "message": ...}
                         {"op": "peers", "count": N}      after each change

The token (a secret made per gateway, handed to the companions in the environment
variable :data:`TOKEN_ENV`) and the process id keep anyone else from taking a companion's
place; the pid also says which companion of the pool a link belongs to. The companions
send the token as a bearer token on every connection to the server, too: the control
link's handshake is refused without it (:meth:`WebRTCGateway.guards`), and
:meth:`WebRTCGateway.is_companion` tells the server's access checks and limits per client
which connections are the companions' own.

The pool: a companion is one process on a GIL build, so it uses at most one core (10 to
16 calls, see below), while the server uses every core. ``companions`` sets how many run;
the default is one per CPU this process may use (:func:`os.process_cpu_count`), so the
companions between them can use every core as the server does: on a machine taking only
WebRTC calls they need about two thirds of it (a companion spends about twice what the
server does on a call), and a companion short of a full core is late with its frames, so
none should be near one. An idle companion costs memory (about 80 MB), not CPU. Each offer
goes to the companion up with the least load: its live peers (its ``peers`` message) and
the offers it is answering.

Supervision: each companion has a thread that starts it, logs its output (each line
prefixed with ``companion PID:``, at the level the line names), and when it exits starts
another after a delay of its own that begins at 1 s and doubles up to 30 s (back to 1 s
after a companion that ran 30 s). The WebRTC calls of a companion that dies end with it:
its WebSocket connections drop, so their sessions cancel their calls; other calls, the
other companions' among them, go on, and offers go to the other companions meanwhile.
Offers that arrive while no companion is up wait up to ``offer_wait`` s for one, then get
503.

Cost, measured by ``bench/webrtc.py`` (``bench/results/2026-11-23-2c-webrtc-quick.txt``, a
busy 2-core machine): a companion spends 8 to 12% of a core per call at one to four calls
(Opus decoding and encoding, resampling, SRTP) on the GIL build, and 6% at 16, so one
companion process tops out near one core at 10 to 16 calls: 16 calls took one companion to
91% of a core, and two to 48% each. The server spends on a WebRTC call what it spends on a
WebSocket call (2 to 5% of a core). On that machine the measuring peer, one GIL process
too, takes most of the other core at 16 calls, so the round trips there measure a
saturated machine more than the pool (p99 1.15 s through one companion and 0.77 s through
two in that run, each 0.6 to 1.2 s over repeated runs; 0.2 s at four calls): what the pool
adds in calls shows with more cores.

The bridge adds about 200 ms to an echo's round trip against a direct WebSocket call: 160
ms of it is aiortc's fixed jitter buffer (4 frames held before decoding) on each receiving
side, the companion's and the measuring aiortc peer's (a browser uses its own adaptive
one), the rest Opus's 20 ms frames and look-ahead. aiortc's audio jitter buffer stays full
after a lost packet (aiortc issue #543), which adds delay on lossy networks.

Usage, beside a :class:`~flowcat_ft.transports.server.WebSocketServer`::

    gateway = WebRTCGateway(media_path="/playground")
    server = WebSocketServer(runtime, pipeline, pages=gateway.pages(),
                             sockets=gateway.sockets(), guards=gateway.guards()).start()
    gateway.start(f"ws://127.0.0.1:{server.port}")
    ...
    gateway.stop()  # first: the control connections would hold up the server's closing
    server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed

from flowcat_ft.transports.http import Guard, HttpRequest, HttpResponse, PageHandler

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from flowcat_ft.transports.server import SocketHandler

__all__ = ["CONTROL_PATH", "OFFER_PATH", "TOKEN_ENV", "WebRTCGateway", "find_python"]

logger = logging.getLogger("flowcat_ft.transports.webrtc")

OFFER_PATH = "/webrtc/offer"
CONTROL_PATH = "/webrtc/companion"
TOKEN_ENV = "FLOWCAT_WEBRTC_TOKEN"
PYTHON_ENV = "FLOWCAT_WEBRTC_PYTHON"
COMPANION = "flowcat_ft.transports.webrtc.companion"
FIRST_DELAY = 1.0  # before the first restart of a companion that died
MAX_DELAY = 30.0  # the most the delay doubles to; a companion up this long resets it
_REPO = Path(__file__).resolve().parents[3]


def find_python(python: str | None = None) -> tuple[str | None, str]:
    """The interpreter to run the companion with, and why: ``(python, "")`` if the companion
    imports there (aiortc with it), else ``(None, reason)``. Blocks (a subprocess each).

    Tried: *python* if given; else ``$FLOWCAT_WEBRTC_PYTHON`` if set; else the repository's
    ``.venv-gil/bin/python`` if it exists, then this interpreter. aiortc is never imported
    here: on 3.13t it is not installable, and its dependencies would turn the GIL on.
    """
    if python is None:
        python = os.environ.get(PYTHON_ENV) or None
    if python is not None:
        candidates = [python]
    else:
        venv = _REPO / ".venv-gil" / "bin" / "python"
        candidates = [str(venv)] if venv.exists() else []
        candidates.append(sys.executable)
    reasons = []
    for candidate in candidates:
        reason = _companion_imports(candidate)
        if not reason:
            return candidate, ""
        reasons.append(f"{candidate}: {reason}")
    return None, (
        "WebRTC needs a python where aiortc imports, to run its companion process, and none "
        f"was found ({'; '.join(reasons)}). Install it in the GIL venv (ci/venvs.sh does: "
        ".venv-gil/bin/pip install -e '.[webrtc]'), or set FLOWCAT_WEBRTC_PYTHON to such a "
        "python with flowcat-ft installed"
    )


def _companion_imports(python: str) -> str:
    """Why the companion module does not import under *python* ("" if it does)."""
    try:
        done = subprocess.run(
            [python, "-c", f"import {COMPANION}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run it ({error})"
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


class CompanionGoneError(ConnectionError):
    """The companion's control link closed before it answered."""


@dataclass(eq=False)
class _Link:
    """The control connection of one companion process, open on ``loop``.

    ``pending`` (requests waiting for an answer, by id) and ``peers`` (the companion's live
    peer connections, as it last said) are written under the gateway's lock: ``pending`` by
    the offer pages (any loop) and by the link's reader (``loop``), ``peers`` by the reader.
    """

    ws: ServerConnection
    loop: asyncio.AbstractEventLoop
    pid: int
    companion: _Companion
    pending: dict[int, Future] = field(default_factory=dict)
    peers: int = 0

    @property
    def load(self) -> int:
        """What the offer page balances (under the lock): live peers and offers in hand.
        The companion counts a peer once it has answered for it, just after the answer, so
        an offer arriving in that moment can miss one."""
        return self.peers + len(self.pending)

    async def send(self, message: dict[str, Any]) -> None:
        """Send on the link from any loop."""
        text = json.dumps(message, separators=(",", ":"))
        try:
            if asyncio.get_running_loop() is self.loop:
                await self.ws.send(text)
            else:
                sent = asyncio.run_coroutine_threadsafe(self.ws.send(text), self.loop)
                await asyncio.wrap_future(sent)
        except ConnectionClosed:
            raise CompanionGoneError("the WebRTC companion went away") from None


class _Companion:
    """One companion process of the pool, run by a supervisor thread of its own that starts
    another when it exits, after a delay of its own.

    ``process`` (the one running, if any), ``link`` (its control link, once it said hello)
    and ``restarts`` are written under the gateway's lock: ``process`` and ``restarts`` by
    the supervisor thread, ``link`` by the control handler (a server loop); the offer pages,
    the hello check and :meth:`WebRTCGateway.status` read them under it.
    """

    def __init__(self, gateway: WebRTCGateway, number: int) -> None:
        self.gateway = gateway
        self.process: subprocess.Popen[str] | None = None
        self.link: _Link | None = None
        self.restarts = 0
        self.thread = threading.Thread(
            target=self._supervise, name=f"flowcat-webrtc-companion-{number}", daemon=True
        )

    @property
    def up(self) -> bool:
        """Connected, and its process not known to have exited (under the lock)."""
        return self.link is not None and self.process is not None

    def status(self) -> dict[str, object]:
        """``pid``, ``running`` (up), ``peers`` and ``restarts`` (under the lock)."""
        process, link = self.process, self.link
        return {
            "pid": process.pid if process is not None else None,
            "running": self.up,
            "peers": link.peers if link is not None and process is not None else 0,
            "restarts": self.restarts,
        }

    def _supervise(self) -> None:
        stopping = self.gateway._stopping
        delay = FIRST_DELAY
        while not stopping.is_set():
            began = time.monotonic()
            error = self._run()
            if stopping.is_set():
                break
            if time.monotonic() - began >= MAX_DELAY:
                delay = FIRST_DELAY
            logger.warning("WebRTC: %s; restarting it in %g s", error, delay)
            if stopping.wait(delay):
                break
            delay = min(delay * 2, MAX_DELAY)
            with self.gateway._lock:
                self.restarts += 1

    def _run(self) -> str:
        """Run one companion process until it exits, logging its output; why it ended."""
        gateway = self.gateway
        try:
            process = subprocess.Popen(
                gateway._command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=gateway._env,
                start_new_session=True,  # a terminal's Ctrl-C is the server's to handle
            )
        except OSError as error:
            with gateway._lock:
                gateway.last_error = f"cannot start a companion: {error}"
                return gateway.last_error
        with gateway._lock:
            self.process = process
            if gateway._stopping.is_set():  # stop() came between the check and the start
                process.terminate()
        problem = ""  # the last line of its output that was not routine
        assert process.stdout is not None
        for line in process.stdout:
            text = line.rstrip()
            if text and _log_line(process.pid, text) > logging.INFO:
                problem = text
        code = process.wait()
        detail = f": {problem}" if problem and code else ""
        with gateway._lock:
            self.process = None
            gateway.last_error = f"companion {process.pid} exited with code {code}{detail}"
            return gateway.last_error


class WebRTCGateway:
    """Serves WebRTC calls through a pool of supervised companion processes; see the module
    docs.

    ``media_path``: the server's media route (path and query) each peer's audio is bridged
    to; it must speak the raw protocol with PCM16 (its ``sample_rate`` query parameter, 16
    kHz if absent, is the rate on the bridge). ``python``: the interpreter with aiortc
    (default: see :func:`find_python`). ``companions``: how many companion processes
    (default: one per CPU this process may use). ``ice_servers``: STUN/TURN URIs for the
    companions. ``offer_wait``: how long an offer waits for a companion when none is
    connected; ``answer_timeout``: how long for the companion's answer.

    Threading contract: :meth:`start`, :meth:`stop` from one thread; the pages and socket
    handlers run on the server's event loops, each companion's supervisor on a thread of its
    own. ``_companions`` is replaced by :meth:`start` (a new list, never changed after)
    under ``_lock`` (the offer page only tests it for emptiness, with ``_stopping``);
    ``_ready`` (a future resolved once a companion is up; replaced by a fresh one when none
    is) and ``last_error`` are written under ``_lock``, and :meth:`status` reads everything
    under it. ``_python`` and ``_unavailable`` are written once, before :meth:`start`
    returns or by the first use of :attr:`available`, and only read after; ``_command`` and
    ``_env`` are written by :meth:`start` before the supervisors start, and only read by
    them. ``_stopping`` is set by :meth:`stop`.
    """

    def __init__(
        self,
        media_path: str = "/playground",
        python: str | None = None,
        *,
        companions: int | None = None,
        ice_servers: tuple[str, ...] = (),
        offer_wait: float = 5.0,
        answer_timeout: float = 20.0,
    ) -> None:
        query = dict(parse_qsl(urlsplit(media_path).query))
        if query.get("codec", "pcm16") != "pcm16":
            raise ValueError(f"the WebRTC bridge carries PCM16; {media_path} says otherwise")
        if companions is not None and companions < 1:
            raise ValueError(f"companions must be at least 1, not {companions}")
        self.media_path = media_path
        self.companions = companions or os.process_cpu_count() or 1
        self.ice_servers = tuple(ice_servers)
        self.offer_wait = offer_wait
        self.answer_timeout = answer_timeout
        self.last_error: str | None = None
        self._python_asked = python
        self._python: str | None = None
        self._unavailable: str | None = None
        self._checked = threading.Lock()  # held while find_python runs, once
        self._token = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._companions: list[_Companion] = []
        self._ready: Future[None] = Future()
        self._ids = itertools.count(1)
        self._command: list[str] = []
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()

    # -- the public side --------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether a python with aiortc was found (the first use looks, in a subprocess)."""
        with self._checked:
            if self._python is None and self._unavailable is None:
                self._python, reason = find_python(self._python_asked)
                self._unavailable = reason or None
        return self._python is not None

    def pages(self) -> dict[str, PageHandler]:
        """The signalling endpoint, for :class:`WebSocketServer`'s ``pages``."""
        return {OFFER_PATH: self._offer}

    def sockets(self) -> dict[str, SocketHandler]:
        """The companions' control endpoint, for :class:`WebSocketServer`'s ``sockets``."""
        return {CONTROL_PATH: self._control}

    def guards(self) -> dict[str, Guard]:
        """For :class:`WebSocketServer`'s ``guards``: the control endpoint refuses (403) a
        handshake that does not carry the companions' token."""

        def guard(request: HttpRequest) -> HttpResponse | None:
            if self.is_companion(request):
                return None
            return HttpResponse.error(HTTPStatus.FORBIDDEN, "for the WebRTC companions only")

        return {CONTROL_PATH: guard}

    def is_companion(self, request: HttpRequest) -> bool:
        """Whether ``request`` carries the companions' token (``Authorization: Bearer``)."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self._token.encode()
        )

    def start(self, server_url: str) -> WebRTCGateway:
        """Start the companions, which connect to ``server_url`` (the server, started, as
        they reach it: ``ws://127.0.0.1:PORT``). Without a python with aiortc this logs why
        and returns: offers then get 503."""
        if self._companions and not self._stopping.is_set():
            raise RuntimeError("the WebRTC gateway is already started")
        if not self.available:
            logger.warning("WebRTC is off: %s", self._unavailable)
            return self
        self._command = [self._python or sys.executable, "-u", "-m", COMPANION]
        self._command += ["--server", server_url.rstrip("/"), "--control", CONTROL_PATH]
        self._command += ["--media", self.media_path]
        for uri in self.ice_servers:
            self._command += ["--ice-server", uri]
        self._env = {**os.environ, TOKEN_ENV: self._token}
        self._stopping.clear()
        companions = [_Companion(self, number) for number in range(self.companions)]
        with self._lock:
            self._companions = companions
        for companion in companions:
            companion.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the companions (their calls end): terminated, killed after ``timeout`` s."""
        self._stopping.set()
        with self._lock:
            companions = self._companions
            processes = [c.process for c in companions if c.process is not None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("WebRTC companion %d did not stop; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for companion in companions:
            companion.thread.join(timeout + 5)

    def status(self) -> dict[str, object]:
        """``running`` (a companion is up), ``restarts``, ``peers`` (live peer connections),
        ``pid`` (the first companion up's): totals over ``companions``, each one's ``pid``,
        ``running``, ``peers`` and ``restarts``; and ``python`` and ``last_error``."""
        with self._lock:
            companions = [companion.status() for companion in self._companions]
            last_error = self.last_error or self._unavailable
        up = [c["pid"] for c in companions if c["running"]]
        return {
            "running": bool(up),
            "restarts": sum(c["restarts"] for c in companions),
            "peers": sum(c["peers"] for c in companions),
            "python": self._python,
            "pid": up[0] if up else None,
            "last_error": last_error,
            "companions": companions,
        }

    # -- signalling (a page, on any server loop) ---------------------------------------------

    async def _offer(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse.error(HTTPStatus.METHOD_NOT_ALLOWED, "POST an SDP offer here")
        if self._python is None and self._unavailable is not None:
            return HttpResponse.error(HTTPStatus.SERVICE_UNAVAILABLE, self._unavailable)
        if not self._companions or self._stopping.is_set():
            return HttpResponse.error(HTTPStatus.SERVICE_UNAVAILABLE, "WebRTC is not running")
        try:
            offer = request.json()
            sdp, kind = offer["sdp"], offer["type"]
            if not isinstance(sdp, str) or kind != "offer":
                raise ValueError
        except (ValueError, TypeError, KeyError):
            return HttpResponse.error(
                HTTPStatus.BAD_REQUEST, 'expected JSON {"sdp": "...", "type": "offer"}'
            )
        link = await self._least_loaded(self.offer_wait)
        if link is None:
            return self._restarting()
        try:
            answer = await self._request(link, {"op": "offer", "sdp": sdp, "type": kind})
        except CompanionGoneError:  # not tried on another: the offer may be what killed it
            return self._restarting()
        except TimeoutError:
            return HttpResponse.error(
                HTTPStatus.GATEWAY_TIMEOUT, "the WebRTC companion did not answer in time"
            )
        if answer.get("op") != "answer":  # the companion's words are aiortc's: logged
            logger.info("WebRTC offer refused: %s", answer.get("message", "no reason given"))
            return HttpResponse.error(
                HTTPStatus.BAD_REQUEST,
                "bad offer: it could not be answered (malformed SDP, or no audio in a codec "
                "both sides take)",
            )
        return HttpResponse.json({"sdp": answer["sdp"], "type": answer["type"]})

    def _restarting(self) -> HttpResponse:
        with self._lock:
            error = self.last_error
        detail = f" (last error: {error})" if error else ""
        response = HttpResponse.error(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"no WebRTC companion is running; try again shortly{detail}",
        )
        response.headers["Retry-After"] = "2"
        return response

    async def _least_loaded(self, timeout: float) -> _Link | None:
        """The link of the companion up with the least load, waiting up to ``timeout`` s for
        one to be up; None if none is."""
        with self._lock:
            ready = self._ready
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(ready)), timeout)
        except TimeoutError:
            return None
        with self._lock:
            links = [c.link for c in self._companions if c.up]
            return min(links, key=lambda link: link.load, default=None)

    async def _request(self, link: _Link, message: dict[str, Any]) -> dict[str, Any]:
        request_id = next(self._ids)
        reply: Future[dict[str, Any]] = Future()
        with self._lock:
            if link.companion.link is not link:
                raise CompanionGoneError
            link.pending[request_id] = reply
        try:
            await link.send({**message, "id": request_id})
            return await asyncio.wait_for(asyncio.wrap_future(reply), self.answer_timeout)
        finally:
            with self._lock:
                link.pending.pop(request_id, None)

    # -- the control links (a socket handler, on any server loop) ----------------------------

    async def _control(self, ws: ServerConnection) -> None:
        link = await self._hello(ws)
        if link is None:
            return
        logger.info("WebRTC companion %d connected", link.pid)
        try:
            async for text in ws:
                try:
                    message = json.loads(text)
                except ValueError:
                    logger.warning("WebRTC companion sent non-JSON: %.80r", text)
                    continue
                self._from_companion(link, message)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                if link.companion.link is link:
                    link.companion.link = None
                if self._ready.done() and not any(c.up for c in self._companions):
                    self._ready = Future()
                pending = list(link.pending.values())
            for reply in pending:
                with contextlib.suppress(InvalidStateError):  # it may have timed out
                    reply.set_exception(CompanionGoneError("the WebRTC companion went away"))

    async def _hello(self, ws: ServerConnection) -> _Link | None:
        """Check a companion's first message: the token and a process we started."""
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10.0))
            token, pid = str(hello["token"]), int(hello["pid"])
        except (TimeoutError, ConnectionClosed, ValueError, TypeError, KeyError):
            await ws.close(1008, "expected the companion's hello")
            return None
        if hmac.compare_digest(token.encode(), self._token.encode()):
            with self._lock:
                for companion in self._companions:
                    process = companion.process
                    if process is not None and process.pid == pid and companion.link is None:
                        link = _Link(ws, asyncio.get_running_loop(), pid, companion)
                        companion.link = link
                        if not self._ready.done():
                            self._ready.set_result(None)
                        return link
        await ws.close(1008, "not this server's WebRTC companion")
        return None

    def _from_companion(self, link: _Link, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "peers":
            with self._lock:
                link.peers = int(message.get("count", 0))
            return
        with self._lock:
            reply = link.pending.get(message.get("id"))
        if reply is not None:
            with contextlib.suppress(InvalidStateError):  # it may have timed out
                reply.set_result(message)


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def _log_line(pid: int, text: str) -> int:
    """Log a line of the companion's output at the level it starts with (its own logging
    writes ``LEVEL name: message``), other lines (tracebacks) as warnings; returns the
    level."""
    name, _, rest = text.partition(" ")
    if name in _LEVELS:
        level = logging.getLevelName(name)
    else:
        level, rest = logging.WARNING, text
    logger.log(level, "companion %d: %s", pid, rest)
    return level
