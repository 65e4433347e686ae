"""Handing one frame to one processor: lifecycle hooks, and errors contained to their call."""

from __future__ import annotations

import logging
import traceback

from flowcat_ft.frames import CancelFrame, Direction, Frame
from flowcat_ft.processor import LIFECYCLE_FRAMES, FrameProcessor
from flowcat_ft.slabs import PoolExhaustedError

logger = logging.getLogger("flowcat_ft")


def deliver(proc: FrameProcessor, direction: Direction, frame: Frame) -> None:
    """Give ``frame``, travelling in ``direction``, to ``proc``.

    Lifecycle frames run the processor's hook and are forwarded; anything else goes to
    :meth:`FrameProcessor.process`. (The argument order suits
    ``functools.partial(deliver, proc, direction)``, the runtime's link between processors.)

    A processor that finds the slab pool empty loses that one frame (the pool counts the
    drop): under overload, audio is dropped rather than calls ended. If the processor
    raises anything else, the error is logged and a fatal :class:`ErrorFrame` goes
    upstream; when it leaves the pipeline the call is cancelled (see
    :meth:`Call._emit <flowcat_ft.call.Call._emit>`). Until then the call's frames still
    flow, and further errors from it are not reported again. A :class:`CancelFrame`
    whose ``on_cancel`` raised goes on all the same: a call ends only when its cancel
    reaches the end of the pipeline. The stage thread and every
    other call carry on.
    """
    try:
        if type(frame) in LIFECYCLE_FRAMES:
            proc._lifecycle(frame, direction)
        else:
            proc.process(frame, direction)
    except PoolExhaustedError:
        pass  # overload: the frame is dropped, and the pool has counted the drop
    except Exception as error:
        contain(proc, frame, error)
        if type(frame) is CancelFrame:  # the call ends only when its cancel gets through
            proc.push(frame, direction)


def contain(proc: FrameProcessor, frame: Frame | None, error: Exception) -> None:
    """Report ``proc``'s error as a fatal :class:`ErrorFrame` upstream (once per call)."""
    try:
        call = proc.call
        if call is None or call.failed:
            return
    except ReferenceError:  # a late frame of an ended call that is gone (Call._let_go)
        return
    call.failed = True
    where = traceback.extract_tb(error.__traceback__)[-1]
    message = f"{type(error).__name__}: {error} (in {proc.name}, {where.filename}:{where.lineno})"
    on = f" on {frame!r}" if frame is not None else ""
    logger.error("processor %s raised%s: %s", proc.name, on, message, extra={"call_id": call.id})
    # Drop the traceback: it would keep this frame (and its slab) alive with the error.
    error.__traceback__ = None
    proc.push_error(message, fatal=True)
