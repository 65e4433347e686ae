"""The processor base class: what a pipeline is made of.

A processor sees one call's frames, in order, on the stage thread that runs it. Each call
gets its own instances, so per-call state lives in plain attributes with no locking. It
reaches its call only through :class:`CallContext`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flowcat_ft.frames import (
    CancelFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
)

if TYPE_CHECKING:
    from flowcat_ft.slabs import SlabPool

Push = Callable[[Frame], None]
Soon = Callable[["FrameProcessor", Callable[..., object], tuple], None]
T = TypeVar("T")

LIFECYCLE_FRAMES = frozenset((StartFrame, EndFrame, CancelFrame, InterruptionFrame))
"""Frames the runtime handles for every processor (see :class:`FrameProcessor`)."""


class Bridge(Protocol):
    """Hands work from any thread to an event loop, one wake-up per batch (see
    :class:`flowcat_ft.loops.LoopBridge`)."""

    def send(
        self, callback: Callable[[Frame, Direction], None], frame: Frame, direction: Direction
    ) -> None:
        """Run ``callback(frame, direction)`` on the loop soon (callable from any thread)."""


class EventLoop(Protocol):
    """One of the runtime's event-loop threads, as a processor uses it for its network I/O
    (a :class:`flowcat_ft.loops.EventLoopThread`): coroutines :meth:`submit`\\ ted to it
    run on ``loop``; ``bridge`` carries batches of items to callbacks run there."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def bridge(self) -> Bridge: ...

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future:
        """Run ``coro`` on the loop (from any thread)."""


class CallContext(Protocol):
    """What a processor may use of its call (:attr:`FrameProcessor.call`): all it reaches
    of the runtime goes through here. :class:`flowcat_ft.call.Call` implements it.

    ``id`` names the call (in logs); ``failed`` is set on a stage thread once the call
    has had a fatal error (so :func:`flowcat_ft.dispatch.contain` reports only the
    first); ``pool`` is the runtime's slab pool. :meth:`interrupt`, :meth:`end` and :meth:`cancel`
    act on the whole call and may be called from any thread.
    """

    failed: bool

    @property
    def id(self) -> int: ...

    @property
    def pool(self) -> SlabPool: ...

    def interrupt(self) -> None:
        """Start an interruption from the head of the pipeline."""

    def end(self) -> None:
        """End the call once every frame pushed into it so far has been processed."""

    def cancel(self, reason: str = "cancelled") -> None:
        """End the call now, dropping whatever is queued."""

    def event_loop(self) -> EventLoop:
        """One of the runtime's event-loop threads, handed out in turn (see
        :attr:`FrameProcessor.event_loop`, which keeps the first it gets)."""

    def shared(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The object every call on the runtime shares under ``key`` (a worker process,
        say), made by ``factory()`` on first use; from any thread."""


def _unwired(*args: object) -> None:
    raise RuntimeError("this processor is not part of a running call")


def _dropped(frame: Frame) -> None:
    """Where a processor's pushes go once its call has ended: nowhere (the frame's slab
    goes back to the pool at once)."""
    frame.release()


def _ignored(*args: object) -> None:
    """Where a processor's ``call_soon`` goes once its call has ended."""


class FrameProcessor:
    """Base class for processors.

    Override :meth:`process` to handle frames and call :meth:`push` to send frames on (in
    either direction). Lifecycle frames (:class:`~flowcat_ft.frames.StartFrame`,
    :class:`~flowcat_ft.frames.EndFrame`, :class:`~flowcat_ft.frames.CancelFrame`,
    :class:`~flowcat_ft.frames.InterruptionFrame`) do not reach :meth:`process`: the runtime
    calls the matching hook (:meth:`on_start`, :meth:`on_end`, :meth:`on_cancel`,
    :meth:`on_interruption`) and forwards the frame itself, so a processor cannot stall a
    call by forgetting to pass one on.

    A processor may also handle many calls' frames at once: see :meth:`process_batch`.

    ``cost`` is a relative CPU weight the runtime uses to fuse cheap neighbours onto one
    stage thread; a processor that spends real time per frame should raise it.

    ``call`` is the processor's :class:`CallContext` once it is part of a call (None
    before): all it may use of its call and the runtime.

    Every method runs on the processor's stage thread; a processor must not block it.
    """

    cost: float = 1.0

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self.call: CallContext | None = None
        self._down: Push = _unwired
        self._up: Push = _unwired
        self._soon: Soon = _unwired
        self._io: EventLoop | None = None  # see event_loop; stage thread only

    # -- override these --------------------------------------------------------------------

    def process(self, frame: Frame, direction: Direction) -> None:
        """Handle a frame; the default passes it on unchanged."""
        self.push(frame, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        """Handle the frames of every call on this stage at this position at once.

        The runtime calls this on the class, once per stage wake-up, instead of calling
        :meth:`process` once per frame, when the class defines it at least as far down
        its hierarchy as :meth:`process` (so a subclass that only overrides
        :meth:`process` keeps being called per frame). Both must do the same: the runtime
        still calls :meth:`process` for a batch of a few frames, or when observers watch.

        ``batch.frames`` holds the frames in arrival order: several calls' frames, each
        call's in its own order, never a lifecycle frame. Push every frame on with
        :meth:`Batch.push` (in order within a call); reach a frame's processor (its
        per-call state) with :meth:`Batch.processor`. The default passes the frames on
        unchanged.

        If it raises, every call with a frame in the batch fails as if :meth:`process` had
        raised; :class:`~flowcat_ft.slabs.PoolExhaustedError` drops the batch instead.
        """
        batch.push(batch.frames)

    def on_start(self, frame: StartFrame) -> None:
        """The call started; ``frame`` carries its audio settings."""

    def on_end(self) -> None:
        """The call is ending after every earlier frame was processed."""

    def on_cancel(self) -> None:
        """The call was cancelled; queued frames are being dropped."""

    def on_interruption(self) -> None:
        """The user interrupted: drop buffered output (audio, text) for this call."""

    # -- call these ------------------------------------------------------------------------

    def push(self, frame: Frame, direction: Direction = Direction.DOWNSTREAM) -> None:
        """Send ``frame`` to the next processor in ``direction``."""
        if direction:
            self._up(frame)
        else:
            self._down(frame)

    def push_error(self, message: str, fatal: bool = False) -> None:
        """Report an error upstream; a fatal one ends the call."""
        self._up(ErrorFrame(message, fatal=fatal, processor=self.name))

    @property
    def pool(self) -> SlabPool:
        """The runtime's slab pool, for processors that make audio frames."""
        if self.call is None:
            raise RuntimeError("this processor is not part of a running call")
        return self.call.pool

    def interrupt(self) -> None:
        """Start an interruption from the head of the pipeline (as on a user barge-in)."""
        if self.call is not None:
            self.call.interrupt()

    # -- used by the runtime ---------------------------------------------------------------

    def _lifecycle(self, frame: Frame, direction: Direction) -> None:
        """Run the hook for a lifecycle frame, then forward the frame.

        Runtime classes that change this dispatch override it: a parallel pipeline fans the
        frame out to its branches, and an :class:`~flowcat_ft.services.base.AsyncService`
        with ``drain_on_end`` holds an EndFrame until its work in flight is done.
        """
        kind = type(frame)
        if kind is StartFrame:
            self.on_start(frame)
        elif kind is InterruptionFrame:
            self.on_interruption()
        elif kind is EndFrame:
            self.on_end()
        else:
            self.on_cancel()
        self.push(frame, direction)

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on this processor's stage thread, soon.

        Safe from any thread: this is how work done elsewhere (a service's network I/O on
        an event loop) comes back to push frames. It is dropped if the call has been
        cancelled by then; if it raises, the call fails as if :meth:`process` had.
        """
        self._soon(self, callback, args)

    @property
    def event_loop(self) -> EventLoop:
        """The runtime event-loop thread this processor's network I/O runs on: chosen on
        first use and kept, so the coroutines it submits run in the order submitted."""
        io = getattr(self, "_io", None)  # a subclass may not have called __init__
        if io is None:
            if self.call is None:
                raise RuntimeError("this processor is not part of a running call")
            io = self._io = self.call.event_loop()
        return io

    def _wire(self, call: CallContext, down: Push, up: Push, soon: Soon | None = None) -> None:
        if not hasattr(self, "name"):
            self.name = type(self).__name__
        self.call = call
        self._down = down
        self._up = up
        if soon is not None:
            self._soon = soon

    def _unwire(self, call: CallContext) -> None:
        """The call has ended: hold it by ``call`` (a weak proxy) from now on, and drop
        whatever is pushed or handed to :meth:`call_soon`, so the processor is part of
        no reference cycle with its call, its neighbours or the stage threads (see
        :meth:`flowcat_ft.call.Call._let_go`)."""
        self.call = call
        self._down = self._up = _dropped
        self._soon = _ignored

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')}>"


def batch_kernel(cls: type[FrameProcessor]) -> Callable[[Batch], None] | None:
    """``cls.process_batch`` if the runtime may call it in place of ``process``: when no
    class between ``cls`` and the one defining ``process_batch`` overrides ``process``."""
    for klass in cls.__mro__:
        if "process_batch" in vars(klass):
            return cls.process_batch
        if "process" in vars(klass):
            return None
    return None


class Batch:
    """Frames of several calls arriving at one processor position of a stage, handed to
    :meth:`FrameProcessor.process_batch` at once.

    ``frames`` is the batch's own list: a kernel may change it in place and push it on.
    ``pool`` is the runtime's slab pool. A batch is valid only during the call it is given to.
    """

    __slots__ = ("_out", "_position", "direction", "frames", "pool")

    def __init__(
        self,
        frames: list[Frame],
        direction: Direction,
        position: int,
        pool: SlabPool,
        out: Callable[[list[Frame]], Any],
    ) -> None:
        self.frames = frames
        self.direction = direction
        self.pool = pool
        self._position = position
        self._out = out

    def processor(self, frame: Frame) -> FrameProcessor:
        """The processor at this position of ``frame``'s call (its per-call state)."""
        return frame._call.processors[self._position]

    def processors(self) -> list[FrameProcessor]:
        """Each frame's processor, in the order of ``frames``."""
        p = self._position
        return [frame._call.processors[p] for frame in self.frames]

    def push(self, frames: list[Frame]) -> None:
        """Send ``frames`` on to the next position, in order. A frame made here to replace
        a batch frame must first take over its call: see :meth:`replace`."""
        self._out(frames)

    @staticmethod
    def replace(old: Frame, new: Frame) -> Frame:
        """Make ``new`` belong to ``old``'s call (to push it in ``old``'s place); returns it."""
        new._call = old._call
        return new
