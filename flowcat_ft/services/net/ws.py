"""Opening WebSocket connections to providers, with retries and credentials kept out of logs.

The ``websockets`` library (asyncio API) does the protocol; this module opens a connection
with a provider's headers, retries connect errors, 429 and 5xx handshake refusals per a
:class:`~flowcat_ft.services.net.retry.RetryPolicy`, verifies a ``wss`` server's
certificate with the given :class:`ssl.SSLContext` (the system's CAs by default), and gives
the library a logger whose records are scrubbed of secrets (``websockets`` logs handshake
headers and frames at DEBUG level).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping

from websockets.asyncio.client import ClientConnection, connect

from flowcat_ft.services.net.auth import Secret, get_logger, redact
from flowcat_ft.services.net.retry import RetryPolicy, retrying

__all__ = ["connect_ws", "ws_logger"]

ws_logger = get_logger("flowcat_ft.services.ws")
"""The logger handed to ``websockets`` for providers' connections."""


async def connect_ws(
    url: str,
    headers: Mapping[str, str | Secret] | None = None,
    *,
    retry: RetryPolicy | None = None,
    open_timeout: float = 10.0,
    max_size: int | None = 16 << 20,
    ping_interval: float | None = 20.0,
    on_retry=None,
    ssl_context: ssl.SSLContext | None = None,
) -> ClientConnection:
    """Open a WebSocket to ``url`` (headers may hold :class:`Secret` values).
    ``ssl_context`` verifies a ``wss`` server (None: the system's CAs); a ``ws`` URL
    ignores it."""
    plain = {
        name: value.reveal() if isinstance(value, Secret) else value
        for name, value in (headers or {}).items()
    }
    tls = {"ssl": ssl_context} if ssl_context is not None and url.startswith("wss:") else {}

    async def attempt() -> ClientConnection:
        return await connect(
            url,
            additional_headers=plain,
            open_timeout=open_timeout,
            max_size=max_size,
            compression=None,
            ping_interval=ping_interval,
            logger=ws_logger,
            proxy=None,
            **tls,
        )

    return await retrying(
        attempt, retry or RetryPolicy(), what=f"connect {redact(url)}", on_retry=on_retry
    )


async def close_quietly(ws: ClientConnection | None, timeout: float = 1.0) -> None:
    """Close ``ws`` without raising (it may be closed or broken already)."""
    if ws is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), timeout)
