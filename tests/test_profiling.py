"""Profiling on demand: each stage thread writes its own profile (in a subprocess, since
importing pyinstrument turns the GIL on for the whole process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
from peers import missing


# Look for pyinstrument without importing it: importing it here would turn the GIL on for
# every test that runs after this one in the same process.
@pytest.fixture(autouse=True)
def _pyinstrument():
    if importlib.util.find_spec("pyinstrument") is None:
        missing("pyinstrument is not installed", "the profile extra; ci/venvs.sh installs it")


SCRIPT = textwrap.dedent(
    """
    import sys
    from flowcat_ft import FrameProcessor, Pipeline, Runtime, TextFrame
    with Runtime(threads=2, profile_dir=sys.argv[1]) as runtime:
        call = runtime.open_call(Pipeline([FrameProcessor] * 4, threads=2))
        for i in range(2000):
            call.push(TextFrame(str(i)))
        call.end()
        assert len(list(call.frames(timeout=10))) == 2002
    """
)


def test_each_stage_thread_writes_a_profile(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "flowcat-p0.0-s0.html",
        "flowcat-p0.0-s0.txt",
        "flowcat-p0.0-s1.html",
        "flowcat-p0.0-s1.txt",
    ]
    assert "_loop" in (tmp_path / "flowcat-p0.0-s0.txt").read_text()
