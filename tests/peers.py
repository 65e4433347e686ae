"""The real peers the tests talk to, and what a test does when one is missing.

A peer is a program from Debian (espeak-ng, a browser, SIPp, baresip, Kamailio...) or an
interpreter set up by ``ci/venvs.sh`` (the GIL twin with PocketSphinx or aiortc). Tests ask
for one with :func:`need_program`, or report one missing with :func:`missing`:

- on a developer's machine the test is skipped, saying what to install;
- where ``FLOWCAT_REQUIRE_PEERS=1`` (``ci/test.sh`` sets it) the test fails instead, so a
  CI machine without a peer cannot pass by skipping the tests that need it.

Skips that are not about a missing peer (a test that means nothing on this interpreter,
such as keeping the GIL off on the GIL build) use ``pytest.skip`` or ``skipif`` directly.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

REQUIRE_ENV = "FLOWCAT_REQUIRE_PEERS"

DEBIAN_PACKAGES = {
    "espeak-ng": "espeak-ng",
    "sox": "sox",
    "chromium": "chromium",
    "firefox-esr": "firefox-esr",
    "pulseaudio": "pulseaudio",
    "sipp": "sip-tester",
    "baresip": "baresip",
    "kamailio": "kamailio",
    "sipsak": "sipsak",
    "openssl": "openssl",
}
"""The Debian package of each program a test may need (``ci/system-packages.sh`` installs
every one of them)."""


def peers_required() -> bool:
    """Whether a missing peer fails the test rather than skipping it."""
    return os.environ.get(REQUIRE_ENV) == "1"


def missing(what: str, remedy: str) -> NoReturn:
    """Skip the test, or fail it where peers are required: *what* is missing, and
    *remedy* says how to get it."""
    message = f"{what} ({remedy})"
    if peers_required():
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes a missing peer a failure", pytrace=False)
    pytest.skip(message)


def need_program(name: str, *aliases: str) -> str:
    """The path of the program *name* (or the first of its *aliases* found on ``PATH``),
    or :func:`missing` naming the Debian package that has it."""
    for program in (name, *aliases):
        path = shutil.which(program)
        if path is not None:
            return path
    package = DEBIAN_PACKAGES[name]
    missing(
        f"{name} is not installed",
        f"apt-get install {package}; ci/system-packages.sh installs it",
    )
