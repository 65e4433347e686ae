"""Helpers shared by the tests."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path

from peers import need_program

from flowcat_ft.gcpolicy import GcPolicy

FREE_THREADED = not sys._is_gil_enabled()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (for state other threads change)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def reference_cycles(objects: Iterable[object]) -> list[list[object]]:
    """The reference cycles among ``objects``: each group of two or more that all reach
    each other, or one that refers to itself (Tarjan's strongly connected components,
    over ``gc.get_referents``).

    What a collection finds (``gc.DEBUG_SAVEALL``) is cyclic garbage and, on 3.13t,
    objects that another thread freed and that their maker has yet to free for good
    (biased reference counting): those form no cycle, and this tells them apart."""
    by_id = {id(obj): obj for obj in objects}
    edges = {
        i: [id(ref) for ref in gc.get_referents(obj) if id(ref) in by_id]
        for i, obj in by_id.items()
    }
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    found: list[list[object]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, start = work.pop()
            if start == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            for k in range(start, len(edges[node])):
                nxt = edges[node][k]
                if nxt not in index:
                    work += [(node, k + 1), (nxt, 0)]
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges[node]:
                        found.append([by_id[member] for member in group])
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return found


def never_collecting_policy() -> GcPolicy:
    """A gc policy that never collects: whatever garbage calls make stays, to be found."""
    return GcPolicy(threshold=1 << 62, idle_after=math.inf)


def cycles_of_ours() -> list[list[object]]:
    """The reference cycles a collection finds now (saving what it finds) that go through
    one of the project's objects: what ended calls must not leave behind."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        cycles = reference_cycles(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return [c for c in cycles if any(type(o).__module__.startswith("flowcat_ft") for o in c)]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """The status and text of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric_samples(text: str) -> dict[str, str]:
    """Prometheus text's samples by name and labels: ``{'flowcat_calls_active': '0', ...}``."""
    return dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def twilio_stream_url(port: int, call_sid: str) -> str:
    """What Twilio does before it streams: post the call to the server's webhook, and take
    the stream URL (with its stream token) from the TwiML answer."""
    form = urllib.parse.urlencode({"CallSid": call_sid}).encode()
    answer = f"http://127.0.0.1:{port}/twilio/answer"
    with urllib.request.urlopen(urllib.request.Request(answer, form), timeout=10) as reply:
        stream = ET.fromstring(reply.read()).find("./Connect/Stream")
    return stream.get("url")


def self_signed_certificate(where: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files in ``where``), made
    with the ``openssl`` command line."""
    openssl = need_program("openssl")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", key, "-out", cert, "-days", "2"),
            *("-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
