"""PocketSphinx worker processes on the GIL twin, and the pool a runtime's calls share.

- :class:`SphinxWorker` is the server's end of one worker process
  (:mod:`~flowcat_ft.services.offline.sphinx_worker`): it starts the process with the GIL
  build's python (:func:`find_worker_python`), sends it messages tagged with an id, hands
  each reply to what waits for it, and starts a new process if the old one dies (the
  utterances it was decoding fail; later ones go to the new process).
- :class:`SphinxStream` is one utterance on one worker, sent in pieces as it is spoken:
  the worker decodes each piece as it comes and answers with what it has heard so far, so
  the end of the utterance waits only for its last piece.
- :class:`SphinxPool` is the workers a runtime's calls share (:meth:`SphinxPool.shared`),
  one per core by default: PocketSphinx decodes on one core per process, so one worker
  for a whole server would cap recognition at one core. Each utterance goes to the
  worker with the least **load**: the audio it has been sent and has not yet decoded, in
  seconds, plus one second for each utterance open on it (the audio that utterance is
  still to bring, about a second a second). Not round robin: a worker that falls behind,
  or holds a long utterance in free dictation (decoded only at its end), gets the next
  utterances less.

Each worker's pipes belong to one of the runtime's event loops; the pool spreads its
workers over them. Writes are not awaited (no ``drain()``): an utterance's pieces are
small and come at the pace of speech, and a worker that falls behind gets less work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcat_ft.services.offline import sphinx_worker
from flowcat_ft.services.offline.sphinx_worker import MessageParser, ProtocolError, pack

if TYPE_CHECKING:
    from flowcat_ft.processor import CallContext, EventLoop
    from flowcat_ft.runtime import Runtime

__all__ = [
    "Grammar",
    "Recognition",
    "SphinxPool",
    "SphinxStream",
    "SphinxWorker",
    "SphinxWorkerError",
    "find_worker_python",
]

logger = logging.getLogger("flowcat_ft.services.sphinx")

SAMPLE_RATE = sphinx_worker.SAMPLE_RATE
WORKER_SCRIPT = Path(sphinx_worker.__file__).resolve()
_REPO = Path(__file__).resolve().parents[3]


class SphinxWorkerError(RuntimeError):
    """The worker could not be started, died, or failed a request."""


def find_worker_python() -> str:
    """The python that runs the worker: ``$FLOWCAT_PYTHON_GIL``, else the repository's
    ``.venv-gil/bin/python``."""
    python = os.environ.get("FLOWCAT_PYTHON_GIL")
    if python:
        return python
    venv = _REPO / ".venv-gil" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise SphinxWorkerError(
        "PocketSphinx runs in a worker process on the GIL build of CPython 3.13, and none "
        f"was found: make {venv} with ci/venvs.sh (it installs pocketsphinx there), or set "
        "FLOWCAT_PYTHON_GIL to a GIL python with pocketsphinx installed "
        "(pip install 'flowcat-ft[stt]')"
    )


@dataclass(frozen=True, slots=True)
class Grammar:
    """The phrases a recogniser listens for; ``name`` identifies them in the worker."""

    name: str
    phrases: tuple[str, ...]

    @classmethod
    def from_phrases(cls, phrases: Iterable[str]) -> Grammar:
        sentences = tuple(sorted({" ".join(sphinx_worker.words(p)) for p in phrases} - {""}))
        if not sentences:
            raise ValueError("a grammar needs at least one phrase with words in it")
        digest = hashlib.sha1("\n".join(sentences).encode()).hexdigest()[:16]
        return cls(f"g{digest}", sentences)


@dataclass(frozen=True, slots=True)
class Recognition:
    """A worker's answer: the words heard ("" when no sentence of the grammar fits; then
    ``partial`` is the best path, which stopped short of one), the decoder's score, and
    the time spent decoding the utterance."""

    text: str
    score: float | None
    decode_ms: float
    partial: str = ""


Reply = dict[str, Any]
_LAST_OPS = ("end", "cancel")  # the worker is done with a stream once it answers these
Handler = Callable[[Reply], None]
HypCallback = Callable[[str], None]


class SphinxStream:
    """One utterance on one worker, sent in pieces as it is spoken.

    :meth:`send` each piece of 16 kHz mono PCM16, then :meth:`finish` (or :meth:`cancel`);
    after each piece, *on_hyp* (given to :meth:`SphinxPool.open`) gets what the worker has
    heard so far: a grammar's best path, which may still change ("" in free dictation).
    If the worker dies first, the utterance fails: :meth:`finish`'s future raises
    :class:`SphinxWorkerError`, and later pieces are dropped.

    Threading contract: :meth:`send`, :meth:`finish` and :meth:`cancel` are called from one
    thread at a time (the stage thread of the call that owns the stream); ``on_hyp`` runs
    on the worker's event loop. ``error`` and ``_closed`` are written on that loop (read
    anywhere: a stale read only lets one more piece go to the loop, which drops it);
    ``_unsettled`` is guarded by the worker's lock.
    """

    def __init__(
        self, worker: SphinxWorker, name: str, grammar: Grammar | None, on_hyp: HypCallback | None
    ) -> None:
        self.worker = worker
        self.name = name
        self.grammar = grammar
        self.on_hyp = on_hyp
        self.error: SphinxWorkerError | None = None
        self._finished = False  # finish() or cancel() was called (the caller's thread)
        self._closed = False  # the worker is done with it (the loop)
        self._unsettled = 0  # samples sent and not yet decoded

    def send(self, pcm: bytes) -> None:
        """Send the next piece of the utterance (16 kHz mono PCM16)."""
        if pcm and not self._finished and self.error is None:
            self.worker._post(self, {"op": "audio"}, pcm, self._heard)

    def finish(self, pcm: bytes = b"") -> Future[Recognition]:
        """End the utterance with its last piece, if any; the future gets the result."""
        self._finished = True
        result: Future[Recognition] = Future()
        result.set_running_or_notify_cancel()
        self.worker._post(self, {"op": "end"}, pcm, partial(_recognized, result))
        return result

    def cancel(self) -> None:
        """Drop the utterance (the call ended while the caller spoke)."""
        if not self._finished:
            self._finished = True
            self.worker._post(self, {"op": "cancel"}, b"", _ignore)

    def _heard(self, reply: Reply) -> None:
        if self.on_hyp is not None and "hyp" in reply:
            self.on_hyp(reply["hyp"])


def _recognized(result: Future[Recognition], reply: Reply) -> None:
    if "error" in reply:
        result.set_exception(reply["error"])
    else:
        result.set_result(
            Recognition(reply["text"], reply["score"], reply["decode_ms"], reply["partial"])
        )


def _ignore(reply: Reply) -> None:
    pass


class SphinxWorker:
    """The server's end of a PocketSphinx worker process.

    The process's pipes belong to one event loop, ``io``; :meth:`open` and
    :meth:`transcribe` may be called from any thread. The process starts on first use (or
    :meth:`start`) and again after it dies.

    Threading contract: ``_process``, ``_starting``, ``_pending``, ``_backlog``,
    ``_streams``, ``_loaded``, ``_stderr`` and ``_closed`` are used on ``io``'s loop only.
    ``outstanding`` (samples sent and not yet decoded), ``open_streams`` and each stream's
    ``_unsettled`` are written under ``_lock`` by any thread (a send adds, a reply or the
    end of a stream takes away) and read anywhere: :meth:`load` is a heuristic, a stale
    read costs only a less even spread. ``restarts`` (worker processes that died and were
    replaced) is written on the loop and may be read anywhere.
    """

    def __init__(
        self, io: EventLoop, python: str | None = None, *, start_timeout: float = 60.0
    ) -> None:
        self.io = io
        self.python = python
        self.start_timeout = start_timeout
        self.restarts = 0
        self.outstanding = 0
        self.open_streams = 0
        self._lock = threading.Lock()
        self._names = itertools.count(1)  # under _lock
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Future[asyncio.subprocess.Process] | None = None
        self._pending: dict[str, tuple[SphinxStream | None, str, Handler]] = {}
        self._backlog: list[tuple[Any, ...]] = []  # messages waiting for a process
        self._streams: set[SphinxStream] = set()  # open on the current process
        self._loaded: set[str] = set()  # grammars the current process holds
        self._stderr: deque[str] = deque(maxlen=20)
        self._ids = itertools.count(1)
        self._closed = False

    # -- the public side (any thread) ----------------------------------------------------

    def start(self) -> Future:
        """Start the process now rather than on the first request; returns a future."""
        future = self.io.submit(self._ready_process())
        future.add_done_callback(_quietly)
        return future

    @property
    def pid(self) -> int | None:
        """The worker process's id, while one runs."""
        process = self._process
        return process.pid if process is not None else None

    def load(self) -> float:
        """Seconds of audio sent and not yet decoded, plus one per open utterance."""
        return self.outstanding / SAMPLE_RATE + self.open_streams

    def open(
        self, grammar: Grammar | None = None, tag: str = "", on_hyp: HypCallback | None = None
    ) -> SphinxStream:
        """Open an utterance on this worker (see :class:`SphinxStream`), constrained by
        *grammar* (None: free dictation). *tag* (a call and segment id) names it in logs."""
        with self._lock:
            self.open_streams += 1
            name = f"{tag}#{next(self._names)}"
        stream = SphinxStream(self, name, grammar, on_hyp)
        header = {"op": "start", "rate": SAMPLE_RATE, "grammar": grammar and grammar.name}
        self._post(stream, header, b"", _ignore)
        return stream

    def transcribe(
        self, pcm: bytes, grammar: Grammar | None = None, timeout: float = 30.0
    ) -> Recognition:
        """Recognise a whole utterance of 16 kHz mono PCM16 *pcm*, blocking (from a thread
        that runs no event loop)."""
        return self.open(grammar, "sync").finish(pcm).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the process (any thread). Requests after this fail."""
        if not self.io.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                self.io.submit(self._close()).result(timeout)

    def _post(self, stream: SphinxStream, header: Reply, body: bytes, handler: Handler) -> None:
        """Hand a stream's message to the loop (from the stream's thread)."""
        samples = len(body) // 2
        if samples:
            with self._lock:
                self.outstanding += samples
                stream._unsettled += samples
        try:
            self.io.loop.call_soon_threadsafe(self._write, stream, header, body, handler)
        except RuntimeError:  # the loop is closed: the runtime has stopped
            self._fail(stream, handler, SphinxWorkerError("the runtime has stopped"))

    # -- on the io loop ---------------------------------------------------------------------

    def _write(self, stream: SphinxStream, header: Reply, body: bytes, handler: Handler) -> None:
        if self._closed:
            self._fail(stream, handler, SphinxWorkerError("the PocketSphinx worker was closed"))
            return
        if stream.error is not None:  # its worker process died: drop the rest
            self._fail(stream, handler, stream.error)
            return
        process = self._process
        if process is None:
            self._backlog.append((stream, header, body, handler))
            self._start_soon()
            return
        grammar = stream.grammar
        if header["op"] == "start":
            self._streams.add(stream)
            if grammar is not None and grammar.name not in self._loaded:
                self._loaded.add(grammar.name)
                message = {"op": "grammar", "name": grammar.name, "phrases": grammar.phrases}
                self._send(process, None, message, b"", _grammar_loaded)
        self._send(process, stream, {**header, "stream": stream.name}, body, handler)

    def _send(
        self,
        process: asyncio.subprocess.Process,
        stream: SphinxStream | None,
        header: Reply,
        body: bytes,
        handler: Handler,
    ) -> None:
        request_id = str(next(self._ids))
        self._pending[request_id] = (stream, header["op"], handler)
        # If the process has died, the write is dropped; the reader then fails the request
        # as soon as it sees the process go.
        process.stdin.write(pack({**header, "id": request_id}, body))

    def _reply(self, reply: Reply) -> None:
        entry = self._pending.pop(reply.get("id"), None)
        if entry is None:
            return
        stream, op, handler = entry
        if "error" in reply:
            self._fail(stream, handler, SphinxWorkerError(f"PocketSphinx worker: {reply['error']}"))
            return
        if stream is not None:
            decoded = reply.get("decoded", 0)
            with self._lock:
                self.outstanding -= decoded
                stream._unsettled -= decoded
            if op in _LAST_OPS:
                self._close_stream(stream)
        handler(reply)

    def _fail(
        self, stream: SphinxStream | None, handler: Handler, error: SphinxWorkerError
    ) -> None:
        if stream is not None and stream.error is None:
            stream.error = error
            self._close_stream(stream)
        handler({"error": error})

    def _close_stream(self, stream: SphinxStream) -> None:
        """The worker is done with *stream*: it ended, was cancelled or failed."""
        if stream._closed:
            return
        stream._closed = True
        self._streams.discard(stream)
        with self._lock:
            self.outstanding -= stream._unsettled
            stream._unsettled = 0
            self.open_streams -= 1

    def _start_soon(self) -> None:
        starting = self._starting
        if starting is None or (starting.done() and starting.exception() is not None):
            # No process, or the last start failed: this request tries once more.
            starting = self._starting = asyncio.ensure_future(self._spawn())
            starting.add_done_callback(_quietly)

    async def _ready_process(self) -> asyncio.subprocess.Process:
        if self._closed:
            raise SphinxWorkerError("the PocketSphinx worker was closed")
        self._start_soon()
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> asyncio.subprocess.Process:
        try:
            process = await self._start_process()
        except SphinxWorkerError as error:
            backlog, self._backlog = self._backlog, []
            for stream, _, _, handler in backlog:
                self._fail(stream, handler, error)
            raise
        self._process = process
        self._loaded = set()
        backlog, self._backlog = self._backlog, []
        for message in backlog:
            self._write(*message)
        return process

    async def _start_process(self) -> asyncio.subprocess.Process:
        python = self.python or find_worker_python()
        try:
            process = await asyncio.create_subprocess_exec(
                python,
                str(WORKER_SCRIPT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Not in the terminal's process group: a Ctrl-C is the server's to handle
                # (it ends the worker itself; so does the end of its stdin).
                start_new_session=True,
            )
        except OSError as error:
            raise SphinxWorkerError(
                f"cannot run the PocketSphinx worker with {python}: {error}"
            ) from None
        self._stderr.clear()
        asyncio.get_running_loop().create_task(self._drain_stderr(process))
        parser = MessageParser()
        try:
            async with asyncio.timeout(self.start_timeout):
                ready = await self._first_message(process, parser)
        except (TimeoutError, EOFError, ProtocolError) as error:
            _kill(process)
            await process.wait()
            await asyncio.sleep(0)  # let the stderr reader take the last lines
            detail = " | ".join(self._stderr) or type(error).__name__
            hint = ""
            if "No module named 'pocketsphinx'" in detail:
                hint = f" (install it: {python} -m pip install 'pocketsphinx>=5')"
            raise SphinxWorkerError(
                f"the PocketSphinx worker ({python}) did not start: {detail}{hint}"
            ) from None
        except asyncio.CancelledError:  # the runtime's loop is stopping mid-start
            _kill(process)
            await process.wait()
            raise
        logger.info("PocketSphinx worker %s ready (pocketsphinx %s)", process.pid, ready["version"])
        asyncio.get_running_loop().create_task(self._read(process, parser))
        return process

    @staticmethod
    async def _first_message(process: asyncio.subprocess.Process, parser: MessageParser) -> Reply:
        while True:
            data = await process.stdout.read(1 << 16)
            if not data:
                raise EOFError
            messages = parser.feed(data)
            if messages:
                header, _ = messages[0]
                if header.get("op") != "ready":
                    raise ProtocolError(f"expected the ready message, got {header!r}")
                return header

    async def _read(self, process: asyncio.subprocess.Process, parser: MessageParser) -> None:
        """Hand each reply to its request until the process's stdout closes."""
        reason = "exited"
        try:
            while data := await process.stdout.read(1 << 16):
                for header, _ in parser.feed(data):
                    self._reply(header)
        except ProtocolError as error:
            reason = f"broke the protocol ({error})"
            _kill(process)
        except asyncio.CancelledError:  # the runtime's loop is stopping
            _kill(process)
            await process.wait()
            raise
        code = await process.wait()
        self._died(process, f"{reason} with code {code}")

    def _died(self, process: asyncio.subprocess.Process, reason: str) -> None:
        if process is not self._process:
            return
        self._process = None
        self._starting = None
        detail = " | ".join(self._stderr)
        error = SphinxWorkerError(
            f"the PocketSphinx worker {process.pid} {reason}" + (f": {detail}" if detail else "")
        )
        pending, self._pending = self._pending, {}
        for stream, _, handler in pending.values():
            self._fail(stream, handler, error)
        for stream in list(self._streams):  # open, with no message in flight
            stream.error = error
            self._close_stream(stream)
        if self._closed:
            return
        logger.warning("%s; starting a new one", error)
        self.restarts += 1
        self._start_soon()

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        while line := await process.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr.append(text)
            logger.debug("worker %s: %s", process.pid, text)

    async def _close(self) -> None:
        self._closed = True
        process = self._process
        if process is None:
            return
        process.stdin.close()  # the worker exits at the end of its input
        try:
            async with asyncio.timeout(2.0):
                await process.wait()
        except TimeoutError:
            _kill(process)
            await process.wait()


def _grammar_loaded(reply: Reply) -> None:
    if "error" in reply:
        logger.warning("PocketSphinx grammar: %s", reply["error"])
    elif reply["skipped"]:
        logger.warning(
            "PocketSphinx grammar: phrases left out, words not in the dictionary (%s): %s",
            ", ".join(reply["unknown"]),
            "; ".join(reply["skipped"]),
        )


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def _quietly(future: Future | asyncio.Future) -> None:
    """Mark a background future's exception as seen (the requests report it)."""
    if not future.cancelled():
        future.exception()


class SphinxPool:
    """PocketSphinx workers that share out a runtime's utterances by load (see the module
    docstring): *size* workers (None: one per core), each on one of the runtime's event
    loops, taken from *event_loop* in turn.

    Threading contract: :meth:`open` and :meth:`transcribe` may be called from any thread;
    ``_lock`` makes choosing a worker and counting the utterance on it one step, so that
    utterances opened at once spread. ``workers`` never changes.
    """

    def __init__(
        self,
        event_loop: Callable[[], EventLoop],
        size: int | None = None,
        *,
        python: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        size = size or os.process_cpu_count() or 1
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        self.workers = tuple(
            SphinxWorker(event_loop(), python, start_timeout=start_timeout) for _ in range(size)
        )
        self.start_timeout = start_timeout
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, owner: Runtime | CallContext, size: int | None = None) -> SphinxPool:
        """The pool every call of a runtime shares, made on first use (any thread), with
        *size* workers (the first caller's *size* decides): *owner* is the runtime, or one
        of its calls (a processor's ``self.call``)."""
        return owner.shared(cls, lambda: cls(owner.event_loop, size))

    def start(self) -> list[Future]:
        """Start every worker's process now rather than on first use; one future each."""
        return [worker.start() for worker in self.workers]

    def open(
        self, grammar: Grammar | None = None, tag: str = "", on_hyp: HypCallback | None = None
    ) -> SphinxStream:
        """Open an utterance on the worker with the least load (see
        :meth:`SphinxWorker.open`)."""
        with self._lock:
            worker = min(self.workers, key=SphinxWorker.load)
            return worker.open(grammar, tag, on_hyp)

    def transcribe(
        self, pcm: bytes, grammar: Grammar | None = None, timeout: float = 30.0
    ) -> Recognition:
        """Recognise a whole utterance on the worker with the least load, blocking."""
        return self.open(grammar, "sync").finish(pcm).result(timeout)

    @property
    def pids(self) -> list[int]:
        """The worker processes running now."""
        return [pid for worker in self.workers if (pid := worker.pid) is not None]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker (any thread)."""
        for worker in self.workers:
            worker.close(timeout)
