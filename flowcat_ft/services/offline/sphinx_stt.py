"""Offline speech to text with PocketSphinx, run in a worker process on the GIL twin.

Two parts:

- :class:`SphinxWorker`, the server's end of one worker process
  (:mod:`~flowcat_ft.services.offline.sphinx_worker`): it starts the process with the GIL
  build's python (:func:`find_worker_python`), sends it requests tagged with an id and
  matches the replies, and starts a new process if the old one dies (the requests it was
  serving fail; later ones go to the new process). One worker serves every call of a
  runtime (:meth:`SphinxWorker.shared`), one request at a time.
- :class:`SphinxSTT`, the pipeline stage: it buffers the caller's 16 kHz audio from a
  :class:`~flowcat_ft.frames.UserStartedSpeakingFrame` to the next
  :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame` (from a VAD or turn detector ahead
  of it), sends the segment to the worker, and pushes the result as a
  :class:`~flowcat_ft.frames.TranscriptionFrame`.

Free dictation of synthetic speech is poor with PocketSphinx's small English model, so the
stage is usually constrained by a :class:`Grammar` of the phrases the conversation
listens for (measured here: "please tell me the weather" came back as "oh please tell the
where there" free, and exact with a grammar).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowcat_ft.audio.resample import resample
from flowcat_ft.frames import (
    Direction,
    Frame,
    InputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.metrics import Histogram
from flowcat_ft.services.base import AsyncService
from flowcat_ft.services.offline import sphinx_worker
from flowcat_ft.services.offline.sphinx_worker import MessageParser, ProtocolError, pack

if TYPE_CHECKING:
    from flowcat_ft.processor import CallContext, EventLoop
    from flowcat_ft.runtime import Runtime

__all__ = [
    "Grammar",
    "Recognition",
    "SphinxSTT",
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
    ``partial`` is the best path, which stopped short of one), and the decoder's score."""

    text: str
    score: float | None
    decode_ms: float
    partial: str = ""


class SphinxWorker:
    """The server's end of a PocketSphinx worker process.

    Everything here runs on one event loop, ``io`` (the process's pipes belong to it);
    :meth:`recognize` may be awaited on any loop and :meth:`transcribe` called from any
    thread. The process starts on first use (or :meth:`start`) and again after it dies.

    Threading contract: ``_process``, ``_starting``, ``_pending``, ``_loaded`` and
    ``_stderr`` are touched only on ``io``'s loop. ``restarts`` (worker processes that
    died and were replaced) is written there and may be read anywhere.
    """

    def __init__(
        self, io: EventLoop, python: str | None = None, *, start_timeout: float = 60.0
    ) -> None:
        self.io = io
        self.python = python
        self.start_timeout = start_timeout
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Future[asyncio.subprocess.Process] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._loaded: set[str] = set()  # grammars the current process holds
        self._stderr: deque[str] = deque(maxlen=20)
        self._ids = itertools.count(1)
        self._closed = False

    @classmethod
    def shared(cls, owner: Runtime | CallContext) -> SphinxWorker:
        """The worker every call of a runtime shares, made on first use (any thread):
        *owner* is the runtime, or one of its calls (a processor's ``self.call``)."""
        return owner.shared(cls, lambda: cls(owner.event_loop()))

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

    async def recognize(
        self, pcm: bytes, grammar: Grammar | None = None, tag: str = ""
    ) -> Recognition:
        """Recognise 16 kHz mono PCM16 *pcm*, constrained by *grammar* (None: free
        dictation). *tag* (a call and segment id) prefixes the request's id in logs."""
        if asyncio.get_running_loop() is self.io.loop:
            return await self._recognize(pcm, grammar, tag)
        return await asyncio.wrap_future(self.io.submit(self._recognize(pcm, grammar, tag)))

    def transcribe(
        self, pcm: bytes, grammar: Grammar | None = None, timeout: float = 30.0
    ) -> Recognition:
        """:meth:`recognize`, blocking (from a thread that runs no event loop)."""
        return self.io.submit(self._recognize(pcm, grammar, "sync")).result(timeout)

    def kill(self) -> None:
        """Kill the process now, as if it had crashed (for tests); it is restarted."""
        process = self._process
        if process is not None:
            self.io.loop.call_soon_threadsafe(_kill, process)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the process (any thread). Requests after this fail."""
        if not self.io.loop.is_closed():
            self.io.submit(self._close()).result(timeout)

    # -- on the io loop ---------------------------------------------------------------------

    async def _recognize(self, pcm: bytes, grammar: Grammar | None, tag: str) -> Recognition:
        process = await self._ready_process()
        if grammar is not None and grammar.name not in self._loaded:
            reply = await self._request(
                process, {"op": "grammar", "name": grammar.name, "phrases": grammar.phrases}, tag
            )
            if reply["skipped"]:
                logger.warning(
                    "PocketSphinx grammar: phrases left out, words not in the dictionary (%s): %s",
                    ", ".join(reply["unknown"]),
                    "; ".join(reply["skipped"]),
                )
            self._loaded.add(grammar.name)
        header = {"op": "recognize", "rate": SAMPLE_RATE, "grammar": grammar and grammar.name}
        reply = await self._request(process, header, tag, pcm)
        return Recognition(reply["text"], reply["score"], reply["decode_ms"], reply["partial"])

    async def _request(
        self,
        process: asyncio.subprocess.Process,
        header: dict[str, Any],
        tag: str,
        body: bytes = b"",
    ) -> dict[str, Any]:
        request_id = f"{tag}#{next(self._ids)}"
        reply = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            # If the process dies meanwhile, writing fails; the reply then fails too, with
            # the reason, as soon as the reader sees the process go.
            with contextlib.suppress(ConnectionError):
                process.stdin.write(pack({**header, "id": request_id}, body))
                await process.stdin.drain()
            result = await reply
        finally:
            self._pending.pop(request_id, None)
        if "error" in result:
            raise SphinxWorkerError(f"PocketSphinx worker: {result['error']}")
        return result

    async def _ready_process(self) -> asyncio.subprocess.Process:
        if self._closed:
            raise SphinxWorkerError("the PocketSphinx worker was closed")
        starting = self._starting
        if starting is None or (starting.done() and starting.exception() is not None):
            # No process, or the last start failed: this request tries once more.
            starting = self._starting = asyncio.ensure_future(self._spawn())
            starting.add_done_callback(_quietly)
        return await asyncio.shield(starting)

    async def _spawn(self) -> asyncio.subprocess.Process:
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
        logger.info("PocketSphinx worker %s ready (pocketsphinx %s)", process.pid, ready["version"])
        self._process = process
        self._loaded = set()
        asyncio.get_running_loop().create_task(self._read(process, parser))
        return process

    @staticmethod
    async def _first_message(
        process: asyncio.subprocess.Process, parser: MessageParser
    ) -> dict[str, Any]:
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
                    reply = self._pending.get(header.get("id"))
                    if reply is not None and not reply.done():
                        reply.set_result(header)
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
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(error)
        self._pending.clear()
        if self._closed:
            return
        logger.warning("%s; starting a new one", error)
        self.restarts += 1
        self._starting = asyncio.ensure_future(self._spawn())
        self._starting.add_done_callback(_quietly)

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


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def _quietly(future: Future | asyncio.Future) -> None:
    """Mark a background future's exception as seen (the requests report it)."""
    if not future.cancelled():
        future.exception()


class SphinxSTT(AsyncService):
    """Transcribe the caller's speech, one VAD segment at a time, with PocketSphinx.

    *phrases* (or a :class:`Grammar`) constrain what can be heard; None is free dictation.
    The stage keeps the last *preroll_secs* of audio before a
    :class:`~flowcat_ft.frames.UserStartedSpeakingFrame`, since a detector reports speech
    a little after it starts (longer still for a barge-in); a segment longer than
    *max_segment_secs* is sent when it reaches that length. Audio at a rate other than
    16 kHz is kept at its rate and resampled a segment at a time, as it is sent. The
    caller's audio is consumed here unless *audio_passthrough* (audio going on would reach
    the output, and the caller would hear themselves).

    The call's segments go to *worker*, or to the runtime's shared one. Nothing is pushed
    for a segment in which nothing in the grammar was heard. An interruption does not
    cancel a recognition: the caller's speech is never stale.

    Segments are recognised one at a time per call, so transcripts keep the order in which
    they were spoken; ``latency`` records the time from the end of each segment to its
    result (ns; a segment may wait for the one before it).

    Threading contract: every attribute is used on the stage thread only; recognitions run
    on an event loop and come back through :meth:`call_soon` and :meth:`emit`.
    """

    trace_kind = "stt"

    def __init__(
        self,
        phrases: Iterable[str] | Grammar | None = None,
        *,
        worker: SphinxWorker | None = None,
        preroll_secs: float = 1.0,
        max_segment_secs: float = 30.0,
        audio_passthrough: bool = False,
        language: str = "en-US",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if phrases is None or isinstance(phrases, Grammar):
            self.grammar = phrases
        else:
            self.grammar = Grammar.from_phrases(phrases)
        self.worker = worker
        self.audio_passthrough = audio_passthrough
        self.language = language
        self.latency = Histogram()
        self.preroll_secs = preroll_secs
        self.max_segment_secs = max_segment_secs
        # The caller's audio at its own rate; a segment is resampled once, when sent.
        self._rate = SAMPLE_RATE
        self._preroll: deque[np.ndarray] = deque()
        self._preroll_samples = 0
        self._preroll_limit = round(preroll_secs * SAMPLE_RATE)
        self._segment_limit = round(max_segment_secs * SAMPLE_RATE)
        self._segment: list[np.ndarray] | None = None  # while the user speaks
        self._segment_samples = 0
        self._segments = 0
        self._waiting: deque[tuple[bytes, str, int]] = deque()  # segments not yet sent
        self._busy = False  # a segment is being recognised

    def on_start(self, frame: StartFrame) -> None:
        if self.worker is None:
            self.worker = SphinxWorker.shared(self.call)
        self.worker.start()  # load the model before the caller first speaks

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                self._audio(frame)
                if not self.audio_passthrough:
                    return
            elif isinstance(frame, UserStartedSpeakingFrame):
                self._segment = list(self._preroll)
                self._segment_samples = self._preroll_samples
                self._preroll.clear()
                self._preroll_samples = 0
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._send_segment()
        self.push(frame, direction)

    def on_interruption(self) -> None:
        pass  # a barge-in is the caller speaking: keep their segment and its recognition

    # -- audio ----------------------------------------------------------------------------

    def _audio(self, frame: InputAudioRawFrame) -> None:
        if frame.codec != "pcm16" or frame.num_channels != 1:
            raise ValueError(f"{self.name} takes mono pcm16 audio, not {frame!r}")
        if frame.sample_rate != self._rate:
            self._set_rate(frame.sample_rate)
        samples = frame.samples.copy()  # the slab goes back to the pool
        if self._segment is not None:
            self._segment.append(samples)
            self._segment_samples += len(samples)
            if self._segment_samples >= self._segment_limit:
                self._send_segment()
                self._segment, self._segment_samples = [], 0
            return
        self._preroll.append(samples)
        self._preroll_samples += len(samples)
        while self._preroll_samples - len(self._preroll[0]) >= self._preroll_limit:
            self._preroll_samples -= len(self._preroll.popleft())

    def _set_rate(self, rate: int) -> None:
        """The caller's audio comes at *rate* (from its first frame): what was kept at
        another rate goes."""
        self._rate = rate
        self._preroll.clear()
        self._preroll_samples = 0
        self._preroll_limit = round(self.preroll_secs * rate)
        self._segment_limit = round(self.max_segment_secs * rate)
        if self._segment is not None:
            self._segment, self._segment_samples = [], 0

    def _send_segment(self) -> None:
        segment, self._segment = self._segment, None
        if not segment:
            return
        self._segments += 1
        tag = f"call{self.call.id}-seg{self._segments}"
        pcm = resample(np.concatenate(segment), self._rate, SAMPLE_RATE)
        self._waiting.append((pcm.tobytes(), tag, time.perf_counter_ns()))
        self._next_segment()

    def _next_segment(self) -> None:
        # One segment at a time, so that the transcripts come out in the order spoken.
        if self._waiting and not self._busy:
            self._busy = True
            pcm, tag, ended = self._waiting.popleft()
            self.start_work(partial(self._recognize, pcm=pcm, tag=tag, ended=ended))

    def _recognized(self, generation: int, ended: int) -> None:
        self.latency.add(time.perf_counter_ns() - ended)
        if generation == self._generation:
            self._busy = False
            self._next_segment()

    async def _recognize(self, generation: int, pcm: bytes, tag: str, ended: int) -> None:
        try:
            result = await self.worker.recognize(pcm, self.grammar, tag)
        finally:
            self.call_soon(self._recognized, generation, ended)
        logger.debug("%s: %r in %.0f ms", tag, result.text, result.decode_ms)
        if result.text:
            self.annotate(transcript=result.text)
            stamp = datetime.now(UTC).isoformat()
            self.emit(generation, TranscriptionFrame(result.text, "", stamp, self.language))
