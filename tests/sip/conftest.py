"""A SIP server on loopback for each test, and a SIPp phone to call (the helpers both use
are in :mod:`sip_helpers`)."""

from __future__ import annotations

import socket
import subprocess

import pytest
from peers import need_program
from sip_helpers import SCENARIOS, free_port

from flowcat_ft import Pipeline, Runtime
from flowcat_ft.gcpolicy import GcPolicy
from flowcat_ft.transports.session import MediaOptions
from flowcat_ft.transports.sip import SipOptions, SipServer


@pytest.fixture
def sip_server():
    """``sip_server(pipeline, **SipOptions fields)``: a started server on 127.0.0.1
    (``gc_policy``: its runtime's, the default if None)."""
    started: list[tuple[Runtime, SipServer]] = []

    def start(
        pipeline: Pipeline,
        *,
        max_calls: int | None = None,
        gc_policy: GcPolicy | None = None,
        **options,
    ) -> SipServer:
        runtime = Runtime(threads=1, slabs=1024, max_calls=max_calls, gc_policy=gc_policy)
        low = free_port(even=True) // 2 * 2
        options.setdefault("rtp_ports", (low, low + 40))
        server = SipServer(
            runtime,
            pipeline,
            SipOptions(host="127.0.0.1", port=0, **options),
            media=MediaOptions(sample_rate=None),
        )
        started.append((runtime, server.start()))
        return server

    yield start
    for runtime, server in started:
        server.stop(grace=0)
        runtime.stop()


@pytest.fixture
def phone():
    """``phone(scenario, transport="u1")``: a SIPp UAS on a free port (UDP, or TCP with
    ``"t1"``), echoing RTP; yields its URI."""
    started: list[subprocess.Popen] = []

    def start(scenario: str, transport: str = "u1") -> tuple[str, subprocess.Popen]:
        kind = socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM
        port, media = free_port(kind), free_port(even=True)
        command = [
            need_program("sipp"), "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1",
            "-p", str(port), "-mp", str(media), "-rtp_echo", "-m", "1", "-nostdin",
            "-timeout", "30s", "-timeout_error", "-t", transport,
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        return f"sip:+15551234@127.0.0.1:{port}", process

    yield start
    for process in started:
        process.kill()
        process.wait()
