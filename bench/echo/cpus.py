"""Which CPUs a run uses: ``--cpus SERVER[:LOADGEN]`` lists, the ``--scaling`` ladder, and
starting a process pinned to a list.

CPU lists are written as the kernel and ``taskset -c`` write them: ``0-3,8``. A process is
pinned by starting it from a thread pinned for the moment (:func:`pinned`): the child, and
every thread and process it starts, inherit the CPUs, so no thread of a server escapes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Setup:
    """Where one pass over the rows and points runs: the servers' CPUs and the load
    generator's (None: not pinned, any CPU the kit may use)."""

    server: tuple[int, ...] | None = None
    loadgen: tuple[int, ...] | None = None

    @property
    def cores(self) -> int:
        """How many CPUs the servers get; each server is sized to them."""
        return len(self.server or available())

    def describe(self) -> str:
        return f"servers on {where(self.server)}, load generator on {where(self.loadgen)}"


def available() -> tuple[int, ...]:
    """The CPUs the kit may run on, in order."""
    return tuple(sorted(os.sched_getaffinity(0)))


def parse_list(spec: str) -> tuple[int, ...]:
    """``"0-2,5"`` → ``(0, 1, 2, 5)``; ValueError if it names none."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    if not cpus:
        raise ValueError(f"no CPU in {spec!r}")
    return tuple(sorted(cpus))


def text(cpus: Sequence[int]) -> str:
    """``(0, 1, 2, 5)`` → ``"0-2,5"``."""
    spans: list[list[int]] = []
    for cpu in sorted(cpus):
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def where(cpus: Sequence[int] | None) -> str:
    """``"CPUs 0-1"``, or ``"any CPU"`` for None."""
    return "any CPU" if cpus is None else f"CPUs {text(cpus)}"


def parse_setup(spec: str) -> Setup:
    """``--cpus SERVER[:LOADGEN]`` (``"0-1:1"``, ``"0,1"``) as a :class:`Setup`; an argparse
    type, so a bad list stops the run before anything starts."""
    server, _, loadgen = spec.partition(":")
    try:
        setup = Setup(parse_list(server), parse_list(loadgen) if loadgen else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not SERVER[:LOADGEN] CPU lists: {spec!r}") from None
    missing = set(setup.server or ()).union(setup.loadgen or ()) - set(available())
    if missing:
        raise argparse.ArgumentTypeError(
            f"CPU {text(sorted(missing))} is not available (here: {text(available())})"
        )
    return setup


def parse_counts(spec: str) -> list[int]:
    """``--scaling N,N,...`` (``"1,2,4,8,12"``); an argparse type, which refuses a ladder
    with no step the machine has."""
    try:
        counts = [int(n) for n in spec.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of core counts: {spec!r}") from None
    if not 1 <= min(counts) <= len(available()):
        raise argparse.ArgumentTypeError(f"{spec!r}: the kit may use {len(available())} CPUs")
    return counts


def ladder(counts: Sequence[int]) -> list[Setup]:
    """For each count the machine has, the servers on its first that many CPUs, and the
    load generator on the last CPU if they leave it free (else not pinned)."""
    cpus = available()
    return [Setup(cpus[:n], cpus[-1:] if n < len(cpus) else None) for n in counts if n <= len(cpus)]


@contextmanager
def pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the block on ``cpus`` (None: leave it be), so that what it starts inherits them.

    Affinity belongs to a thread: this pins the calling thread alone, for the block only.
    """
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
