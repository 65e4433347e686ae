"""Headless browsers for the tests, driven over their remote-control WebSocket.

:class:`Chromium` (Debian's ``chromium``; ``ci/system-packages.sh`` installs it) speaks the
DevTools protocol (CDP): it starts with a fake microphone that plays a WAV file, media
permission granted and autoplay allowed; the DevTools port is read from
``DevToolsActivePort`` in its profile folder, and one connection to the browser carries
every command, pages being targets attached in flat mode. :class:`Firefox` (``firefox-esr``,
when installed) speaks WebDriver BiDi; its fake microphone plays a tone. Both hand out
:class:`Page`\\ s with the same methods::

    with Chromium(microphone=wav) as browser:
        page = browser.open("http://127.0.0.1:8765/?autostart=ws")
        assert wait_until(page.poll("playground.state === 'connected'"))
        page.screenshot(path)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import wait_until
from peers import need_program
from websockets.sync.client import connect

__all__ = ["Browser", "BrowserError", "Chromium", "Firefox", "Page", "need_chromium"]


def need_chromium() -> str:
    """The chromium executable (see :func:`peers.need_program`)."""
    return need_program("chromium", "chromium-browser")


class BrowserError(Exception):
    """A command failed, or a page's script threw."""


class Browser:
    """A browser process and its remote-control connection; a context manager.

    Subclasses give the command line, the file in the profile folder that says where to
    connect once the browser listens (:meth:`_endpoint`), and how the protocol opens pages
    and reports results. Commands are JSON objects numbered by ``id``; :meth:`send` runs
    one and returns its result, passing events that arrive meanwhile to their page.
    """

    name: str

    def __init__(
        self, args: list[str], profile: Path, timeout: float, env: dict[str, str] | None = None
    ) -> None:
        self.profile = profile
        self.timeout = timeout
        self.log_path = profile / "browser.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self._next_id = 0
        self._pages: dict[str, Page] = {}
        self._connection = contextlib.ExitStack()  # the WebSocket, once open
        try:
            url = None

            def listening() -> bool:
                nonlocal url
                if self.process.poll() is not None:
                    raise BrowserError(f"{self.name} exited:\n{self.log_tail()}")
                url = self._endpoint()
                return url is not None

            if not wait_until(listening, timeout):
                raise BrowserError(f"{self.name} opened no control port:\n{self.log_tail()}")
            self._ws = self._connection.enter_context(
                connect(url, max_size=None, open_timeout=timeout)
            )
        except BaseException:
            self.close()
            raise

    def _endpoint(self) -> str | None:
        """The WebSocket URL to connect to, once the browser has written it down."""
        raise NotImplementedError

    def log_tail(self, lines: int = 30) -> str:
        """The end of the browser's own output, for failure messages."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def send(self, method: str, params: dict | None = None, **fields: Any) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}, **fields}
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply.get('message') or reply['error']}")
                return reply["result"]
            if "method" in reply:
                self._event(reply)

    def _event(self, message: dict) -> None:
        """An event the browser sent."""

    def open(self, url: str) -> Page:
        """A page showing *url*."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the browser and remove its profile."""
        if hasattr(self, "_ws"):
            with contextlib.suppress(Exception):  # gone already? it is ended below anyway
                self._quit()
        self._connection.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _quit(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Page:
    """One tab. ``console`` collects its console messages, ``errors`` uncaught exceptions."""

    def __init__(self, browser: Browser, key: str) -> None:
        self.browser = browser
        self.key = key  # the protocol's name for the tab: a CDP session, a BiDi context
        self.console: list[str] = []
        self.errors: list[str] = []

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression, as JSON would carry it (a promise is
        awaited)."""
        raise NotImplementedError

    def poll(self, expression: str, every: float = 0.1) -> Callable[[], Any]:
        """A predicate for ``wait_until``: *expression*'s value, evaluated at most once per
        *every* seconds (each call is a round trip to the browser)."""

        def predicate() -> Any:
            time.sleep(every)
            return self.evaluate(expression)

        return predicate

    def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the page to *path*; returns its bytes."""
        data = base64.b64decode(self._screenshot())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def _screenshot(self) -> str:
        raise NotImplementedError

    def report(self) -> str:
        """What the page logged, for failure messages."""
        return "\n".join(["console:", *self.console, "errors:", *self.errors])


# -- Chromium: the DevTools protocol --------------------------------------------------------


class Chromium(Browser):
    """Headless Chromium. *microphone*: a WAV file its fake microphone plays once (then
    silence)."""

    name = "chromium"

    def __init__(self, *, microphone: Path | None = None, timeout: float = 30.0) -> None:
        profile = Path(tempfile.mkdtemp(prefix="flowcat-chromium-"))
        args = [
            need_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            # WebRTC offers the loopback address rather than an mDNS name nobody resolves.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--window-size=900,1000",
        ]
        if microphone is not None:
            args.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
        super().__init__(args, profile, timeout)

    def _endpoint(self) -> str | None:
        active = self.profile / "DevToolsActivePort"
        lines = active.read_text().split() if active.exists() else []
        if len(lines) != 2:  # the port, then the browser's path
            return None
        port, path = lines
        return f"ws://127.0.0.1:{port}{path}"

    def _event(self, message: dict) -> None:
        page = self._pages.get(message.get("sessionId", ""))
        if page is None:
            return
        params = message.get("params", {})
        if message["method"] == "Runtime.consoleAPICalled":
            args = params["args"]
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in args)
            page.console.append(f"{params['type']}: {text}")
        elif message["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            page.errors.append(details.get("exception", {}).get("description", details["text"]))

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = self._pages[session["sessionId"]] = ChromiumPage(self, session["sessionId"])
        page.send("Runtime.enable")
        page.send("Page.enable")
        page.send("Page.navigate", {"url": url})
        return page

    def _quit(self) -> None:
        self.send("Browser.close")


class ChromiumPage(Page):
    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, sessionId=self.key)

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description", details["text"]))
        return result["result"].get("value")

    def _screenshot(self) -> str:
        return self.send("Page.captureScreenshot", {"format": "png"})["data"]


# -- Firefox: WebDriver BiDi -----------------------------------------------------------------

# A fake microphone (a tone), no permission prompt, sound without a click.
_FIREFOX_PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.block-webaudio": False,
}


class Firefox(Browser):
    """Headless Firefox ESR, with a PulseAudio server of its own: Firefox runs Web Audio
    only with a sound device to play to, here a null sink. Needs both installed
    (see :func:`peers.need_program`)."""

    name = "firefox"

    def __init__(self, *, timeout: float = 30.0) -> None:
        executable = need_program("firefox-esr", "firefox")
        pulseaudio = need_program("pulseaudio")
        profile = Path(tempfile.mkdtemp(prefix="flowcat-firefox-"))
        prefs = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in _FIREFOX_PREFS.items()]
        (profile / "user.js").write_text("\n".join(prefs) + "\n")
        env = {**os.environ, "HOME": str(profile), "PULSE_RUNTIME_PATH": str(profile / "pulse")}
        socket = profile / "pulse.sock"
        self._pulse = subprocess.Popen(
            [
                *(pulseaudio, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no"),
                *("-L", "module-null-sink"),
                *("-L", f"module-native-protocol-unix auth-anonymous=1 socket={socket}"),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(socket.exists, timeout):
            self._pulse.kill()
            self._pulse.wait()
            shutil.rmtree(profile, ignore_errors=True)
            raise BrowserError("pulseaudio did not start")
        args = [executable, "--headless", "--no-remote", "--profile", str(profile)]
        args += ["--remote-debugging-port=0", "about:blank"]
        super().__init__(args, profile, timeout, {**env, "PULSE_SERVER": f"unix:{socket}"})
        self.send("session.new", {"capabilities": {}})
        self.send("session.subscribe", {"events": ["log.entryAdded"]})

    def close(self) -> None:
        super().close()
        self._pulse.terminate()
        self._pulse.wait()

    def _endpoint(self) -> str | None:
        written = self.profile / "WebDriverBiDiServer.json"
        try:
            server = json.loads(written.read_text())
        except (OSError, ValueError):
            return None  # not yet, or half written
        return f"ws://{server['ws_host']}:{server['ws_port']}/session"

    def _event(self, message: dict) -> None:
        params = message.get("params", {})
        page = self._pages.get(params.get("source", {}).get("context", ""))
        if page is not None and message["method"] == "log.entryAdded":
            entry = f"{params.get('level')}: {params.get('text')}"
            uncaught = params.get("type") == "javascript" and params.get("level") == "error"
            (page.errors if uncaught else page.console).append(entry)

    def open(self, url: str) -> Page:
        context = self.send("browsingContext.getTree")["contexts"][0]["context"]
        page = self._pages[context] = FirefoxPage(self, context)
        self.send("browsingContext.navigate", {"context": context, "url": url, "wait": "none"})
        return page

    def _quit(self) -> None:
        self.send("browser.close")


class FirefoxPage(Page):
    def evaluate(self, expression: str) -> Any:
        # BiDi returns typed remote values: let the page serialize the value as JSON.
        result = self.browser.send(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.key},
                "awaitPromise": True,
            },
        )
        if result["type"] == "exception":
            raise BrowserError(result["exceptionDetails"]["text"])
        value = result["result"]
        return json.loads(value["value"]) if value["type"] == "string" else None

    def _screenshot(self) -> str:
        return self.browser.send("browsingContext.captureScreenshot", {"context": self.key})["data"]
