"""``flowcat-ft serve``: an agent from a configuration, behind every transport, with pages.

:class:`AgentServer` puts the pieces together: the runtime, the agent
(:mod:`flowcat_ft.server.agent`), the WebSocket server with one media route per carrier,
the carriers' webhook answers (:mod:`~flowcat_ft.server.webhooks`), the status page
(:mod:`~flowcat_ft.server.status`), the browser playground, WebRTC through its
companion process, and, where the configuration names an OTLP endpoint, traces of every
conversation (:mod:`flowcat_ft.telemetry`). It is what the command line runs, and works
the same embedded::

    server = AgentServer(load_config("agent.yaml")).start()
    ...
    server.drain()                      # no new call; live ones go on
    server.wait_for_calls(timeout=3600)
    server.stop()

It also decides who may come in: with ``server.access_token_env`` every entry point but the
carriers' and ``/health`` and ``/ready`` asks for the access token
(:mod:`~flowcat_ft.server.access`); without one, a server that other machines can reach
refuses to start, unless ``server.insecure`` (``--insecure``) says to serve anyone, which
it then warns of at every start. Limits per client address, the handshake timeout, the
trusted proxies and TLS come from the configuration too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from threadpoolctl import threadpool_limits

from flowcat_ft.runtime import Runtime
from flowcat_ft.server.access import AccessToken
from flowcat_ft.server.agent import build_agent
from flowcat_ft.server.carrierauth import (
    exotel_guards,
    merge,
    plivo_guards,
    telnyx_guards,
    twilio_guards,
    vonage_guards,
)
from flowcat_ft.server.config import Config, SphinxSTTConfig, TransportsConfig
from flowcat_ft.server.playground import MEDIA_PATH, playground_pages, playground_routes
from flowcat_ft.server.signatures import ReplayMemory, ed25519_public_key
from flowcat_ft.server.status import status_pages
from flowcat_ft.server.streamtokens import StreamTokens
from flowcat_ft.server.telephony import start_audiosocket, start_sip
from flowcat_ft.server.webhooks import CALL_ID_FIELDS, answer_pages
from flowcat_ft.services.offline import SphinxPool
from flowcat_ft.transports.audiosocket import AudioSocketServer
from flowcat_ft.transports.clients import TrustedProxies
from flowcat_ft.transports.http import Guard, HttpRequest, HttpResponse
from flowcat_ft.transports.limits import ClientLimits, Rate
from flowcat_ft.transports.server import WebSocketServer, default_routes, split_cores
from flowcat_ft.transports.sip import SipServer
from flowcat_ft.transports.webrtc import WebRTCGateway
from flowcat_ft.transports.webrtc.gateway import OFFER_PATH

if TYPE_CHECKING:
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.telemetry.export import Telemetry
    from flowcat_ft.transports.session import MediaOptions

__all__ = ["AgentServer", "stream_tokens"]

logger = logging.getLogger("flowcat_ft.server")

OPEN_PAGES = ("/health", "/ready")
"""What anyone may ask for, with an access token or without: liveness and readiness."""


class AgentServer:
    """The configured agent, served.

    ``progress`` is told each step of start-up as it happens (the command line prints
    them: building the agent and warming its workers can take seconds); ``warn`` is told
    what the operator must know (that anyone may use an ``insecure`` server).
    """

    def __init__(
        self,
        config: Config,
        *,
        progress: Callable[[str], None] = lambda step: None,
        warn: Callable[[str], None] = logger.warning,
        profile_dir: str | None = None,
    ) -> None:
        self.config = config
        self._progress = progress
        self._warn = warn
        self._profile_dir = profile_dir
        self.runtime: Runtime | None = None
        self.server: WebSocketServer | None = None
        self.gateway: WebRTCGateway | None = None
        self.telemetry: Telemetry | None = None
        self.sip: SipServer | None = None
        self.audiosocket: AudioSocketServer | None = None
        self._blas: threadpool_limits | None = None

    @property
    def port(self) -> int:
        assert self.server is not None, "not started"
        return self.server.port

    def start(self) -> AgentServer:
        """Build the agent and listen. Raises ``ConfigError`` (the agent cannot be built on
        this machine, or the server would be open to other machines) or ``OSError`` (the
        port is taken), having started nothing."""
        config = self.config
        self._check_exposure()
        started = time.monotonic()
        self._step(f"building the {config.agent.kind} agent")
        telemetry = self._telemetry()
        agent = build_agent(config, telemetry.tracer_factory() if telemetry else None)
        gateway = self._webrtc_gateway()
        loops, threads = split_cores(config.server.loops)
        runtime = Runtime(
            threads=threads, max_calls=config.limits.max_calls, profile_dir=self._profile_dir
        )
        carriers = config.transports.carriers
        tokens = stream_tokens(config.transports)
        routes = default_routes(carriers)
        pages = answer_pages(carriers, tokens, config.server.public_url)
        if config.server.playground:
            routes |= playground_routes()
            pages |= playground_pages()
        if gateway is not None:
            pages |= gateway.pages()
        limits = config.limits
        server = WebSocketServer(
            runtime,
            agent.pipeline,
            host=config.server.host,
            port=config.server.port,
            loops=loops,
            routes=routes,
            options=agent.options,
            max_calls=limits.max_calls,
            pages=pages,
            sockets=gateway.sockets() if gateway is not None else None,
            guards=self._guards(tokens, gateway),
            start_checks=tokens.start_checks(_webhook_carriers(carriers)),
            limits=ClientLimits(
                connections=limits.connections_per_client,
                rates={
                    "handshake": Rate.per_minute_with_burst(limits.handshakes_per_minute),
                    OFFER_PATH: Rate.per_minute_with_burst(limits.offers_per_minute),
                },
            ),
            exempt=self._exempt(gateway),
            proxies=TrustedProxies(config.server.trusted_proxies),
            handshake_timeout=limits.handshake_timeout,
            tls=config.server.tls_context(),
            load=config.limits.load,
        )
        extras = {"webrtc": gateway.status} if gateway is not None else None
        server.pages.update(status_pages(server, runtime, extras))
        server.guards.update(self._access_guards(server, gateway))
        try:
            server.start()
        except OSError:
            runtime.stop()
            if telemetry is not None:
                telemetry.shutdown()
            raise
        self.runtime, self.server, self.gateway = runtime, server, gateway
        self._blas = one_blas_thread()
        self.telemetry = telemetry
        self._step(f"listening on {config.server.host}:{server.port}")
        if unverified := config.transports.unverified:
            self._step(
                f"webhooks not verified for {', '.join(unverified)}: anyone who reaches "
                "/<carrier>/answer can start calls (set transports.<carrier>, see "
                "examples/agent.yaml)"
            )
        self._start_telephony(agent.pipeline, agent.options)
        self._warm_up(runtime)
        if gateway is not None:
            self._step(f"WebRTC: starting {gateway.companions} companion processes")
            gateway.start(f"{self._scheme('ws')}://{_loopback(config.server.host)}:{server.port}")
        self._step(f"ready in {time.monotonic() - started:.1f} s")
        return self

    def _start_telephony(self, pipeline: Pipeline, media: MediaOptions) -> None:
        """SIP and AudioSocket, where the config turns them on (``OSError``: a port is
        taken; everything started is stopped)."""
        transports, args = self.config.transports, (self.config, self.runtime, pipeline, media)
        try:
            if transports.sip.enabled:
                self.sip = start_sip(*args, self.server)
                self._step(
                    f"SIP: listening at {self.sip.uri} ({'/'.join(transports.sip.transports)})"
                )
            if transports.audiosocket.enabled:
                self.audiosocket = start_audiosocket(*args, self.server)
                self._step(f"AudioSocket: listening on port {self.audiosocket.port}")
        except OSError:
            self.stop(grace=0)
            raise

    def urls(self) -> dict[str, str]:
        """What a person or a carrier connects to, by name."""
        assert self.server is not None, "not started"
        base = f"{_loopback(self.config.server.host)}:{self.port}"
        http, ws = self._scheme("http"), self._scheme("ws")
        token_env = self.config.server.access_token_env
        sign_in = f"  (sign in with the token in ${token_env})" if token_env else ""
        urls = {"status": f"{http}://{base}/status{sign_in}"}
        if self.config.server.playground:
            urls["playground"] = f"{http}://{base}/{sign_in}"
        for name in self.config.transports.carriers:
            urls[name] = f"{ws}://{base}/{name}"
            if f"/{name}/answer" in self.server.pages:
                urls[name] += f"  (webhook answer: {http}://{base}/{name}/answer)"
        if self.sip is not None:
            urls["sip"] = self.sip.uri
        if self.audiosocket is not None:
            host = _loopback(self.config.transports.audiosocket.host)
            urls["audiosocket"] = f"{host}:{self.audiosocket.port}  (AudioSocket(uuid,host:port))"
        return urls

    def drain(self) -> None:
        """Take no new call from now on (``/ready`` answers 503; new calls and WebRTC offers
        are refused with 503, and SIP's INVITEs and OPTIONS pings too, its trunks'
        bindings removed once its last call ends); live calls go on."""
        assert self.server is not None, "not started"
        self.server.drain()
        if self.sip is not None:
            self.sip.drain()

    def wait_for_calls(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds until no call is live (WebSocket or SIP);
        returns whether none is."""
        assert self.server is not None, "not started"
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.server.wait_for_calls(timeout):
            return False
        if self.sip is None:
            return True
        return self.sip.wait_for_calls(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )

    def live_calls(self) -> int:
        """How many calls are live now (WebSocket and SIP)."""
        assert self.server is not None, "not started"
        sip = len(self.sip.calls) if self.sip is not None else 0
        return len(self.server.sessions) + sip

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let live ones finish for ``grace`` seconds (the config's
        ``limits.shutdown_grace`` by default), then cancel them. WebRTC calls get the grace
        too: the companions stop after the server."""
        grace = self.config.limits.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace  # calls on every transport finish meanwhile
        for transport in (self.sip, self.audiosocket, self.server):
            if transport is not None:
                transport.stop(max(0.0, deadline - time.monotonic()))
        if self.gateway is not None:
            self.gateway.stop()
        if self.runtime is not None:
            self.runtime.stop()
        if self.telemetry is not None:
            self.telemetry.shutdown()  # exports the last calls' spans
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None
        self.server = self.runtime = self.gateway = self.telemetry = self.sip = None
        self.audiosocket = None

    def _telemetry(self) -> Telemetry | None:
        """Traces exported where the config says (the SDK is loaded only then)."""
        telemetry = self.config.telemetry
        if telemetry.otlp_endpoint is None:
            return None
        from flowcat_ft.telemetry.export import Telemetry

        self._step(f"traces: exporting to {telemetry.otlp_endpoint} over OTLP/HTTP")
        return Telemetry(telemetry.otlp_endpoint, service_name=telemetry.service_name)

    def _guards(self, tokens: StreamTokens, gateway: WebRTCGateway | None) -> dict[str, Guard]:
        """Stream tokens on every carrier's stream, and each carrier's own signatures (or
        credentials) on its requests where the config names its secret; the WebRTC
        gateway's own, and its offers refused while the server drains."""
        transports, public_url = self.config.transports, self.config.server.public_url
        carriers = _webhook_carriers(transports.carriers)
        tolerance, replays, env = transports.webhook_tolerance, ReplayMemory(), os.environ
        guards = []
        if "twilio" in carriers and (name := transports.twilio.auth_token_env):
            guards.append(twilio_guards(env[name], public_url, replays))
        if "plivo" in carriers and (name := transports.plivo.auth_token_env):
            guards.append(plivo_guards(env[name], public_url, replays))
        if "telnyx" in carriers and (name := transports.telnyx.public_key_env):
            guards.append(telnyx_guards(ed25519_public_key(env[name]), tolerance, replays))
        if "vonage" in carriers and (name := transports.vonage.signature_secret_env):
            guards.append(vonage_guards(env[name], tolerance, replays))
        exotel = transports.exotel
        if "exotel" in carriers and (exotel.username_env or exotel.allow_from):
            username = env[exotel.username_env] if exotel.username_env else None
            password = env[exotel.password_env] if exotel.password_env else None
            guards.append(exotel_guards(username, password, exotel.allow_from))
        if gateway is not None:
            guards.append(gateway.guards())
            guards.append({path: self._refuse_while_draining for path in gateway.pages()})
        return merge(*guards, tokens.guards(carriers))

    def _check_exposure(self) -> None:
        """Refuse to serve other machines with no access token, unless told to (and then
        warn)."""
        server = self.config.server
        if server.access_token_env is not None or not _reachable_from_others(server.host):
            return
        if server.insecure:
            self._warn(
                f"serving {server.host}:{server.port} with no access token (insecure): "
                "anyone who can reach it can open calls, at your STT, LLM and TTS "
                "providers' expense"
            )
            return
        raise self.config.error(
            "server.host",
            f"{server.host} can be reached from other machines, and no access token is set: "
            "set server.access_token_env to the name of an environment variable holding "
            "one (at least 16 characters: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe())' makes one), or listen on 127.0.0.1, or pass "
            "--insecure (server.insecure: true) to serve anyone who can reach the port",
        )

    def _access_guards(
        self, server: WebSocketServer, gateway: WebRTCGateway | None
    ) -> dict[str, Guard]:
        """The access token's guard on every page and route but the carriers' and
        :data:`OPEN_PAGES` (none without a token)."""
        token_env = self.config.server.access_token_env
        if token_env is None:
            return {}
        also = gateway.is_companion if gateway is not None else (lambda request: False)
        access = AccessToken(os.environ[token_env], also=also)
        carriers = set(_carrier_paths(self.config)) | set(OPEN_PAGES)
        return access.guards(path for path in {*server.pages, *server.routes} - carriers)

    def _exempt(self, gateway: WebRTCGateway | None) -> Callable[[HttpRequest], bool]:
        """What the rates per client do not count: the carriers' media streams (a carrier
        streams many calls from a few addresses) and the WebRTC companions' connections
        (their browsers are counted by their offers)."""
        media = set(_carrier_paths(self.config))

        def exempt(request: HttpRequest) -> bool:
            route = request.path.rpartition("/")[0]  # a stream URL's token segment
            if request.path in media or route in media:
                return True
            return gateway is not None and gateway.is_companion(request)

        return exempt

    def _scheme(self, plain: str) -> str:
        """``http`` or ``ws`` (``plain``), or with TLS ``https`` or ``wss``."""
        return plain + "s" if self.config.server.tls_cert is not None else plain

    def _refuse_while_draining(self, request: HttpRequest) -> HttpResponse | None:
        if self.server is not None and self.server.draining:
            return HttpResponse.error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "the server is draining; connect to another instance",
            )
        return None

    def _webrtc_gateway(self) -> WebRTCGateway | None:
        """The gateway to WebRTC's companion process, where the config wants one and a
        python with aiortc is there (``webrtc: true`` without one is a ConfigError)."""
        wanted = self.config.server.webrtc
        if wanted is False:
            return None
        gateway = WebRTCGateway(
            media_path=MEDIA_PATH if self.config.server.playground else RAW,
            companions=self.config.server.webrtc_companions,
        )
        if gateway.available:
            return gateway
        reason = gateway.status()["last_error"] or "no python with aiortc was found"
        if wanted is True:
            raise self.config.error("server.webrtc", reason)
        self._step(f"WebRTC: off ({reason})")
        return None

    def _step(self, message: str) -> None:
        self._progress(message)

    def _warm_up(self, runtime: Runtime) -> None:
        """Start the agent's worker processes now, so the first caller does not wait."""
        if isinstance(self.config.agent.stt, SphinxSTTConfig) and self.config.agent.kind != "echo":
            began = time.monotonic()
            pool = SphinxPool.shared(runtime, self.config.agent.stt.workers)
            self._step(f"speech recognition: starting {len(pool.workers)} PocketSphinx workers")
            try:
                for started in pool.start():
                    started.result(pool.start_timeout)
            except Exception as error:  # a worker restarts on the first call's request
                self._step(f"speech recognition: worker not ready ({error}); retried per call")
            else:
                self._step(f"speech recognition: ready in {time.monotonic() - began:.1f} s")

    def describe(self) -> str:
        """One line about the interpreter serving."""
        build = "GIL" if sys._is_gil_enabled() else "free-threaded, GIL off"
        return f"flowcat-ft on Python {sys.version.split()[0]} ({build})"


def stream_tokens(transports: TransportsConfig) -> StreamTokens:
    """The stream tokens of a configuration: signed with the key its
    ``stream_token_key_env`` names, or a random one."""
    key_env = transports.stream_token_key_env
    key = os.environ[key_env].encode() if key_env else None
    return StreamTokens(key, transports.stream_token_ttl)


def _webhook_carriers(carriers: tuple[str, ...]) -> list[str]:
    """The carriers that reach their stream through a webhook answer (all but raw)."""
    return [carrier for carrier in carriers if carrier in CALL_ID_FIELDS]


RAW = "/raw?codec=pcm16&sample_rate=16000"
"""The WebRTC bridge's media route when the playground's is not served."""


def _carrier_paths(config: Config) -> list[str]:
    """The carriers' media routes and webhook answers, which carriers reach without the
    access token (their own checks guard them)."""
    carriers = [name for name in config.transports.carriers if name != "raw"]
    return [f"/{name}" for name in carriers] + [f"/{name}/answer" for name in carriers]


def _reachable_from_others(host: str) -> bool:
    """Whether a server listening on ``host`` can be reached from other machines: any
    address but a loopback one (an empty host, or a name, may be any)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _loopback(host: str) -> str:
    """Where this machine reaches a server listening on ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)


def one_blas_thread() -> threadpool_limits:
    """Limit numpy's BLAS to one thread while the server runs (undone by ``restore``).

    OpenBLAS starts a thread per core and keeps it spinning after each call. An agent's
    small matrix products (resampling, speech features) woke it for every frame: on the
    offline agent at 10 calls it took 9.7 ms of CPU per call per second (GIL twin,
    ``bench.agent``), a quarter of the server's CPU, for products too small to gain from a
    second thread. The server's parallelism is its calls, on the runtime's threads."""
    return threadpool_limits(1, user_api="blas")
