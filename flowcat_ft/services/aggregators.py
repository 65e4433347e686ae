"""Context aggregation: what the user said and what the caller heard, one call's
:class:`~flowcat_ft.services.context.LLMContext`.

Two processors, as in pipecat, placed around the LLM and TTS::

    context = LLMContextAggregatorPair(system_prompt="You are a helpful agent.")
    Pipeline([stt, context.user, llm, tts, context.assistant])

(``context.user`` and ``context.assistant`` are factories: every call gets its own pair.)

- :class:`UserContextAggregator` owns the context. It gathers the final transcripts of a
  user turn, from :class:`~flowcat_ft.frames.UserStartedSpeakingFrame` to
  :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame` (and the final transcript that
  arrives just after: speech-to-text lags voice activity), adds them as one user message
  and sends the LLM an :class:`~flowcat_ft.services.llm.frames.LLMContextFrame`. Without
  voice activity frames, the STT's
  :class:`~flowcat_ft.services.llm.frames.UtteranceEndFrame` ends the turn, or else a
  pause of ``aggregation_timeout`` between transcripts. It also records what travels
  upstream to it: the function calls and their results from the LLM, and the assistant's
  messages from the assistant aggregator.
- :class:`AssistantContextAggregator` sits at the output and records what the caller
  *heard*: the :class:`~flowcat_ft.frames.TTSTextFrame`\\ s the TTS placed just before the
  audio that speaks them, each counted as heard once the audio before it has played. The
  output plays audio at real time, so the aggregator keeps a playout clock: where the audio
  that has passed it ends. An interruption keeps the words heard by then and drops the
  rest (the bot's queued audio is being dropped too), so the context never claims the
  caller heard what was cut off. With ``paced=False`` (an output that plays everything at
  once, or tests), text counts as heard as it passes.

The assistant aggregator sends its message upstream (an
:class:`~flowcat_ft.services.llm.frames.LLMMessagesAppendFrame`), so the context has a
single owner on a single stage thread and nothing is shared between threads.

Metrics: :attr:`AssistantContextAggregator.response_latency`, from the end of the user's
speech (the :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame`'s timestamp) to the first
bot audio reaching the output.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flowcat_ft.frames import (
    Direction,
    Frame,
    InterimTranscriptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.metrics import Histogram
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.services.context import LLMContext, Message
from flowcat_ft.services.llm.frames import (
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    LLMContextFrame,
    LLMMessagesAppendFrame,
    LLMMessagesUpdateFrame,
    LLMRunFrame,
    UtteranceEndFrame,
)
from flowcat_ft.services.net.service import call_later
from flowcat_ft.services.tools import ToolRegistry

__all__ = [
    "AssistantContextAggregator",
    "LLMContextAggregatorPair",
    "UserContextAggregator",
]

DOWN = Direction.DOWNSTREAM
UP = Direction.UPSTREAM


class UserContextAggregator(FrameProcessor):
    """Owns the call's context; turns the user's transcripts into user messages and asks
    the LLM to answer (see the module docstring).

    Threading contract: everything here runs on the processor's stage thread (timers come
    back through :meth:`call_soon`); the LLM gets a fork of the context.
    """

    def __init__(
        self,
        context: LLMContext | None = None,
        *,
        aggregation_timeout: float = 0.5,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.context = context if context is not None else LLMContext()
        self.aggregation_timeout = aggregation_timeout
        self._parts: list[str] = []
        self._speaking = False
        self._vad_seen = False
        self._interim = False
        self._cancel_timer: Callable[[], None] | None = None
        self.turns = 0

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is UP:
            self._upstream(frame)
            return
        kind = type(frame)
        if kind is UserStartedSpeakingFrame:
            self._speaking = self._vad_seen = True
            self._stop_timer()
        elif kind is UserStoppedSpeakingFrame:
            self._speaking = False
            self.push(frame, direction)
            if self._parts and not self._interim:
                self._finish()
            else:  # the final transcript is still on its way: wait for it, a while
                self._start_timer()
            return
        elif isinstance(frame, InterimTranscriptionFrame):
            self._interim = True
        elif isinstance(frame, TranscriptionFrame):
            self._interim = False
            if frame.text.strip():
                self._parts.append(frame.text.strip())
            self.push(frame, direction)
            if not self._speaking:
                if self._vad_seen:
                    self._finish()
                else:
                    self._start_timer()
            return
        elif kind is UtteranceEndFrame:
            self.push(frame, direction)
            if not self._speaking and self._parts:
                self._finish()  # the STT heard the turn end: no pause to wait out
            return
        elif isinstance(frame, LLMMessagesAppendFrame):
            self.context.add_messages(frame.messages)
            if frame.run_llm:
                self.run_llm()
            return
        elif isinstance(frame, LLMMessagesUpdateFrame):
            self.context.set_messages(frame.messages)
            if frame.run_llm:
                self.run_llm()
            return
        elif isinstance(frame, LLMRunFrame):
            self.run_llm()
            return
        self.push(frame, direction)

    def _upstream(self, frame: Frame) -> None:
        if isinstance(frame, LLMMessagesAppendFrame):
            self.context.add_messages(frame.messages)
            if frame.run_llm:
                self.run_llm()
        elif isinstance(frame, FunctionCallsStartedFrame):
            self.context.add_tool_calls(frame.calls)
        elif isinstance(frame, FunctionCallResultFrame):
            value: Any = frame.result if frame.error is None else {"error": frame.error}
            self.context.set_tool_result(frame.tool_call_id, value)
        else:
            self.push(frame, UP)

    def run_llm(self) -> None:
        """Ask the LLM to answer the context as it is."""
        self.push(LLMContextFrame(self.context.fork()))

    def _finish(self) -> None:
        self._stop_timer()
        text = " ".join(self._parts).strip()
        self._parts.clear()
        self._interim = False
        if not text:
            return
        self.turns += 1
        self.context.add_user_message(text)
        self.run_llm()

    def _start_timer(self) -> None:
        self._stop_timer()
        self._cancel_timer = call_later(self, self.aggregation_timeout, self._timed_out)

    def _stop_timer(self) -> None:
        cancel, self._cancel_timer = self._cancel_timer, None
        if cancel is not None:
            cancel()

    def _timed_out(self) -> None:
        self._cancel_timer = None
        if not self._speaking and self._parts:
            self._finish()
        elif not self._speaking:
            self._interim = False

    def on_end(self) -> None:
        self._stop_timer()

    def on_cancel(self) -> None:
        self._stop_timer()


class AssistantContextAggregator(FrameProcessor):
    """Records what the caller heard as assistant messages (see the module docstring).

    Threading contract: everything here runs on the processor's stage thread.
    """

    def __init__(self, *, paced: bool = True, name: str | None = None) -> None:
        super().__init__(name=name)
        self.paced = paced
        self._clock_end = 0  # monotonic ns at which the audio that passed will have played
        self._pending: deque[tuple[int, str]] = deque()  # (heard at, text)
        self._heard: list[str] = []
        self._response_open = False
        self._user_stopped_ns: int | None = None
        self._cancel_timer: Callable[[], None] | None = None
        self.response_latency = Histogram()
        self.messages = 0

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is UP:
            self.push(frame, direction)
            return
        now = time.monotonic_ns()
        if isinstance(frame, OutputAudioRawFrame):
            if self._user_stopped_ns is not None:
                self.response_latency.add(now - self._user_stopped_ns)
                self._user_stopped_ns = None
            start = max(now, self._clock_end)
            rate = frame.sample_rate or 1
            self._clock_end = start + frame.num_frames * 1_000_000_000 // rate
        elif isinstance(frame, TTSTextFrame):
            heard_at = max(now, self._clock_end) if self.paced else 0
            self._pending.append((heard_at, frame.text))
            if not self.paced:
                self._commit(now)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._response_open = True
        elif isinstance(frame, LLMFullResponseEndFrame | TTSStoppedFrame):
            if isinstance(frame, LLMFullResponseEndFrame):
                self._response_open = False
            self.push(frame, direction)
            self._settle()
            return
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_stopped_ns = frame.pts
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._commit(now)
            self._flush()
        self.push(frame, direction)

    def _commit(self, now: int) -> None:
        """Move the text heard by ``now`` from pending to heard."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            self._heard.append(pending.popleft()[1])

    def _flush(self) -> None:
        """Send what was heard upstream as one assistant message."""
        text = " ".join(t.strip() for t in self._heard if t.strip())
        self._heard.clear()
        if text:
            self.messages += 1
            self.push(LLMMessagesAppendFrame([{"role": "assistant", "content": text}]), UP)

    def _settle(self) -> None:
        """After a response or an utterance ends: commit what has played, and come back
        when the rest will have."""
        self._stop_timer()
        now = time.monotonic_ns()
        self._commit(now)
        if self._pending:
            wait = (self._pending[-1][0] - now) / 1e9 + 0.005
            self._cancel_timer = call_later(self, max(wait, 0.0), self._settle)
        elif not self._response_open:
            self._flush()

    def _stop_timer(self) -> None:
        cancel, self._cancel_timer = self._cancel_timer, None
        if cancel is not None:
            cancel()

    def on_interruption(self) -> None:
        self._stop_timer()
        now = time.monotonic_ns()
        self._commit(now)
        self._pending.clear()
        self._clock_end = now
        self._response_open = False
        self._flush()

    def on_end(self) -> None:
        self._stop_timer()
        self._commit(1 << 62)  # the call ends after its queued audio has played
        self._flush()

    def on_cancel(self) -> None:
        self._stop_timer()


class LLMContextAggregatorPair:
    """Factories for a call's user and assistant aggregators, sharing one configuration.

    ``system_prompt`` and ``messages`` start each call's context; ``tools`` (a
    :class:`~flowcat_ft.services.tools.ToolRegistry` or schemas in OpenAI's format) are
    sent with it (leave them None to let the LLM service send its own registry's).
    """

    def __init__(
        self,
        *,
        system_prompt: str | None = None,
        messages: Iterable[Message] = (),
        tools: ToolRegistry | Sequence[dict] | None = None,
        aggregation_timeout: float = 0.5,
        paced: bool = True,
    ) -> None:
        self.system_prompt = system_prompt
        self.messages = list(messages)
        if isinstance(tools, ToolRegistry):
            tools = tools.schemas("openai")
        self.tools = list(tools) if tools else None
        self.aggregation_timeout = aggregation_timeout
        self.paced = paced

    def new_context(self) -> LLMContext:
        return LLMContext(self.messages, system_prompt=self.system_prompt, tools=self.tools)

    def user(self) -> UserContextAggregator:
        return UserContextAggregator(
            self.new_context(), aggregation_timeout=self.aggregation_timeout
        )

    def assistant(self) -> AssistantContextAggregator:
        return AssistantContextAggregator(paced=self.paced)
