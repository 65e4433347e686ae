"""What every server under test shares: its command line, a file-descriptor limit high
enough for thousands of calls, its threads' names as the kit sees them, and the ``ready``
handshake with the kit.

Imports only the standard library: the pipecat server runs in a venv without flowcat-ft.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import threading
from types import FrameType
from typing import Any


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A parser with ``--port`` (required); the server adds its own options."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    return p


def raise_fd_limit() -> None:
    """Let this process open as many sockets as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def name_threads(main: str | None = None) -> None:
    """Give this thread (``main``, or its Python name) and every thread started from now on
    their Python names in the OS too: the kit's per-thread breakdown reads
    ``/proc/PID/task/TID/comm``, which CPython sets itself only from 3.14 (before, every
    thread bears the executable's name, as native threads such as OpenBLAS's still do)."""
    _name_os_thread(main or threading.current_thread().name)
    threading.setprofile(_named_on_start)


def _named_on_start(frame: FrameType, event: str, arg: Any) -> None:
    """A profile hook that runs once, as a new thread starts: names it, then goes."""
    sys.setprofile(None)
    _name_os_thread(threading.current_thread().name)


def _name_os_thread(name: str) -> None:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write(name[:15])  # the kernel keeps 15 bytes


def serve_until_stopped(description: str) -> None:
    """Tell the kit the server is listening (a ``ready`` line on stdout), then block until
    SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready {description}", flush=True)
    stop.wait()
    sys.stdout.flush()
