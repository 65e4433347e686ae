"""The telephony transports of ``flowcat-ft serve``, from the configuration: SIP trunking
(:mod:`flowcat_ft.transports.sip`) and Asterisk's AudioSocket
(:mod:`flowcat_ft.transports.audiosocket`), each on the WebSocket server's event loops."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from flowcat_ft.transports.audiosocket import AudioSocketServer
from flowcat_ft.transports.sip import SipOptions, SipServer, Trunk
from flowcat_ft.transports.sip.pages import call_pages

if TYPE_CHECKING:
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime
    from flowcat_ft.server.config import Config
    from flowcat_ft.transports.server import WebSocketServer
    from flowcat_ft.transports.session import MediaOptions

__all__ = ["start_audiosocket", "start_sip"]


def start_sip(
    config: Config,
    runtime: Runtime,
    pipeline: Pipeline,
    media: MediaOptions,
    server: WebSocketServer,
) -> SipServer:
    """Start SIP as ``transports.sip`` says, and its call pages where it has a token.
    ``OSError`` if its port is taken."""
    sip = config.transports.sip
    trunks = tuple(
        Trunk(
            registrar=trunk.registrar,
            user=trunk.user,
            password=os.environ[trunk.password_env] if trunk.password_env else None,
            domain=trunk.domain,
            expires=trunk.expires,
        )
        for trunk in sip.trunks
    )
    options = SipOptions(
        host=sip.host,
        port=sip.port,
        transports=sip.transports,
        tls=sip.tls_context(),
        tls_port=sip.tls_port,
        public_address=sip.public_address,
        rtp_ports=(sip.rtp_port_min, sip.rtp_port_max),
        codecs=sip.codecs,
        allowed_sources=sip.allowed_sources,
        ring_secs=sip.ring_secs,
        early_media_secs=sip.early_media_secs,
        rtp_timeout=sip.rtp_timeout,
        session_expires=sip.session_expires,
        srtp=sip.srtp,
        max_calls=config.limits.max_calls,
        trunks=trunks,
        nameservers=sip.nameservers,
    )
    sip_server = SipServer(
        runtime, pipeline, options, media=media, loops=server.loops, turn_log=server.turns
    ).start()
    if sip.dial_token_env is not None:
        server.pages.update(call_pages(sip_server, os.environ[sip.dial_token_env]))
    return sip_server


def start_audiosocket(
    config: Config,
    runtime: Runtime,
    pipeline: Pipeline,
    media: MediaOptions,
    server: WebSocketServer,
) -> AudioSocketServer:
    """Start AudioSocket as ``transports.audiosocket`` says (``OSError``: port taken)."""
    section = config.transports.audiosocket
    return AudioSocketServer(
        runtime,
        pipeline,
        host=section.host,
        port=section.port,
        options=media,
        loops=server.loops,
    ).start()
