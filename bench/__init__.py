"""Benchmarks for flowcat-ft, each runnable as ``python -m bench.<name>`` from the repo root.

- :mod:`bench.routing`: µs per frame per processor hop through a no-op pipeline;
- :mod:`bench.handoff`: the SPSC ring and its doorbell against ``queue.SimpleQueue`` and a
  deque with a condition variable (throughput, paced latency, CPU per message);
- :mod:`bench.scaling`: a CPU-bound audio workload on 1 and 2 threads, on 3.13t and on the
  GIL build side by side;
- :mod:`bench.memory`: bytes per idle call, and CPU used by an idle runtime;
- :mod:`bench.gcpause`: tail hop latency with the runtime's GC policy and with default gc.

Every bench takes ``--quick`` (under a minute) and ends its output with one JSON line;
shared helpers live in :mod:`bench._common`. See ``bench/README.md``.
"""
