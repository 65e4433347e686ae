"""The HAProxy recipe (deploy/haproxy/haproxy.cfg) with real HAProxy and three real
`flowcat-ft serve` processes on loopback, callers streaming through it: a full server
leaves rotation and new calls land elsewhere while its own go on; a draining server takes
no new call, its call goes on to the end and it exits 0; a killed server ends only its own
calls; with every server full a new caller is refused at once; a call refused between two
health checks is retried on another server. Each prints what it measured (pytest -s).
And the recipe's files keep their promises: the tunnel outlasts the drain, and so does the
unit's stop."""

from __future__ import annotations

import asyncio
import configparser
import re
import shlex
import signal
import subprocess
import time

import pytest
import websockets
from fleet import ROOT, Caller, HAProxy, Served
from helpers import wait_until
from websockets.exceptions import InvalidStatus

from flowcat_ft.cli import command_line
from flowcat_ft.server.config import load_config

pytestmark = pytest.mark.xdist_group("fleet")

RECIPE = ROOT / "deploy" / "haproxy"
GRACE = load_config(RECIPE / "agent.yaml").limits.shutdown_grace


def haproxy_directives() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in HAProxy.CONFIG.read_text().splitlines())
    return [line for line in lines if line]


def seconds(value: str) -> float:
    """An HAProxy or systemd duration (``250ms``, ``2h``, ``3660``) in seconds."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?", value).groups()
    scale = {None: 1, "ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    return float(number) * scale[unit]


def test_the_haproxy_recipe_is_valid_and_outlasts_the_drain():
    check = subprocess.run(["haproxy", "-c", "-f", str(HAProxy.CONFIG)], capture_output=True)
    assert check.returncode == 0, check.stderr
    directives = haproxy_directives()
    value = {head: tail for head, _, tail in (line.rpartition(" ") for line in directives)}
    assert GRACE >= 3600  # a fleet's drain lets calls run on (the recipe says an hour)
    assert seconds(value["timeout tunnel"]) > GRACE  # a call is never cut for idling
    assert seconds(value["hard-stop-after"]) > GRACE  # nor by a reload of HAProxy
    assert "balance leastconn" in directives
    assert "option httpchk GET /ready" in directives
    assert "http-check expect status 200" in directives
    assert "503" in value["retry-on conn-failure empty-response"].split()
    # A server marked down keeps its live calls.
    assert not [line for line in directives if "shutdown-sessions" in line]


def test_the_unit_gives_the_drain_its_time():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(RECIPE / "flowcat-ft.service")
    service = unit["Service"]
    assert seconds(service["TimeoutStopSec"]) > GRACE
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the server alone, not its workers
    program, *argv = shlex.split(service["ExecStart"])
    assert program.endswith("/flowcat-ft")
    args = command_line().parse_args(argv)
    assert args.command == "serve" and args.config == "/etc/flowcat-ft/agent.yaml"


@pytest.fixture
def fleet(tmp_path):
    """``fleet(limits, limits, ..., checks=True)``: one server per ``limits`` (the config's
    limits section), named s0, s1..., and HAProxy in front of them, every server UP."""
    started: list[Served | HAProxy] = []

    def start(*limits: str, checks: bool = True) -> tuple[list[Served], HAProxy]:
        servers = [Served(tmp_path, spec, name=f"s{i}") for i, spec in enumerate(limits)]
        started.extend(servers)
        proxy = HAProxy(tmp_path, {f"s{i}": s.port for i, s in enumerate(servers)}, checks=checks)
        started.append(proxy)
        names = [f"s{i}" for i in range(len(servers))]
        assert wait_until(lambda: all(proxy.status(n) in ("UP", "no check") for n in names), 30)
        return servers, proxy

    yield start
    for process in reversed(started):
        process.close()


async def until(predicate, timeout: float = 30) -> bool:
    return await asyncio.to_thread(wait_until, predicate, timeout)


def down(proxy: HAProxy, servers: int) -> int:
    """How many of the servers HAProxy has taken out of rotation."""
    return sum(proxy.status(f"s{i}") == "DOWN" for i in range(servers))


def up(proxy: HAProxy, servers: int) -> int:
    """How many of the servers HAProxy has in rotation, and steadily ("UP 1/2" is not:
    it is on its way down)."""
    return sum(proxy.status(f"s{i}") == "UP" for i in range(servers))


def calls_on(servers: list[Served]) -> list[int]:
    return [server.calls() for server in servers]


async def one_call_each(proxy: HAProxy, servers: list[Served]) -> list[Caller]:
    """A call on every server (least connections spreads them), streaming; the callers in
    the servers' order."""
    callers = [await Caller.dial(proxy.url()) for _ in servers]
    assert calls_on(servers) == [1] * len(servers)
    for caller in callers:
        caller.stream()
    return callers


def test_full_servers_leave_rotation_and_with_all_full_a_caller_is_refused_at_once(fleet):
    servers, proxy = fleet("max_calls: 1", "max_calls: 1", "max_calls: 1")

    async def scenario() -> list[float]:
        callers, out_of_rotation = [], []
        for n in range(1, 4):  # each call lands on a server with room, which then fills
            callers.append(await Caller.dial(proxy.url()))
            callers[-1].stream()
            began = time.monotonic()
            assert sorted(calls_on(servers)) == [0] * (3 - n) + [1] * n
            assert await until(lambda n=n: down(proxy, 3) == n)
            out_of_rotation.append(time.monotonic() - began)
        refused_at = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:  # every server is full
            await websockets.connect(proxy.url())
        assert refused.value.response.status_code == 503
        print(f"\nall full: refused in {time.monotonic() - refused_at:.3f} s")
        first = callers[0]
        echoed = first.echoed
        assert await until(lambda: first.echoed >= echoed + 10)  # its call went on throughout
        await first.hang_up()
        assert await until(lambda: up(proxy, 3) == 1)  # room again
        callers.append(await Caller.dial(proxy.url()))
        for caller in callers[1:]:
            await caller.hang_up()
        assert [c.closed for c in callers] == [None] * 4
        assert [c.missing for c in callers] == [0] * 4
        return out_of_rotation

    times = ", ".join(f"{t:.3f}" for t in asyncio.run(scenario()))
    print(f"\nat capacity -> out of rotation: {times} s; 0 calls dropped")


def test_sigterm_takes_a_server_out_of_rotation_its_call_goes_on_and_it_exits_0(fleet):
    servers, proxy = fleet(*["shutdown_grace: 60"] * 3)

    async def scenario() -> float:
        callers = await one_call_each(proxy, servers)
        servers[0].proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await until(lambda: proxy.status("s0") == "DOWN")
        out_of_rotation = time.monotonic() - sent
        callers += [await Caller.dial(proxy.url()) for _ in range(4)]  # none refused...
        assert calls_on(servers)[0] == 1 and sum(calls_on(servers)[1:]) == 6  # ...none on s0
        live = callers[0]
        echoed = live.echoed
        assert await until(lambda: live.echoed >= echoed + 25)  # marked down, still talking
        assert servers[0].proc.poll() is None
        await live.hang_up()
        assert await asyncio.to_thread(servers[0].proc.wait, 30) == 0
        assert sum(calls_on(servers[1:])) == 6
        for caller in callers[1:]:
            await caller.hang_up()
        assert [c.closed for c in callers] == [None] * 7
        assert [c.missing for c in callers] == [0] * 7
        return out_of_rotation

    print(f"\nSIGTERM -> out of rotation: {asyncio.run(scenario()):.3f} s; 0 calls dropped")


def test_a_killed_server_ends_only_its_own_calls_and_the_next_call_succeeds(fleet):
    servers, proxy = fleet("", "", "")

    async def scenario() -> float:
        doomed, *others = await one_call_each(proxy, servers)
        servers[0].proc.kill()
        assert await until(lambda: doomed.closed is not None)  # its call ends
        echoed = [caller.echoed for caller in others]
        assert await until(
            lambda: all(c.echoed >= e + 25 for c, e in zip(others, echoed, strict=True))
        )
        others.append(await Caller.dial(proxy.url()))  # the next call succeeds elsewhere
        assert sum(calls_on(servers[1:])) == 3
        for caller in others:
            await caller.hang_up()
        assert [c.closed for c in others] == [None] * 3  # the others' calls went on
        assert [c.missing for c in others] == [0] * 3
        return max(caller.gap for caller in others)

    gap = asyncio.run(scenario())
    print(
        f"\nSIGKILL: 1 call dropped (the killed server's); longest echo wait elsewhere {gap:.3f} s"
    )


def test_a_call_refused_between_two_checks_is_retried_on_another_server(fleet):
    servers, proxy = fleet("", "", checks=False)
    servers[0].proc.send_signal(signal.SIGUSR1)  # drains, and HAProxy does not know it
    assert wait_until(lambda: servers[0].get("/ready")[0] == 503)

    async def scenario() -> None:
        callers = [await Caller.dial(proxy.url()) for _ in range(4)]
        assert servers[1].calls() == 4
        for caller in callers:
            await caller.hang_up()

    asyncio.run(scenario())
    refused = servers[0].metric('flowcat_calls_refused_total{reason="draining"}')
    assert int(refused) >= 1  # HAProxy did try the draining server, and retried elsewhere
