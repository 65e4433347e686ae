"""Output pacing: audio leaves at real time, in 20 ms frames, a little ahead of the clock.

Carriers play what they are sent into a jitter buffer of their own; sending a TTS burst at
once fills it (and makes an interruption's ``clear`` arrive late). A :class:`Playout`
sends a frame at once while the audio already sent is less than ``lead`` ahead of real
time, and queues it otherwise; one :class:`Ticker` per event loop sends queued frames as
their time comes, for every connection on that loop (one timer per loop, not per call).

A playout can also pause (the caller may be cutting in: see
:class:`~flowcat_ft.frames.PauseOutputFrame`): it stops sending, and takes back the audio
it sent that has not played yet by its clock (the lead), to send it again on resume,
once the carrier has been told to drop it.
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
    While :attr:`paused` nothing is sent: items queue, and :meth:`resume` sends them.
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
        # Audio sent that may not have played yet: (message, duration, when it ends).
        self._sent: deque[tuple[str | bytes, float, float]] = deque()
        self.paused = False
        self.dropped = 0
        self.marks_dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def play(self, message: str | bytes, duration: float = FRAME_SECS) -> None:
        """Send ``message`` now if the clock allows, else queue it for the ticker."""
        now = self._ticker.loop.time()
        if not self._queue and not self.paused and self._until <= now + self.lead:
            self._send_now(message, duration, now)
            return
        if len(self._queue) >= self.max_items:
            if not self._queue.popleft()[1]:
                self.marks_dropped += 1
            self.dropped += 1
        self._queue.append((message, duration))
        if not self.paused:
            self._ticker.add(self)

    def tick(self, now: float) -> bool:
        """Send what is due; return True while anything is still queued (and not paused)."""
        queue = self._queue
        while queue and not self.paused and self._until <= now + self.lead:
            self._send_now(*queue.popleft(), now)
        return bool(queue) and not self.paused

    def _send_now(self, message: str | bytes, duration: float, now: float) -> None:
        self._send(message)
        self._until = max(self._until, now) + duration
        if duration:
            sent = self._sent
            sent.append((message, duration, self._until))
            while sent[0][2] <= now:  # played: forget it
                sent.popleft()

    def pause(self, take_back: bool) -> None:
        """Send nothing until :meth:`resume`. With ``take_back``, for a carrier told to
        drop what it holds (a ``clear``): the audio sent that has not finished playing by
        this clock goes back to the head of the queue, to be sent again."""
        if take_back:
            now = self._ticker.loop.time()
            unplayed = [(m, d) for m, d, ends in self._sent if ends > now]
            self._queue.extendleft(reversed(unplayed))
            self._until = 0.0
        self._sent.clear()
        self.paused = True

    def resume(self) -> None:
        """Send on from where :meth:`pause` stopped."""
        self.paused = False
        if self.tick(self._ticker.loop.time()):
            self._ticker.add(self)

    def stop(self) -> None:
        """The connection is gone: drop what is queued and send nothing more. This also
        lets go of ``send`` (a method of the session that holds this playout), so the two
        are no reference cycle."""
        self.clear()
        self._send = _gone

    def clear(self) -> int:
        """Drop queued audio and marks (an interruption), and end a pause; return how
        many were dropped."""
        queue = self._queue
        n = len(queue)
        self.marks_dropped += sum(1 for _, duration in queue if not duration)
        queue.clear()
        self._sent.clear()
        self._until = 0.0
        self.paused = False
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
