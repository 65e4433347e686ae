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
- **Usage counters** (:attr:`usage`) and :meth:`report_error`, which sends an error frame
  upstream from any thread (non-fatal unless the service gave up on its provider) and, if
  the service was given a ``fallback_text``, asks the TTS downstream to say it.
- **TLS settings** for its provider's ``https``/``wss`` connections: certificates are
  verified against the system's CAs unless the service is given ``ssl_context`` (an
  :class:`ssl.SSLContext` of the application's own) or ``ca_file`` (a PEM bundle of the
  CAs to trust instead, e.g. a private gateway's or a test server's).
- **HTTP requests** (:meth:`http_request`) through the client of its event loop
  (:meth:`http_client`): one :class:`~flowcat_ft.services.net.http.HTTPClient` per event
  loop and TLS setting (:class:`~flowcat_ft.services.net.http.LoopClients`), so every
  call's services on a loop share its connections (over HTTP/2, multiplexed).

Threading contract: as :class:`AsyncService`. ``usage`` is written on the stage thread only
(:meth:`count`, from a coroutine, goes through :meth:`call_soon`); ``_background``,
``_http`` and ``_http_over`` are used on the service's event loop only (the end of the
call lets the HTTP client go from there too).
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from flowcat_ft.frames import Direction, ErrorFrame, MetricsFrame
from flowcat_ft.services.base import AsyncService, call_later, current_job
from flowcat_ft.services.llm.frames import TTSSpeakFrame
from flowcat_ft.services.net.auth import get_logger, redact
from flowcat_ft.services.net.http import HTTPClient, LoopClients, Response, Timeouts, TLSKey
from flowcat_ft.services.net.retry import RetryPolicy

__all__ = ["CloudService", "call_later"]

logger = get_logger("flowcat_ft.services")


class CloudService(AsyncService):
    """A service that talks to a provider over the network (see the module docstring).

    ``fallback_text``: what the TTS should say when this service fails a turn (None: the
    error frame only). ``ssl_context`` or ``ca_file``: how to verify the provider's TLS
    certificate (see the module docstring; at most one of them).
    """

    timeouts: Timeouts = Timeouts()
    """The timeouts of :meth:`http_request` (an HTTP service sets its own)."""
    retry: RetryPolicy = RetryPolicy()
    """How connecting to the provider is retried (a service sets its own)."""

    def __init__(
        self,
        *,
        name: str | None = None,
        fallback_text: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(name=name)
        if ssl_context is not None and ca_file is not None:
            raise ValueError("give ssl_context or ca_file, not both")
        self.fallback_text = fallback_text
        self.ca_file = os.fspath(ca_file) if ca_file is not None else None
        self.ssl_context = _trusting(self.ca_file) if self.ca_file is not None else ssl_context
        """Verifies the provider's certificate; None: the system's CAs."""
        self.usage: Counter[str] = Counter()
        self._background: set[asyncio.Task] = set()
        self._http: HTTPClient | None = None  # held from the loop's clients
        self._http_over = False  # the call has ended: hold no client

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
                # A cancelled task keeps its CancelledError, whose traceback holds this
                # frame: without this, the frame's ``task`` would close a cycle.
                del task

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
        self,
        message: str,
        *,
        generation: int | None = None,
        fallback: bool = True,
        fatal: bool = False,
    ) -> None:
        """Send an error frame upstream (from any thread), and the fallback text down.

        With a ``generation``, nothing is reported if that work was cancelled meanwhile.
        ``fatal``: the service gave up (its provider stayed unreachable), and the call ends
        rather than go on without it (no fallback is said).
        """
        message = redact(message)
        logger.warning("%s: %s", self.name, message)
        job = current_job()
        if job is not None:
            job.fail(message)
        self.call_soon(self._report_now, generation, message, fallback, fatal)

    def _report_now(
        self, generation: int | None, message: str, fallback: bool, fatal: bool
    ) -> None:
        if generation is not None and generation != self._generation:
            return
        self.usage["errors"] += 1
        error = ErrorFrame(f"{self.name}: {message}", fatal=fatal, processor=self.name)
        self.push(error, Direction.UPSTREAM)
        if fallback and self.fallback_text and not fatal:
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
        """The HTTP client of this service's event loop and TLS settings, shared with
        every call's services that have the same (see the module docstring); held from
        the first use to the end of the call. Call it on the service's event loop."""
        if self._http is None:
            if self._http_over or self.call is None:
                raise RuntimeError("this service's call has ended, or not begun")
            ca_file, ssl_context = self.ca_file, self.ssl_context

            def make() -> HTTPClient:
                if ca_file is not None:  # a context of its own: httpx sets its ALPN protocols
                    return HTTPClient(ca_file=ca_file)
                return HTTPClient(ssl_context=ssl_context)

            self._http = self._loop_clients().hold(self._tls(), make)
        return self._http

    def _loop_clients(self) -> LoopClients:
        return self.call.shared((LoopClients, self.event_loop), LoopClients)

    def _tls(self) -> TLSKey:
        return self.ca_file if self.ca_file is not None else self.ssl_context

    def _let_go_of_http(self) -> None:
        """At the end of the call (on the stage thread): let the HTTP client go, on its loop."""
        if self._io is None:
            return  # the service never used an event loop

        async def let_go() -> None:
            self._http_over = True
            if self._http is not None:
                self._http = None
                await self._loop_clients().let_go(self._tls())

        if not self._io.loop.is_closed():
            self._io.submit(let_go())

    async def http_request(self, method: str, url: str, **options: Any) -> Response:
        """:meth:`HTTPClient.request <flowcat_ft.services.net.http.HTTPClient.request>`
        through :meth:`http_client`, with the service's ``timeouts`` and ``retry``; its
        retries are counted in ``usage``."""
        return await self.http_client().request(
            method,
            url,
            timeouts=self.timeouts,
            retry=self.retry,
            on_retry=lambda retry, error, delay: self.count(retries=1),
            **options,
        )

    def on_end(self) -> None:
        self.cancel_work()
        self._stop_background()
        self._let_go_of_http()

    def on_cancel(self) -> None:
        super().on_cancel()
        self._stop_background()
        self._let_go_of_http()


@functools.lru_cache(maxsize=16)
def _trusting(ca_file: str) -> ssl.SSLContext:
    """A client context that verifies certificates (and host names) against ``ca_file``,
    made once per file: every call's services share it."""
    return ssl.create_default_context(cafile=ca_file)
