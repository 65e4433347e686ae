"""What every server under test shares: its command line, a file-descriptor limit high
enough for thousands of calls, and the ``ready`` handshake with the kit.

Imports only the standard library: the pipecat server runs in a venv without flowcat-ft.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import threading


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


def serve_until_stopped(description: str) -> None:
    """Tell the kit the server is listening (a ``ready`` line on stdout), then block until
    SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready {description}", flush=True)
    stop.wait()
    sys.stdout.flush()
