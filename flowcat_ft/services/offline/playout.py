"""The bot's side of the turn: audio let out at real time, and when the bot is speaking.

A TTS stage makes audio much faster than it plays (espeak-ng says six seconds in a few
tens of milliseconds). Something has to know when the caller is *hearing* the bot, both to
let a barge-in interrupt it (:class:`~flowcat_ft.audio.turns.TurnDetector` listens for
:class:`~flowcat_ft.frames.BotStartedSpeakingFrame`) and to record only what was heard.
:class:`BotPlayout`, at the end of a pipeline, is that something.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from functools import partial

from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ControlFrame,
    Direction,
    Frame,
    OutputAudioRawFrame,
    PauseOutputFrame,
    ResumeOutputFrame,
    StartFrame,
    SystemFrame,
)
from flowcat_ft.processor import FrameProcessor

__all__ = ["BotPlayout"]


class BotPlayout(FrameProcessor):
    """Let the bot's audio out at real time, *lead_secs* ahead of the clock, and say when
    the bot starts and stops speaking.

    Output audio travelling downstream waits here until its time; frames behind it (a
    :class:`~flowcat_ft.frames.TTSTextFrame` of what was just said, say) wait their turn,
    so they leave when the audio before them has been let out. The first audio after a
    silence sends a :class:`~flowcat_ft.frames.BotStartedSpeakingFrame` both ways; once
    the audio let out has played, a :class:`~flowcat_ft.frames.BotStoppedSpeakingFrame`
    follows, both ways too.

    An interruption drops the waiting data frames (control frames go on at once) and stops
    the bot speaking. A :class:`~flowcat_ft.frames.PauseOutputFrame` stops letting audio
    out (the bot is still speaking, paused) until a
    :class:`~flowcat_ft.frames.ResumeOutputFrame`, which lets it out again from where the
    caller stopped hearing it: the audio let out but not yet played when the pause came
    is played again (the output transport sends it again). An
    :class:`~flowcat_ft.frames.EndFrame` lets everything waiting out at once, ahead of it
    (a transport that paces its output plays it to the end).

    Threading contract: the queue, the clock (``_until``) and the flags are used on the
    stage thread only; the timer runs on an event loop and only hands :meth:`_tick` back
    through :meth:`call_soon`.
    """

    def __init__(self, lead_secs: float = 0.08, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.lead_secs = lead_secs
        self.speaking = False
        self._queue: deque[Frame] = deque()
        self._until = 0.0  # time.monotonic() when the audio let out so far has played
        self._timer = False  # a tick is scheduled
        self._paused_at: float | None = None  # time.monotonic() of the pause, while paused
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_start(self, frame: StartFrame) -> None:
        self._loop = self.event_loop.loop

    def process(self, frame: Frame, direction: Direction) -> None:
        kind = type(frame)
        if kind is PauseOutputFrame and self._paused_at is None:
            self._paused_at = time.monotonic()
        if direction is Direction.UPSTREAM or isinstance(frame, SystemFrame):
            self.push(frame, direction)
            if kind is ResumeOutputFrame and self._paused_at is not None:
                self._resume()
        elif self._queue or isinstance(frame, OutputAudioRawFrame):
            self._queue.append(frame)
            self._release()
        else:
            self.push(frame, direction)

    def _resume(self) -> None:
        # What had been let out and not played by the pause plays again from now.
        now = time.monotonic()
        self._until = now + max(0.0, self._until - self._paused_at)
        self._paused_at = None
        self._release()

    def _release(self) -> None:
        """Let out what is due, and set the timer for what comes next."""
        if self._paused_at is not None:
            return
        queue = self._queue
        now = time.monotonic()
        while queue:
            frame = queue[0]
            if isinstance(frame, OutputAudioRawFrame):
                if self._until > now + self.lead_secs:
                    break
                if not self.speaking:
                    self._set_speaking(True)
                self._until = max(self._until, now) + frame.num_frames / frame.sample_rate
            self.push(queue.popleft())
        if queue:
            self._schedule(self._until - self.lead_secs - now)
        elif self.speaking:
            self._schedule(self._until - now)

    def _tick(self) -> None:
        self._timer = False
        if self._closed or self._paused_at is not None:
            return
        if not self._queue and self.speaking and time.monotonic() >= self._until:
            self._set_speaking(False)
        else:
            self._release()

    def _schedule(self, delay: float) -> None:
        if not self._timer:
            self._timer = True
            loop = self._loop
            loop.call_soon_threadsafe(
                loop.call_later, max(delay, 0.0), partial(self.call_soon, self._tick)
            )

    def _set_speaking(self, speaking: bool) -> None:
        self.speaking = speaking
        kind = BotStartedSpeakingFrame if speaking else BotStoppedSpeakingFrame
        self.push(kind(), Direction.UPSTREAM)
        self.push(kind())

    def on_interruption(self) -> None:
        waiting = [f for f in self._queue if isinstance(f, ControlFrame)]
        self._queue.clear()  # the audio's slabs go back to the pool
        self._until = 0.0
        self._paused_at = None
        for frame in waiting:
            self.push(frame)
        if self.speaking:
            self._set_speaking(False)

    def on_end(self) -> None:
        self._closed = True
        self._paused_at = None
        while self._queue:
            self.push(self._queue.popleft())

    def on_cancel(self) -> None:
        self._closed = True
        self._queue.clear()
