"""Kamailio, a real SIP proxy, in front of the agent: it record-routes and takes calls from
UDP to the agent over TCP, so the dialog's requests follow its route set both ways."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from helpers import wait_until
from peers import need_program
from sip_helpers import Heard, free_port, listening, sipp

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
        }} else if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }} else {{
            sl_send_reply("404", "Not here");
        }}
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    record_route();
    $du = "sip:127.0.0.1:{agent};transport=tcp";
    t_relay();
}}
"""


class Proxy:
    """The port a SIP client reaches the agent through."""

    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture
def kamailio(tmp_path):
    """``kamailio(agent_port)``: Kamailio on a free port, relaying to the agent over TCP."""
    started: list[subprocess.Popen] = []

    def start(agent: int) -> Proxy:
        port = free_port(socket.SOCK_STREAM)
        config = tmp_path / "proxy.cfg"
        config.write_text(CONFIG.format(port=port, agent=agent))
        command = [need_program("kamailio"), "-f", str(config), "-DD", "-E", "-Y", str(tmp_path),
                   "-m", "32", "-M", "4"]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        deadline = time.monotonic() + 10
        while True:  # listening once its TCP port takes a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(process.stderr.read().decode()[-2000:]) from None
                time.sleep(0.05)
        return Proxy(port)

    yield start
    for process in started:
        process.terminate()
        process.wait(5)


def test_a_call_through_kamailio_over_tcp_with_record_route(sip_server, kamailio):
    heard = Heard()
    server = sip_server(listening(heard))
    proxy = kamailio(server.port)
    status, log = sipp(proxy, "call.xml")
    assert status == 0, log
    assert wait_until(lambda: server.ended)
    call = server.ended[-1]
    assert call.peer.transport == "TCP"  # Kamailio took it from UDP to TCP
    assert len(call.route_set) == 2  # double record-routing, one per transport
    assert call.end_reason == "the caller hung up" and heard.digits == ["1"]


def test_the_agents_bye_follows_the_route_set_back_through_kamailio(sip_server, kamailio):
    server = sip_server(listening(Heard(hang_up_after=25)))
    proxy = kamailio(server.port)
    status, log = sipp(proxy, "hangup.xml")
    assert status == 0, log  # our BYE reached SIPp, over TCP to Kamailio then UDP
    assert server.ended[-1].end_reason == "the agent ended the call"
