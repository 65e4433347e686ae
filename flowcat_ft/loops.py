"""Event-loop threads: each runs one asyncio loop, for network I/O beside the stage threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from functools import partial
from typing import Any

from flowcat_ft.aio import LoopBridge
from flowcat_ft.call import Inbox


class EventLoopThread:
    """An asyncio event loop running on its own OS thread.

    Coroutines are handed to it from any thread with :meth:`submit`; stage threads hand it
    output frames through its :attr:`bridge`, one wake-up per batch. Code running on the
    loop pushes calls' input through its :attr:`inbox`, handed to the stage threads once
    per loop turn.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.bridge = LoopBridge(self.loop)
        self.inbox = Inbox(partial(self.loop.call_soon, self._flush_inbox))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def _flush_inbox(self) -> None:
        self.inbox.flush()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future:
        """Run ``coro`` on this loop; returns a :class:`concurrent.futures.Future`."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the loop's tasks, stop it and join its thread."""
        if self.loop.is_closed() or not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(cancel_all()).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
