"""A missing peer skips its test on a developer's machine and fails it in CI, where
``ci/test.sh`` requires peers; and CI installs every peer the tests name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from peers import DEBIAN_PACKAGES, REQUIRE_ENV

TESTS = Path(__file__).parent
ROOT = TESTS.parent

NEEDS_A_PEER = """
from peers import missing

def test_talks_to_a_frobnicator():
    missing("frobnicator is not installed", "apt-get install frobnicator")
"""


def run_pytest(folder: Path, *, required: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    env["PYTHONPATH"] = str(TESTS)
    if required:
        env[REQUIRE_ENV] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "-n0"]
    return subprocess.run(
        [*command, "test_needs_a_peer.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_peer_skips_here_and_fails_where_peers_are_required(tmp_path):
    (tmp_path / "test_needs_a_peer.py").write_text(NEEDS_A_PEER)
    message = "frobnicator is not installed (apt-get install frobnicator)"

    relaxed = run_pytest(tmp_path, required=False)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "1 skipped" in relaxed.stdout and message in relaxed.stdout

    strict = run_pytest(tmp_path, required=True)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "1 failed" in strict.stdout and message in strict.stdout
    assert f"{REQUIRE_ENV}=1 makes a missing peer a failure" in strict.stdout


def test_ci_requires_peers_and_installs_every_one():
    assert re.search(rf"^export {REQUIRE_ENV}=1$", (ROOT / "ci" / "test.sh").read_text(), re.M)
    script = (ROOT / "ci" / "system-packages.sh").read_text()
    listed = set(
        re.findall(r"[\w.+-]+", " ".join(re.findall(r"needed(?:\+)?=\(([^)]*)\)", script)))
    )
    assert set(DEBIAN_PACKAGES.values()) <= listed
