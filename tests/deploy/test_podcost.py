"""`flowcat-ft pod-cost`, the sidecar that keeps a pod's deletion cost at its number of
calls, against a real server and a local fake of the Kubernetes API (which records each
PATCH, and can refuse one as RBAC would)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websockets
from carrier_messages import twilio_start
from fleet import FLOWCAT, ROOT
from helpers import wait_until

from flowcat_ft.server.podcost import ANNOTATION, KubernetesAPI, PodDeletionCost

TOKEN = "service-account-token"


class FakeKubernetes:
    """Answers PATCHes of pods as the API server would, recording each; refuses the next
    ``refuse`` of them with 403."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, str], dict]] = []
        self.refuse = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 200
                if fake.refuse:
                    fake.refuse -= 1
                    status = 403
                else:
                    fake.patches.append((self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def costs(self) -> list[str]:
        return [body["metadata"]["annotations"][ANNOTATION] for _, _, body in self.patches]


@pytest.fixture
def kubernetes():
    fake = FakeKubernetes()
    yield fake
    fake.http.shutdown()


async def hold_a_call(port: int, until) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/twilio") as ws:
        await ws.send(twilio_start())
        assert await asyncio.to_thread(until)


def test_the_cost_follows_the_calls_and_survives_a_refusal(serve, kubernetes, caplog):
    server = serve()
    updater = PodDeletionCost(
        KubernetesAPI(kubernetes.url, TOKEN),
        "voice",
        "flowcat-ft-7d9c-abcde",
        f"http://127.0.0.1:{server.port}/metrics",
        min_interval=0,
    )
    assert updater.step() == 0
    assert updater.step() is None  # unchanged: no patch
    kubernetes.refuse = 1

    async def call() -> list[int | None]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            assert await asyncio.to_thread(wait_until, lambda: len(server.runtime.calls) == 1)
            return [await asyncio.to_thread(updater.step) for _ in range(2)]

    assert asyncio.run(call()) == [None, 1]  # refused (403), then patched
    assert "403 Forbidden (does its Role allow patch on pods?)" in caplog.text
    assert wait_until(lambda: server.runtime.calls == [])
    assert updater.step() == 0
    assert kubernetes.costs() == ["0", "1", "0"]
    path, headers, _ = kubernetes.patches[0]
    assert path == "/api/v1/namespaces/voice/pods/flowcat-ft-7d9c-abcde"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/merge-patch+json"


def test_patches_are_spaced_by_the_minimum_interval(serve, kubernetes):
    server = serve()
    updater = PodDeletionCost(
        KubernetesAPI(kubernetes.url, TOKEN),
        "voice",
        "pod",
        f"http://127.0.0.1:{server.port}/metrics",
        min_interval=3600,
    )
    assert updater.step() == 0

    async def call() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            assert await asyncio.to_thread(wait_until, lambda: len(server.runtime.calls) == 1)
            return await asyncio.to_thread(updater.step)

    assert asyncio.run(call()) is None  # changed, but too soon after the last patch
    assert kubernetes.costs() == ["0"]


def test_the_sidecar_command_patches_its_pod_and_stops_on_sigterm(serve, kubernetes, tmp_path):
    server = serve()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    sidecar = subprocess.Popen(
        [
            *FLOWCAT,
            "pod-cost",
            f"--port={server.port}",
            "--interval=0.05",
            "--min-interval=0",
            f"--api-server={kubernetes.url}",
            f"--token-file={token}",
        ],
        cwd=ROOT,
        env={**os.environ, "POD_NAME": "flowcat-ft-0", "POD_NAMESPACE": "voice"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: kubernetes.costs() == ["0"], 30)
        asyncio.run(hold_a_call(server.port, lambda: wait_until(lambda: "1" in kubernetes.costs())))
        assert wait_until(lambda: kubernetes.costs() == ["0", "1", "0"], 30)
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(30) == 0
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
            sidecar.wait()
    assert "keeping voice/flowcat-ft-0's controller.kubernetes.io/pod-deletion-cost" in (
        sidecar.stdout.read()
    )


def test_the_sidecar_says_what_it_is_missing():
    env = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "POD_NAMESPACE")}
    result = subprocess.run(
        [*FLOWCAT, "pod-cost"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "set POD_NAME and POD_NAMESPACE" in result.stderr
    result = subprocess.run(
        [*FLOWCAT, "pod-cost", "--api-server=http://127.0.0.1:1", "--token-file=/nonexistent"],
        cwd=ROOT,
        env={**env, "POD_NAME": "p", "POD_NAMESPACE": "n"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no service-account token at /nonexistent" in result.stderr
