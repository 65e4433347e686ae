"""The echo benchmark kit: a native load generator against flowcat-ft, its GIL twin,
pipecat and a bare websockets floor, in one run (``python -m bench.echo``; see README.md).

Modules: :mod:`~bench.echo.loadgen` builds and runs ``bench/loadgen/loadgen.c``;
:mod:`~bench.echo.servers` starts the servers under test and watches their CPU and memory;
``flowcat_server``, ``floor_server`` and ``pipecat_server`` are those servers (each run in
its own venv, so this package imports nothing at import time); :mod:`~bench.echo.report`
writes the table and :mod:`~bench.echo.plot` the PNG.
"""
