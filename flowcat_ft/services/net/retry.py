"""Retries with exponential backoff and jitter, bounded, for connecting to providers.

What is retried: failing to connect (refused, reset, DNS, TLS, a connect timeout), a 429
(Too Many Requests: after the ``Retry-After`` the provider asked for, when it asked for
one no longer than ``max_retry_after``) and a 5xx. Nothing is retried once a response has
started streaming: by then the caller may have heard part of it.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flowcat_ft.services.net.auth import get_logger

__all__ = ["RetryPolicy", "parse_retry_after", "retrying"]

logger = get_logger("flowcat_ft.services.net")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC
    9110 §10.2.3). Fractions are accepted (some providers send them); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    ``attempts`` counts every try (1: never retry). The n-th retry waits
    ``min(max_delay, base_delay * 2**(n-1))``, less a random part of up to ``jitter`` of it
    (so that many calls failing at once do not retry in step), or what ``Retry-After``
    asked for; a ``Retry-After`` over ``max_retry_after`` is not waited for (the error goes
    to the caller at once, since a voice call cannot wait that long).
    """

    attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 4.0
    jitter: float = 0.5
    max_retry_after: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter is a fraction of the delay, from 0 to 1")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 for the first)."""
        delay = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return delay * (1.0 - self.jitter * (rng or random).random())

    def delay(self, retry: int, retry_after: float | None = None) -> float | None:
        """The wait before retry ``retry``, or None if that retry should not happen."""
        if retry >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return self.backoff(retry)


NO_RETRY = RetryPolicy(attempts=1)


def retryable(error: BaseException) -> tuple[bool, float | None]:
    """Whether ``error`` is worth another try, and the ``Retry-After`` it carried."""
    from flowcat_ft.services.net.http import HTTPStatusError  # a cycle

    if isinstance(error, HTTPStatusError):
        if error.status == 429 or 500 <= error.status < 600:
            return True, error.retry_after
        return False, None
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):  # websockets' InvalidStatus on a refused handshake
        if status == 429 or 500 <= status < 600:
            headers = getattr(error.response, "headers", None)
            return True, parse_retry_after(headers.get("Retry-After") if headers else None)
        return False, None
    if isinstance(error, ConnectionError | TimeoutError | OSError):
        return True, None
    return False, None


async def retrying[T](
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str = "request",
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    is_retryable: Callable[[BaseException], tuple[bool, float | None]] = retryable,
) -> T:
    """Run ``attempt()`` until it succeeds, fails for good, or the policy gives up (then
    the last error is raised). ``on_retry(retry, error, delay)`` is told of each retry."""
    retry = 0
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            ok, retry_after = is_retryable(error)
            retry += 1
            delay = policy.delay(retry, retry_after) if ok else None
            if delay is None:
                raise
            logger.info(
                "%s failed (%s: %s); retry %d in %.2f s",
                what,
                type(error).__name__,
                error,
                retry,
                delay,
            )
            if on_retry is not None:
                on_retry(retry, error, delay)
            await asyncio.sleep(delay)
