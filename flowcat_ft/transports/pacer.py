"""Output pacing: audio leaves at real time, in 20 ms frames, a little ahead of the clock.

Carriers play what they are sent into a jitter buffer of their own; sending a TTS burst at
once fills it (and makes an interruption's ``clear`` arrive late). A :class:`Playout`
sends a frame at once while the audio already sent is less than ``lead`` ahead of real
time, and queues it otherwise; one :class:`Ticker` per event loop sends queued frames as
their time comes, for every connection on that loop (one timer per loop, not per call).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

FRAME_SECS = 0.02


class Playout:
    """One connection's outgoing audio clock and queue. Used only on its event loop.

    Items are wire messages; an item queued with ``duration=0`` (a mark) goes out after
    the audio before it without moving the clock. ``dropped`` counts the items a full
    queue dropped; ``marks_dropped`` the marks dropped before they were sent (by
    :meth:`clear` or a full queue), counted on those paths only, not as items go out.
    """

    def __init__(
        self,
        send: Callable[[str | bytes], None],
        ticker: Ticker,
        lead: float = 0.08,
        max_buffer: float = 20.0,
    ) -> None:
        self._send = send
        self._ticker = ticker
        self.lead = lead
        self.max_items = int(max_buffer / FRAME_SECS)
        self._queue: deque[tuple[str | bytes, float]] = deque()
        self._until = 0.0  # when the audio sent so far finishes playing
        self.dropped = 0
        self.marks_dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def play(self, message: str | bytes, duration: float = FRAME_SECS) -> None:
        """Send ``message`` now if the clock allows, else queue it for the ticker."""
        now = self._ticker.loop.time()
        if not self._queue and self._until <= now + self.lead:
            self._send(message)
            self._until = max(self._until, now) + duration
            return
        if len(self._queue) >= self.max_items:
            if not self._queue.popleft()[1]:
                self.marks_dropped += 1
            self.dropped += 1
        self._queue.append((message, duration))
        self._ticker.add(self)

    def tick(self, now: float) -> bool:
        """Send what is due; return True while anything is still queued."""
        queue = self._queue
        while queue and self._until <= now + self.lead:
            message, duration = queue.popleft()
            self._send(message)
            self._until = max(self._until, now) + duration
        return bool(queue)

    def stop(self) -> None:
        """The connection is gone: drop what is queued and send nothing more. This also
        lets go of ``send`` (a method of the session that holds this playout), so the two
        are no reference cycle."""
        self.clear()
        self._send = _gone

    def clear(self) -> int:
        """Drop queued audio and marks (an interruption); return how many were dropped."""
        queue = self._queue
        n = len(queue)
        self.marks_dropped += sum(1 for _, duration in queue if not duration)
        queue.clear()
        self._until = 0.0
        return n


def _gone(message: str | bytes) -> None:
    """Where a stopped playout sends: nowhere."""


class Ticker:
    """Every 20 ms on one event loop: send due audio for each waiting :class:`Playout`,
    and run ``on_second`` callbacks about once a second (idle-timeout checks)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: set[Playout] = set()
        self._periodic: set[Callable[[float], None]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._next_second = 0.0

    def add(self, playout: Playout) -> None:
        self._waiting.add(playout)
        self._ensure_running()

    def every_second(self, callback: Callable[[float], None]) -> None:
        self._periodic.add(callback)
        self._ensure_running()

    def discard(self, playout: Playout | None, callback: Callable[[float], None] | None) -> None:
        self._waiting.discard(playout)
        self._periodic.discard(callback)

    def _ensure_running(self) -> None:
        if self._handle is None:
            self._next = self.loop.time() + FRAME_SECS
            self._handle = self.loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        for playout in list(self._waiting):
            if not playout.tick(now):
                self._waiting.discard(playout)
        if now >= self._next_second:
            self._next_second = now + 1.0
            for callback in list(self._periodic):
                callback(now)
        if self._waiting or self._periodic:
            # An absolute schedule: a late tick does not push the later ones back.
            self._next = max(self._next + FRAME_SECS, now + 0.001)
            self._handle = self.loop.call_at(self._next, self._tick)
        else:
            self._handle = None
