"""Profiling the stage threads with pyinstrument, on demand.

pyinstrument's C extension does not declare free-threading support, so importing it turns
the GIL on for the whole process. This module is therefore imported only when a profile is
asked for (``Runtime(profile_dir=...)``, ``flowcat-ft serve --profile DIR``): profile in a
run of its own, never while measuring speed. ``-X gil=0`` keeps the GIL off at your own
risk. (py-spy, an external sampler, profiles a normal run without touching the GIL.)

pyinstrument samples the thread that started it, so each stage thread runs a profiler of
its own and writes ``<thread name>.html`` and ``.txt`` into the directory when it stops.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType


class ThreadProfiler:
    """Profiles the current thread between ``__enter__`` and ``__exit__``."""

    def __init__(self, directory: str | Path, name: str, interval: float = 0.0005) -> None:
        from pyinstrument import Profiler  # turns the GIL on: see the module docstring

        self.directory = Path(directory)
        self.name = name
        self._profiler = Profiler(interval=interval, async_mode="disabled")

    def __enter__(self) -> ThreadProfiler:
        self._profiler.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._profiler.stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._profiler.write_html(self.directory / f"{self.name}.html")
        (self.directory / f"{self.name}.txt").write_text(self._profiler.output_text())
