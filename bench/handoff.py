"""Thread hand-off: the SPSC ring and its doorbell against the standard library's queues.

One producer thread sends messages to one consumer thread through each channel:

- ``ring/<strategy>``: :class:`~flowcat_ft.rings.SpscRing` (capacity 1024) with a
  :class:`~flowcat_ft.waiting.Doorbell` of each wait strategy; the producer rings after each
  push, the consumer waits on the doorbell when the ring is empty; a full ring makes the
  producer yield (``os.sched_yield``) and retry;
- ``deque+Condition``: a ``collections.deque`` guarded by a ``threading.Condition``
  (append and notify; wait while empty);
- ``SimpleQueue``: ``queue.SimpleQueue`` (put; blocking get).

Each channel but SimpleQueue also runs batched (``/b32``): the producer sends 32 messages
at a time (``push_many``; ``extend`` under the lock) and the consumer takes up to 32 of
those waiting at once (``pop_many``; ``popleft`` under the lock).

Three measurements:

(a) throughput: the producer sends ``--messages`` ints unpaced; msgs/s is that count over
    the time until the consumer has them all (the fastest of ``--repeats`` runs);
(b) one-way latency, paced as 50 frames/s from each of N calls (N = 100 and 1,000: one
    message every 200 µs and every 20 µs) for ``--seconds``: each message carries
    ``time.perf_counter_ns()`` taken just before it is sent, and the consumer subtracts it
    from the time it gets the message. The producer sleeps until the next message is due
    and then sends every message due by then (:func:`bench._common.pace`), so at 20 µs
    spacing messages leave in small bursts, as from a transport thread serving many
    sockets. The first 2% of the samples (warm-up) are dropped;
(c) CPU seconds per million messages under that paced load: ``time.thread_time()`` of the
    producer and of the consumer thread over the run (the producer's share includes its
    pacing: sleeping is cheap, but each wake-up costs a little).

The verdict line says whether the ring with the best worst-case p99 beats SimpleQueue on
throughput and on p99 at both rates without more CPU per message, and which rings do.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench._common import finish, header, pace, parser, percentiles, table, thread_cpu
from flowcat_ft.rings import SpscRing
from flowcat_ft.waiting import STRATEGIES, Doorbell

CAPACITY = 1024
BATCH = 32
CALLS = (100, 1000)
FPS = 50
WARMUP = 0.02


# -- channels ------------------------------------------------------------------------------


class Channel:
    """One producer thread to one consumer thread.

    ``batch == 1``: the producer calls :meth:`send`, the consumer :meth:`receive`.
    ``batch > 1``: the producer calls :meth:`send_many`, the consumer :meth:`receive_many`
    (at most ``batch`` items). Both receives block until there is something to return.
    """

    name: str
    batch: int = 1

    def send(self, item: Any) -> None:
        raise NotImplementedError

    def receive(self) -> Any:
        raise NotImplementedError

    def send_many(self, items: list[Any]) -> None:
        raise NotImplementedError

    def receive_many(self) -> list[Any]:
        raise NotImplementedError


def _suffix(batch: int) -> str:
    return f"/b{batch}" if batch > 1 else ""


class RingChannel(Channel):
    def __init__(self, strategy: str, batch: int) -> None:
        self.name = f"ring/{strategy}{_suffix(batch)}"
        self.batch = batch
        self.ring = SpscRing(CAPACITY)
        self.doorbell = Doorbell(strategy)
        ring = self.ring
        self._has_work: Callable[[], bool] = lambda: len(ring) > 0

    def send(self, item: Any) -> None:
        while not self.ring.push(item):
            os.sched_yield()
        self.doorbell.ring()

    def receive(self) -> Any:
        ring = self.ring
        item = ring.pop()
        while item is None:
            self.doorbell.wait(self._has_work)
            item = ring.pop()
        return item

    def send_many(self, items: list[Any]) -> None:
        ring, doorbell = self.ring, self.doorbell
        while items:
            sent = ring.push_many(items)
            if sent:
                doorbell.ring()
                items = items[sent:]
            else:
                os.sched_yield()

    def receive_many(self) -> list[Any]:
        ring = self.ring
        items = ring.pop_many(self.batch)
        while not items:
            self.doorbell.wait(self._has_work)
            items = ring.pop_many(self.batch)
        return items


class DequeChannel(Channel):
    def __init__(self, batch: int) -> None:
        self.name = f"deque+Condition{_suffix(batch)}"
        self.batch = batch
        self.items: deque[Any] = deque()
        self.ready = threading.Condition()

    def send(self, item: Any) -> None:
        with self.ready:
            self.items.append(item)
            self.ready.notify()

    def receive(self) -> Any:
        with self.ready:
            while not self.items:
                self.ready.wait()
            return self.items.popleft()

    def send_many(self, items: list[Any]) -> None:
        with self.ready:
            self.items.extend(items)
            self.ready.notify()

    def receive_many(self) -> list[Any]:
        with self.ready:
            while not self.items:
                self.ready.wait()
            popleft = self.items.popleft
            return [popleft() for _ in range(min(len(self.items), self.batch))]


class SimpleQueueChannel(Channel):
    name = "SimpleQueue"

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The queue's own methods, bound: no Python call layer in between.
        self.send = self.queue.put
        self.receive = self.queue.get


def channel_makers() -> dict[str, Callable[[], Channel]]:
    """A factory per channel name, in the order they are reported."""
    factories: list[Callable[[], Channel]] = []
    for batch in (1, BATCH):
        factories += [partial(RingChannel, strategy, batch) for strategy in STRATEGIES]
        factories.append(partial(DequeChannel, batch))
    factories.append(SimpleQueueChannel)
    return {factory().name: factory for factory in factories}


# -- the two threads -----------------------------------------------------------------------


@dataclass
class Run:
    """What one producer/consumer run measured."""

    seconds: float = 0.0
    producer_cpu: float = 0.0
    consumer_cpu: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)


def blast(channel: Channel, count: int) -> None:
    """Send ``count`` ints as fast as the channel takes them."""
    items = list(range(count))
    if channel.batch == 1:
        send = channel.send
        for item in items:
            send(item)
    else:
        for i in range(0, count, channel.batch):
            channel.send_many(items[i : i + channel.batch])


def paced(interval_ns: int) -> Callable[[Channel, int], None]:
    """A producer sending one timestamp every ``interval_ns`` (paced by :func:`pace`)."""

    def produce(channel: Channel, count: int) -> None:
        now = time.perf_counter_ns
        if channel.batch == 1:
            send = channel.send

            def emit(first: int, n: int) -> None:
                for _ in range(n):
                    send(now())

        else:

            def emit(first: int, n: int) -> None:
                for i in range(0, n, channel.batch):
                    channel.send_many([now() for _ in range(min(channel.batch, n - i))])

        pace(count, interval_ns, emit)

    return produce


def consume(channel: Channel, count: int, latencies: list[int] | None) -> None:
    """Receive ``count`` messages; if ``latencies`` is a list, add each one's age to it."""
    now = time.perf_counter_ns
    got = 0
    if channel.batch == 1:
        receive = channel.receive
        while got < count:
            item = receive()
            if latencies is not None:
                latencies.append(now() - item)
            got += 1
    else:
        receive_many = channel.receive_many
        while got < count:
            items = receive_many()
            if latencies is not None:
                t = now()
                latencies.extend([t - sent for sent in items])
            got += len(items)


def run(channel: Channel, produce: Callable[[Channel, int], None], count: int, timed: bool) -> Run:
    """Run ``produce`` and :func:`consume` on two threads; ``timed``: record latencies."""
    result = Run()
    start = threading.Barrier(3)

    def producer() -> None:
        start.wait()
        cpu = thread_cpu()
        produce(channel, count)
        result.producer_cpu = thread_cpu() - cpu

    def consumer() -> None:
        start.wait()
        cpu = thread_cpu()
        consume(channel, count, result.latencies_ns if timed else None)
        result.consumer_cpu = thread_cpu() - cpu

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    threads[1].join()
    result.seconds = time.perf_counter() - began
    threads[0].join()
    return result


# -- the bench -----------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    header("handoff", args)
    messages = args.messages or (300_000 if args.quick else 2_000_000)
    seconds = args.seconds or (1.2 if args.quick else 5.0)
    repeats = args.repeats or (2 if args.quick else 3)
    makers = channel_makers()
    print(
        f"throughput: {messages:,} messages, best of {repeats}; latency and CPU: "
        f"{seconds:g} s paced per rate; batch {BATCH}\n"
    )

    throughput: dict[str, float] = {}
    latency_us: dict[str, dict[str, dict[str, float]]] = {str(n): {} for n in CALLS}
    cpu_per_m: dict[str, dict[str, float]] = {str(n): {} for n in CALLS}
    consumer_cpu_per_m: dict[str, dict[str, float]] = {str(n): {} for n in CALLS}
    for name, make in makers.items():
        runs = [run(make(), blast, messages, timed=False) for _ in range(repeats)]
        throughput[name] = round(messages / min(r.seconds for r in runs))
        for calls in CALLS:
            interval_ns = 10**9 // (FPS * calls)
            count = int(seconds * 1e9) // interval_ns
            r = run(make(), paced(interval_ns), count, timed=True)
            stats = percentiles(r.latencies_ns[int(count * WARMUP) :], scale=1e-3)
            latency_us[str(calls)][name] = {k: round(v, 1) for k, v in stats.items()}
            cpu_per_m[str(calls)][name] = round((r.producer_cpu + r.consumer_cpu) / count * 1e6, 2)
            consumer_cpu_per_m[str(calls)][name] = round(r.consumer_cpu / count * 1e6, 2)

    headers = ["channel", "msgs/s"]
    for calls in CALLS:
        headers += [f"p50@{calls}", f"p99@{calls}", f"p99.9@{calls}", f"cpu@{calls}"]
    rows = []
    for name in makers:
        row: list[object] = [name, float(throughput[name])]
        for calls in CALLS:
            lat = latency_us[str(calls)][name]
            row += [lat["p50"], lat["p99"], lat["p99.9"], cpu_per_m[str(calls)][name]]
        rows.append(row)
    print(table(headers, rows))
    print(
        "\nlatency in us (one-way, paced at 50 fps x calls); cpu = CPU seconds per million "
        "messages, producer + consumer threads"
    )
    verdict, line = judge(throughput, latency_us, cpu_per_m)
    print(line)
    finish(
        {
            "bench": "handoff",
            "messages": messages,
            "paced_seconds": seconds,
            "batch": BATCH,
            "throughput_msgs_per_s": throughput,
            "latency_us": latency_us,
            "cpu_s_per_million": cpu_per_m,
            "consumer_cpu_s_per_million": consumer_cpu_per_m,
            "verdict": verdict,
        },
        args,
    )


def judge(
    throughput: dict[str, float],
    latency_us: dict[str, dict[str, dict[str, float]]],
    cpu_per_m: dict[str, dict[str, float]],
) -> tuple[dict[str, object], str]:
    """Compare each ring with SimpleQueue; single out the one with the best worst-case p99.

    A ring beats SimpleQueue if it moves more msgs/s unpaced, has a lower p99 at every
    paced rate, and uses no more CPU per message at every paced rate.
    """
    base = "SimpleQueue"
    rates = [str(n) for n in CALLS]

    def criteria(name: str) -> tuple[bool, bool, bool]:
        return (
            throughput[name] > throughput[base],
            all(latency_us[r][name]["p99"] < latency_us[r][base]["p99"] for r in rates),
            all(cpu_per_m[r][name] <= cpu_per_m[r][base] for r in rates),
        )

    rings = [name for name in throughput if name.startswith("ring/")]
    winners = [name for name in rings if all(criteria(name))]
    best = min(rings, key=lambda name: max(latency_us[r][name]["p99"] for r in rates))
    faster, lower_p99, cheaper = criteria(best)
    p99s = ", ".join(
        f"{latency_us[r][best]['p99']:g} vs {latency_us[r][base]['p99']:g} us at {r} calls"
        for r in rates
    )
    cpus = ", ".join(f"{cpu_per_m[r][best]:g} vs {cpu_per_m[r][base]:g}" for r in rates)
    line = (
        f"\nverdict: best ring by p99, {best}, {'BEATS' if best in winners else 'does NOT beat'} "
        f"{base}: throughput {throughput[best] / throughput[base]:.2f}x ({_yes(faster)}); "
        f"p99 {p99s} ({_yes(lower_p99)}); CPU s/M msgs {cpus} ({_yes(cheaper)}). "
        f"Rings that beat it on all three: {', '.join(winners) or 'none'}"
    )
    verdict = {
        "best_ring": best,
        "beats_simplequeue": best in winners,
        "higher_throughput": faster,
        "lower_p99": lower_p99,
        "no_more_cpu": cheaper,
        "rings_beating_simplequeue": winners,
    }
    return verdict, line


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--messages", type=int, help="unpaced messages (default 2M; quick 300k)")
    p.add_argument("--seconds", type=float, help="paced seconds per rate (default 5; quick 1.2)")
    p.add_argument("--repeats", type=int, help="throughput runs per channel (default 3; quick 2)")
    main(p.parse_args())
