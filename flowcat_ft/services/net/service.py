"""The base of the cloud services: an :class:`~flowcat_ft.services.base.AsyncService` bound
to one event loop, with connections that outlive a turn, timers and usage counters.

What it adds to :class:`AsyncService`:

- **One event loop per service instance** (:attr:`event_loop` is chosen once): a
  WebSocket or a pooled HTTP connection belongs to the loop that opened it, so every
  coroutine of one call's service runs on the same loop.
- **Background work** (:meth:`run_background`): coroutines that an interruption does not
  cancel, such as the receive loop of a provider's WebSocket that carries every turn of the
  call. The end or cancellation of the call cancels them.
- **Timers** (:func:`call_later`): run a callback on the stage thread after a delay.
- **Usage counters** (:attr:`usage`) and :meth:`report_error`, which sends a non-fatal error
  frame upstream from any thread and, if the service was given a ``fallback_text``, asks
  the TTS downstream to say it.

Threading contract: as :class:`AsyncService`. ``usage`` is written on the stage thread only
(:meth:`count`, from a coroutine, goes through :meth:`call_soon`); ``_background`` is
written on the service's event loop only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from flowcat_ft.frames import Direction, ErrorFrame
from flowcat_ft.services.base import AsyncService
from flowcat_ft.services.llm.frames import MetricsFrame, TTSSpeakFrame
from flowcat_ft.services.net.auth import get_logger, redact
from flowcat_ft.services.net.http import HTTPClient

if TYPE_CHECKING:
    from flowcat_ft.processor import FrameProcessor

__all__ = ["CloudService", "call_later"]

logger = get_logger("flowcat_ft.services")


def call_later(
    processor: FrameProcessor, delay: float, callback: Callable[..., object], *args: object
) -> Callable[[], None]:
    """Run ``callback(*args)`` on ``processor``'s stage thread after ``delay`` seconds.

    Returns a function that cancels the timer (call it from the stage thread; a timer
    already due may still run, so callbacks check their own state). The timer runs on one
    of the runtime's event loops; it is dropped if the call has ended by then.
    """
    loop = processor.event_loop.loop
    handle: list[asyncio.TimerHandle] = []
    cancelled = False

    def arm() -> None:
        if not cancelled:
            handle.append(loop.call_later(delay, fire))

    def fire() -> None:
        if not cancelled:
            processor.call_soon(run)

    def run() -> None:
        if not cancelled:
            callback(*args)

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True
        if handle:
            loop.call_soon_threadsafe(handle[0].cancel)

    loop.call_soon_threadsafe(arm)
    return cancel


class CloudService(AsyncService):
    """A service that talks to a provider over the network (see the module docstring).

    ``fallback_text``: what the TTS should say when this service fails a turn (None: the
    error frame only).
    """

    def __init__(self, *, name: str | None = None, fallback_text: str | None = None) -> None:
        super().__init__(name=name)
        self.fallback_text = fallback_text
        self.usage: Counter[str] = Counter()
        self._http: HTTPClient | None = None
        self._background: set[asyncio.Task] = set()

    # -- work that outlives a turn ------------------------------------------------------------

    def run_background(self, coro: Coroutine[Any, Any, Any]) -> Future:
        """Run ``coro`` on the service's loop until it ends or the call does; an
        interruption does not cancel it. If it raises, an error frame goes upstream."""

        async def guarded() -> None:
            task = asyncio.current_task()
            self._background.add(task)
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.report_error(f"{type(error).__name__}: {error}")
            finally:
                self._background.discard(task)

        return self.event_loop.submit(guarded())

    def _stop_background(self) -> None:
        if self._io is None:
            return
        loop = self._io.loop

        def cancel_all() -> None:
            for task in list(self._background):
                task.cancel()

        if not loop.is_closed():
            loop.call_soon_threadsafe(cancel_all)

    # -- errors, usage ---------------------------------------------------------------------

    def report_error(
        self, message: str, *, generation: int | None = None, fallback: bool = True
    ) -> None:
        """Send an error frame upstream (from any thread), and the fallback text down.

        With a ``generation``, nothing is reported if that work was cancelled meanwhile.
        """
        message = redact(message)
        logger.warning("%s: %s", self.name, message)
        self.call_soon(self._report_now, generation, message, fallback)

    def _report_now(self, generation: int | None, message: str, fallback: bool) -> None:
        if generation is not None and generation != self._generation:
            return
        self.usage["errors"] += 1
        self.push(ErrorFrame(f"{self.name}: {message}", processor=self.name), Direction.UPSTREAM)
        if fallback and self.fallback_text:
            self.push(TTSSpeakFrame(self.fallback_text))

    def count(self, **amounts: int) -> None:
        """Add to the usage counters (from any thread)."""
        self.call_soon(self.usage.update, amounts)

    def metrics_frame(self) -> MetricsFrame:
        """The service's measurements so far, as a frame."""
        data: dict[str, Any] = dict(self.usage)
        if self.ttfb.count:
            data["ttfb_ms"] = round(self.ttfb.total / self.ttfb.count / 1e6, 1)
        return MetricsFrame(self.name, data)

    # -- hooks ---------------------------------------------------------------------------------

    def http_client(self) -> HTTPClient:
        """This service's HTTP client, made on first use (on its event loop) with the
        service's ``timeouts`` and ``retry``, and closed when the call ends."""
        if self._http is None:
            self._http = HTTPClient(timeouts=self.timeouts, retry=self.retry)
        return self._http

    def _close_http(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._io is not None:
            self._io.submit(http.aclose())

    def on_end(self) -> None:
        self.cancel_work()
        self._stop_background()
        self._close_http()

    def on_cancel(self) -> None:
        super().on_cancel()
        self._stop_background()
        self._close_http()
