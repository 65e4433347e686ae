"""Observers: see every frame a processor pushes, for metrics, logging and debugging.

Attach them to a call (``runtime.open_call(pipeline, observers=[...])``), as pipecat attaches
observers to a pipeline task. A call without observers pays nothing for the feature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowcat_ft.frames import Direction, Frame
from flowcat_ft.processor import FrameProcessor, Push

if TYPE_CHECKING:
    from flowcat_ft.call import Call


class Observer:
    """Base class: override :meth:`on_push`.

    It runs on the stage thread of the processor that pushed, before the frame moves on, so
    it must be quick and never block. One observer attached to several calls, or to a
    pipeline on several threads, is called from several threads at once: keep per-thread
    or per-call state, or make updates atomic.
    """

    def on_push(
        self, call: Call, source: FrameProcessor, frame: Frame, direction: Direction
    ) -> None:
        """``source`` pushed ``frame`` in ``direction``."""


class Observed:
    """A push link that shows each frame to the observers before passing it on."""

    __slots__ = ("call", "direction", "link", "observers", "source")

    def __init__(
        self,
        link: Push,
        call: Call,
        source: FrameProcessor,
        direction: Direction,
        observers: tuple[Observer, ...],
    ) -> None:
        self.link = link
        self.call = call
        self.source = source
        self.direction = direction
        self.observers = observers

    def __call__(self, frame: Frame) -> None:
        for observer in self.observers:
            observer.on_push(self.call, self.source, frame, self.direction)
        self.link(frame)
