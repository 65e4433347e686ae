"""tinyproxy, Debian's small HTTP proxy, run for a test as the proxy a provider's requests
go through: plain ``http`` requests are forwarded (it adds a ``Via`` header), ``https``
ones tunnelled with ``CONNECT``. Its log, read from its output, says what went through it.
``ci/system-packages.sh`` installs it."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.*)")


class Tinyproxy:
    """A tinyproxy listening on 127.0.0.1 (``url``) for as long as the test needs it."""

    def __init__(self, workdir: Path) -> None:
        executable = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not Path(executable).exists():
            raise RuntimeError("tinyproxy is not installed (ci/system-packages.sh installs it)")
        self.port = _free_port()
        config = workdir / "tinyproxy.conf"
        # No ConnectPort line: CONNECT may reach any port (the fake providers' are random).
        config.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\n"
            "MaxClients 64\nLogLevel Connect\n"
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [executable, "-d", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not _wait_for_port(self.port, self.process):
            self.close()
            raise RuntimeError(f"tinyproxy did not start: {self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read_log(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line.rstrip())
                self._changed.notify_all()

    def log(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def requests(self) -> list[str]:
        """The request lines it received (``CONNECT host:port HTTP/1.1``, ``GET http://...``)."""
        with self._changed:
            return self._requests()

    def wait_for_request(self, prefix: str, timeout: float = 5.0) -> bool:
        """Wait until a request line starting with ``prefix`` is in the log."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(r.startswith(prefix) for r in self._requests()), timeout
            )

    def _requests(self) -> list[str]:
        return [m.group(1) for line in self._lines if (m := _REQUEST.search(line))]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False
