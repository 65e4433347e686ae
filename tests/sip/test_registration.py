"""Registering with a trunk: SIPp as a registrar that demands digest authentication."""

from __future__ import annotations

from helpers import wait_until
from sip_helpers import Heard, free_port, listening, registrar

from flowcat_ft.transports.sip import Trunk


def test_register_with_digest_refresh_and_unregister(sip_server):
    port = free_port()
    sipp = registrar("registrar.xml", port)
    try:
        trunk = Trunk(
            registrar=f"sip:127.0.0.1:{port}", user="agent", password="secret", expires=60
        )
        server = sip_server(listening(Heard()), trunks=(trunk,))
        (registration,) = server.registrations
        assert wait_until(lambda: registration.state == "registered", 10)
        assert registration.expires == 2  # what the registrar granted, not the 60 asked
        # Refreshed before it expires (the registrar then grants an hour).
        assert wait_until(lambda: registration.expires == 3600, 10)
        server.stop(grace=0)  # un-REGISTERs
        assert sipp.wait(15) == 0, sipp.stderr.read().decode()
    finally:
        sipp.kill()
        sipp.wait()


def test_a_wrong_password_is_a_failure_that_names_the_status(sip_server):
    port = free_port()
    sipp = registrar("registrar.xml", port)
    try:
        trunk = Trunk(registrar=f"sip:127.0.0.1:{port}", user="agent", password="wrong")
        server = sip_server(listening(Heard()), trunks=(trunk,))
        (registration,) = server.registrations
        assert wait_until(lambda: registration.state == "failed", 10)
        assert registration.last_status == "403 Forbidden"
    finally:
        sipp.kill()
        sipp.wait()
