"""The agent's configuration: the YAML file that ``flowcat-ft serve agent.yaml`` reads.

::

    server: {port: 8765, public_url: https://agent.example.com}
    limits: {max_calls: 200}
    agent:
      kind: pipeline
      stt: {engine: deepgram, api_key_env: DEEPGRAM_API_KEY}
      llm: {engine: openai, model: gpt-4o-mini, system_prompt: "You are brief."}
      tts: {engine: cartesia, voice: a0e99841-438c-4a64-b679-ae501e7d6091}

:func:`load_config` reads a file into a :class:`Config`, one frozen dataclass per section
(``examples/agent.yaml`` lists every field with its default). Every field has a default,
so an empty file, or none, is the default offline agent. The ``stt``, ``llm`` and ``tts``
sections take the options of their ``engine``, each engine a dataclass of its own; the
defaults of a cloud engine's options are its service's. The dataclasses' types say what
each field takes; :mod:`~flowcat_ft.server.yamlconfig` reads the file against them.

Every mistake is a :class:`ConfigError` naming the file, the line and the field::

    agent.yaml:12: agent.vad.stop_secs: expected a number, got 'soon'
    agent.yaml:3: server.prot: unknown field (did you mean 'port'?)

and all of a file's mistakes are reported at once. API keys never go in the file: a
section names the environment variable that holds its key (``api_key_env``), and one that
is not set is a mistake too.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from flowcat_ft.audio.vad import VADParams
from flowcat_ft.server.access import MIN_TOKEN_CHARS
from flowcat_ft.server.signatures import ed25519_public_key
from flowcat_ft.server.yamlconfig import ConfigError, bounded, internal, load_yaml
from flowcat_ft.services.barge_in import DEFAULT_PAUSE_AFTER_SECS, DEFAULT_PAUSE_TIMEOUT_SECS
from flowcat_ft.services.llm.anthropic import AnthropicLLMService
from flowcat_ft.services.llm.openai import PROVIDERS
from flowcat_ft.services.offline import DEFAULT_GRAPH, VAD_PARAMS
from flowcat_ft.services.offline.espeak_tts import EspeakTTS
from flowcat_ft.services.stt import DeepgramSTTService, OpenAISTTService
from flowcat_ft.services.tts import CartesiaTTSService, ElevenLabsTTSService, OpenAITTSService
from flowcat_ft.sip.message import SipError, Uri
from flowcat_ft.sip.sdp import CODECS as SDP_CODECS
from flowcat_ft.sip.sdp import DEFAULT_CODECS as SDP_DEFAULT_CODECS
from flowcat_ft.sip.sdp import SRTP_POLICIES
from flowcat_ft.transports.clients import TrustedProxies
from flowcat_ft.transports.load import LoadBounds
from flowcat_ft.transports.server import CARRIERS
from flowcat_ft.transports.session import MediaOptions

__all__ = [
    "AgentConfig",
    "AnthropicLLMConfig",
    "AudioSocketConfig",
    "CartesiaTTSConfig",
    "Config",
    "ConfigError",
    "DeepgramSTTConfig",
    "EchoLLMConfig",
    "ElevenLabsTTSConfig",
    "EspeakTTSConfig",
    "ExotelConfig",
    "GraphLLMConfig",
    "LimitsConfig",
    "LoggingConfig",
    "OpenAILLMConfig",
    "OpenAISTTConfig",
    "OpenAITTSConfig",
    "PlivoConfig",
    "ServerConfig",
    "SipConfig",
    "SipTrunkConfig",
    "SphinxSTTConfig",
    "TelemetryConfig",
    "TelnyxConfig",
    "TransportsConfig",
    "TurnsConfig",
    "TwilioConfig",
    "VADConfig",
    "VonageConfig",
    "load_config",
]


def _service_default(service: Callable[..., Any], name: str) -> Any:
    """The default of a service's parameter: the config follows the service."""
    return inspect.signature(service).parameters[name].default


Carrier = Literal[CARRIERS]
Provider = Literal[tuple(PROVIDERS)]

# -- the sections ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where the server listens (``loops``: event-loop threads, None for half the cores; the
    runtime's stage threads get the other cores) and what it serves. ``public_url`` is the
    URL carriers reach the server at
    (``https://agent.example.com``), written into webhook answers; ``webrtc`` is ``"auto"``
    (serve WebRTC where its companion processes can run), True or False;
    ``webrtc_companions``: how many companion processes (None: one per core).

    Access (:mod:`~flowcat_ft.server.access`): ``access_token_env`` names the environment
    variable holding the token that ``/raw``, the playground, WebRTC, ``/status`` and
    ``/metrics`` ask for (None: they are open, which only a server on loopback may be:
    one listening on any other ``host`` refuses to start, unless ``insecure``). ``tls_cert``
    and ``tls_key`` (PEM files) serve https and wss; ``trusted_proxies`` lists the
    addresses or networks of the proxies in front whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed."""

    host: str = "127.0.0.1"
    port: int = bounded(8765, 0, 65535)
    access_token_env: str | None = None
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: tuple[str, ...] = ()
    loops: int | None = bounded(None, 1)
    public_url: str | None = None
    playground: bool = True
    webrtc: Literal["auto"] | bool = "auto"
    webrtc_companions: int | None = bounded(None, 1)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context that serves ``tls_cert`` and ``tls_key`` (None without them);
        raises ``OSError`` or ``ssl.SSLError`` if they cannot be loaded."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    """Calls at once; seconds of silence from a caller before the call is closed; seconds
    that live calls get to finish once SIGTERM starts the drain (it may be an hour); the
    flood limit on incoming frames; the measured load past which the server takes no new
    call (seconds of event-loop lag and of stage queue delay, None: not measured; see
    :mod:`flowcat_ft.transports.load`).

    Per client address (:mod:`~flowcat_ft.transports.limits`): ``connections_per_client``,
    connections open at once that are not calls (yet); ``handshakes_per_minute``,
    WebSocket handshakes (a carrier's media streams and the WebRTC companions' are not
    counted); ``offers_per_minute``, WebRTC offers; each may come a quarter of a minute's
    worth at once. ``handshake_timeout``: seconds a connection has to finish its
    handshake (TLS's included)."""

    max_calls: int = bounded(1000, 1)
    idle_timeout: float = bounded(MediaOptions.idle_timeout, above=0)
    shutdown_grace: float = bounded(5.0, 0)
    max_frames_per_second: int = bounded(MediaOptions.max_frames_per_second, 1)
    connections_per_client: int = bounded(32, 1)
    handshakes_per_minute: int = bounded(120, 1)
    offers_per_minute: int = bounded(30, 1)
    handshake_timeout: float = bounded(10.0, above=0)
    max_loop_lag: float | None = bounded(LoadBounds.max_loop_lag, above=0)
    max_queue_delay: float | None = bounded(LoadBounds.max_queue_delay, above=0)

    @property
    def load(self) -> LoadBounds | None:
        """The bounds on measured load (None where neither is measured)."""
        if self.max_loop_lag is None and self.max_queue_delay is None:
            return None
        return LoadBounds(max_loop_lag=self.max_loop_lag, max_queue_delay=self.max_queue_delay)


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """OpenTelemetry traces of every conversation (a span per call, user turn and STT, LLM
    or TTS job), exported over OTLP/HTTP to ``otlp_endpoint`` (``http://localhost:4318``:
    a collector, Jaeger, Tempo...; None: no traces, at no cost), as ``service_name``."""

    otlp_endpoint: str | None = None
    service_name: str = "flowcat-ft"


@dataclass(frozen=True, kw_only=True)
class TwilioConfig:
    """``auth_token_env``: the environment variable with the account's auth token, to
    verify ``X-Twilio-Signature`` on webhooks and stream handshakes (None: not verified)."""

    auth_token_env: str | None = None


@dataclass(frozen=True, kw_only=True)
class TelnyxConfig:
    """``public_key_env``: the environment variable with the account's public key (base64,
    from the portal), to verify ``telnyx-signature-ed25519`` on webhooks (None: not
    verified)."""

    public_key_env: str | None = None


@dataclass(frozen=True, kw_only=True)
class PlivoConfig:
    """``auth_token_env``: the environment variable with the account's auth token, to
    verify ``X-Plivo-Signature-V3`` on webhooks (None: not verified)."""

    auth_token_env: str | None = None


@dataclass(frozen=True, kw_only=True)
class VonageConfig:
    """``signature_secret_env``: the environment variable with the account's signature
    secret, to verify the JWT of signed webhooks (None: not verified)."""

    signature_secret_env: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExotelConfig:
    """Exotel signs nothing; it offers HTTP basic auth (``username_env`` and
    ``password_env`` name the environment variables with the credentials put in the URL
    given to Exotel) and an allow-list of its addresses (``allow_from``: IP addresses or
    networks), checked on webhooks and stream handshakes (none given: not verified)."""

    username_env: str | None = None
    password_env: str | None = None
    allow_from: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SipTrunkConfig:
    """A registrar to register with: its URI (``sip:pbx.example.com;transport=tcp``), the
    account, the environment variable holding its password (None: no authentication),
    the address of record's domain (None: the registrar's host), the interval to ask."""

    registrar: str
    user: str
    password_env: str | None = None
    domain: str | None = None
    expires: int = bounded(3600, 60)


@dataclass(frozen=True, kw_only=True)
class SipConfig:
    """SIP trunking (:mod:`flowcat_ft.transports.sip`): calls from a SIP trunk or a PBX,
    with RTP media. ``transports``: ``tls`` among them serves SIP over TLS on
    ``tls_port`` with ``tls_cert`` and ``tls_key`` (PEM files); ``public_address``: the
    address written into SIP headers and SDP (behind NAT); ``codecs``: what our offers
    list, in order, and answers take (``OPUS`` added: Opus, taken over G.711 whenever a
    caller offers both); ``allowed_sources``: addresses or networks whose INVITEs are
    taken (empty: any); ``ring_secs``: how long 180 Ringing lasts; ``early_media_secs``:
    when not 0, how long the agent's audio flows as early media (183 Session Progress
    with SDP) before the answer, in place of the ringing;
    ``rtp_timeout``: seconds without RTP before hanging up; ``session_expires``: RFC 4028
    session interval; ``srtp``: ``allowed`` (SRTP offers with SDES keys are taken),
    ``required`` (plain RTP offers get 488; our offers are SRTP) or ``off``;
    ``trunks``: registrars to register with (un-registered at shutdown); ``nameservers``:
    DNS servers that find trunks by NAPTR and SRV (``address`` or ``address:port``; empty:
    the system's);
    ``dial_token_env``: the environment variable holding the bearer token of the HTTP
    endpoints that place calls (``POST /sip/calls``...); None: they are not served."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = bounded(5060, 0, 65535)
    transports: tuple[Literal["udp", "tcp", "tls"], ...] = ("udp", "tcp")
    tls_port: int = bounded(5061, 0, 65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    public_address: str | None = None
    rtp_port_min: int = bounded(20000, 1024, 65534)
    rtp_port_max: int = bounded(30000, 1025, 65535)
    codecs: tuple[Literal[tuple(SDP_CODECS)], ...] = SDP_DEFAULT_CODECS
    allowed_sources: tuple[str, ...] = ()
    ring_secs: float = bounded(0.0, 0, 60)
    early_media_secs: float = bounded(0.0, 0, 60)
    rtp_timeout: float = bounded(30.0, above=0)
    session_expires: int = bounded(1800, 90)
    srtp: Literal[SRTP_POLICIES] = "allowed"
    trunks: tuple[SipTrunkConfig, ...] = ()
    nameservers: tuple[str, ...] = ()
    dial_token_env: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context that serves SIP over TLS (None without ``tls`` in
        ``transports``); raises ``OSError`` or ``ssl.SSLError`` if the certificate and key
        cannot be loaded."""
        if "tls" not in self.transports or self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


@dataclass(frozen=True, kw_only=True)
class AudioSocketConfig:
    """Asterisk's AudioSocket (:mod:`flowcat_ft.transports.audiosocket`): where it listens
    for Asterisk's ``AudioSocket(uuid,host:port)``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = bounded(9092, 0, 65535)


@dataclass(frozen=True, kw_only=True)
class TransportsConfig:
    """The carriers served, each on its own path (``/twilio``...), and how their requests
    are verified. ``stream_token_key_env``: the environment variable with the key that
    signs stream tokens (None: a random key per process; set one for tokens that outlive
    a restart or are shared by several servers, and for ``flowcat-ft stream-url``);
    ``stream_token_ttl``: seconds from a webhook answer to its stream's handshake;
    ``webhook_tolerance``: seconds a timestamped signature (Telnyx, Vonage) stays valid;
    ``sip``: SIP trunking; ``audiosocket``: Asterisk's AudioSocket."""

    carriers: tuple[Carrier, ...] = CARRIERS
    stream_token_key_env: str | None = None
    stream_token_ttl: float = bounded(120.0, above=0)
    webhook_tolerance: float = bounded(300.0, above=0)
    twilio: TwilioConfig = TwilioConfig()
    telnyx: TelnyxConfig = TelnyxConfig()
    plivo: PlivoConfig = PlivoConfig()
    vonage: VonageConfig = VonageConfig()
    exotel: ExotelConfig = ExotelConfig()
    sip: SipConfig = SipConfig()
    audiosocket: AudioSocketConfig = AudioSocketConfig()

    @property
    def unverified(self) -> list[str]:
        """The carriers served whose webhooks are not verified: anyone who reaches their
        ``/<carrier>/answer`` gets a stream token, and so a call."""
        verified = {
            "twilio": self.twilio.auth_token_env,
            "telnyx": self.telnyx.public_key_env,
            "plivo": self.plivo.auth_token_env,
            "vonage": self.vonage.signature_secret_env,
            "exotel": self.exotel.username_env or self.exotel.allow_from,
        }
        return [
            carrier for carrier in self.carriers if carrier in verified and not verified[carrier]
        ]


@dataclass(frozen=True, kw_only=True)
class VADConfig:
    """Voice activity detection: ``engine`` ``"silero"`` (the model), ``"energy"`` or
    ``"auto"`` (Silero where it is installed and takes the rate); the rest as in
    :class:`~flowcat_ft.audio.vad.VADParams`."""

    engine: Literal["auto", "silero", "energy"] = "auto"
    confidence: float = bounded(VAD_PARAMS.confidence, 0, 1)
    start_secs: float = bounded(VAD_PARAMS.start_secs, 0)
    stop_secs: float = bounded(VAD_PARAMS.stop_secs, 0)
    min_volume: float = bounded(VAD_PARAMS.min_volume, 0, 1)

    @property
    def params(self) -> VADParams:
        return VADParams(self.confidence, self.start_secs, self.stop_secs, self.min_volume)


@dataclass(frozen=True, kw_only=True)
class TurnsConfig:
    """Turn taking (:class:`~flowcat_ft.audio.turns.TurnDetector`): seconds of silence
    that end the caller's turn, and when speech over the bot interrupts it. ``barge_in``
    ``"words"``: on what was heard, once it has ``min_barge_in_words`` words or holds a
    phrase that always interrupts ("stop", "goodbye", a graph's ``interrupts`` edges);
    what does not interrupt is answered when the bot has finished
    (:class:`~flowcat_ft.services.barge_in.BargeInGate`), and with ``pause_on_speech``
    the bot's audio pauses as soon as the caller speaks over it (once the VAD has heard
    ``pause_after_secs`` of speech), to resume if the words do not interrupt, or after
    ``pause_timeout_secs`` paused without a decision (None: no limit). ``"speech"``: once
    it has lasted ``min_barge_in_secs``; shorter speech is let go, untranscribed."""

    timeout_secs: float = bounded(0.8, 0)
    barge_in: Literal["words", "speech"] = "words"
    min_barge_in_words: int = bounded(2, 1)
    pause_on_speech: bool = True
    pause_after_secs: float = bounded(DEFAULT_PAUSE_AFTER_SECS, 0)
    pause_timeout_secs: float | None = bounded(DEFAULT_PAUSE_TIMEOUT_SECS, above=0)
    min_barge_in_secs: float = bounded(0.5, 0)


@dataclass(frozen=True, kw_only=True)
class SphinxSTTConfig:
    """PocketSphinx, offline. ``mode``: ``"grammar"`` listens for the graph's phrases only,
    ``"dictation"`` for any words; ``"auto"`` is grammar with a graph, else dictation.
    ``workers``: how many worker processes decode the calls' speech (None: one per core)."""

    engine: Literal["sphinx"] = "sphinx"
    mode: Literal["auto", "grammar", "dictation"] = "auto"
    workers: int | None = bounded(None, 1)


@dataclass(frozen=True, kw_only=True)
class DeepgramSTTConfig:
    """Deepgram's live transcription. ``chunk_ms``: how much of the caller's audio goes
    up in one message (20 to 250 ms, as Deepgram takes it; see
    :class:`~flowcat_ft.services.stt.DeepgramSTTService`)."""

    engine: Literal["deepgram"] = "deepgram"
    model: str = _service_default(DeepgramSTTService, "model")
    language: str = _service_default(DeepgramSTTService, "language")
    url: str = _service_default(DeepgramSTTService, "url")
    api_key_env: str = _service_default(DeepgramSTTService, "api_key_env")
    chunk_ms: int = bounded(_service_default(DeepgramSTTService, "chunk_ms"), 20, 250)


@dataclass(frozen=True, kw_only=True)
class OpenAISTTConfig:
    """An OpenAI-compatible transcription API (``api_key_env`` None: send no key)."""

    engine: Literal["openai"] = "openai"
    model: str = _service_default(OpenAISTTService, "model")
    language: str | None = None
    prompt: str | None = None
    base_url: str = _service_default(OpenAISTTService, "base_url")
    api_key_env: str | None = _service_default(OpenAISTTService, "api_key_env")


@dataclass(frozen=True, kw_only=True)
class GraphLLMConfig:
    """A conversation graph (a YAML file, relative to the configuration file)."""

    engine: Literal["graph"] = "graph"
    graph: Path = DEFAULT_GRAPH


@dataclass(frozen=True, kw_only=True)
class EchoLLMConfig:
    """Answers with what it heard."""

    engine: Literal["echo"] = "echo"


@dataclass(frozen=True, kw_only=True)
class OpenAILLMConfig:
    """An OpenAI-compatible chat API. ``provider`` picks ``base_url`` and ``api_key_env``
    where they are not given (ollama and vllm take no key). ``end_call``: offer the model
    an ``end_call`` function, so that it hangs up after saying goodbye (the model must
    support function calling)."""

    engine: Literal["openai"] = "openai"
    model: str
    provider: Provider = "openai"
    base_url: str | None = None
    api_key_env: str | None = PROVIDERS["openai"].api_key_env
    system_prompt: str | None = None
    temperature: float | None = bounded(None, 0, 2)
    end_call: bool = False


@dataclass(frozen=True, kw_only=True)
class AnthropicLLMConfig:
    """Anthropic's Messages API; ``end_call`` as for ``openai``."""

    engine: Literal["anthropic"] = "anthropic"
    model: str
    base_url: str = _service_default(AnthropicLLMService, "base_url")
    api_key_env: str = _service_default(AnthropicLLMService, "api_key_env")
    system_prompt: str | None = None
    temperature: float | None = bounded(None, 0, 1)
    max_tokens: int = bounded(_service_default(AnthropicLLMService, "max_tokens"), 1)
    end_call: bool = False


@dataclass(frozen=True, kw_only=True)
class EspeakTTSConfig:
    """espeak-ng, offline: a voice (``espeak-ng --voices``) and words per minute."""

    engine: Literal["espeak"] = "espeak"
    voice: str = _service_default(EspeakTTS, "voice")
    rate_wpm: int = bounded(_service_default(EspeakTTS, "rate_wpm"), 80, 500)


@dataclass(frozen=True, kw_only=True)
class CartesiaTTSConfig:
    engine: Literal["cartesia"] = "cartesia"
    voice: str
    model: str = _service_default(CartesiaTTSService, "model")
    language: str = _service_default(CartesiaTTSService, "language")
    url: str = _service_default(CartesiaTTSService, "url")
    api_key_env: str = _service_default(CartesiaTTSService, "api_key_env")


@dataclass(frozen=True, kw_only=True)
class ElevenLabsTTSConfig:
    engine: Literal["elevenlabs"] = "elevenlabs"
    voice: str
    model: str = _service_default(ElevenLabsTTSService, "model")
    base_url: str = _service_default(ElevenLabsTTSService, "base_url")
    api_key_env: str = _service_default(ElevenLabsTTSService, "api_key_env")


@dataclass(frozen=True, kw_only=True)
class OpenAITTSConfig:
    """An OpenAI-compatible speech API (``api_key_env`` None: send no key)."""

    engine: Literal["openai"] = "openai"
    voice: str = _service_default(OpenAITTSService, "voice")
    model: str = _service_default(OpenAITTSService, "model")
    base_url: str = _service_default(OpenAITTSService, "base_url")
    api_key_env: str | None = _service_default(OpenAITTSService, "api_key_env")


STTConfig = SphinxSTTConfig | DeepgramSTTConfig | OpenAISTTConfig
LLMConfig = GraphLLMConfig | EchoLLMConfig | OpenAILLMConfig | AnthropicLLMConfig
TTSConfig = EspeakTTSConfig | CartesiaTTSConfig | ElevenLabsTTSConfig | OpenAITTSConfig

_OFFLINE_ENGINES = {"stt": ("sphinx",), "llm": ("graph", "echo"), "tts": ("espeak",)}


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The agent. ``kind``:

    - ``"offline"``: needs no network: VAD and turns, PocketSphinx, a conversation graph
      (or the echo LLM), espeak-ng;
    - ``"pipeline"``: turns, any STT, a context, an OpenAI-compatible or Anthropic LLM,
      any TTS;
    - ``"echo"``: the caller hears themselves.

    ``sample_rate``: the rate the pipeline works at (None: the carrier's; the default is
    None for the offline and echo agents, which then take a phone call's 8 kHz audio
    without resampling it, and 16000 for a pipeline of cloud engines).
    """

    kind: Literal["offline", "pipeline", "echo"] = "offline"
    sample_rate: Literal[8000, 16000, 24000, 48000] | None = None
    vad: VADConfig = VADConfig()
    turns: TurnsConfig = TurnsConfig()
    stt: STTConfig = SphinxSTTConfig()
    llm: LLMConfig = GraphLLMConfig()
    tts: TTSConfig = EspeakTTSConfig()


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole configuration; ``source`` is the file it came from and ``lines`` where
    each field written in it is (for :meth:`error`)."""

    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    transports: TransportsConfig = TransportsConfig()
    agent: AgentConfig = AgentConfig()
    source: str = internal(default="<defaults>", compare=False)
    lines: Mapping[str, int] = internal(default_factory=dict, compare=False, repr=False)

    def error(self, field: str, message: str) -> ConfigError:
        """A :class:`ConfigError` for *field*, at its line (or the line of the nearest
        section written in the file that holds it)."""
        path = field
        while path and path not in self.lines:
            path = path.rpartition(".")[0]
        return ConfigError(self.source, self.lines.get(path), field, message)


# -- loading --------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load the configuration in the YAML file *path* (None: the defaults), resolve
    defaults that depend on other fields, and check it; :class:`ConfigError` lists every
    mistake."""
    config, source, lines = load_yaml(Config, path)
    config = _resolve(dataclasses.replace(config, source=source, lines=lines))
    errors = _check(config)
    if errors:
        raise ConfigError.collect(errors)
    return config


# -- defaults that depend on other fields, and checks across fields ------------------------


def _check_sip(config: Config) -> list[ConfigError]:
    sip, errors = config.transports.sip, []
    if sip.rtp_port_max - sip.rtp_port_min < 2:
        errors.append(
            config.error(
                "transports.sip.rtp_port_max",
                f"the RTP port range {sip.rtp_port_min}-{sip.rtp_port_max} has no room "
                "for one call (RTP and RTCP take two ports)",
            )
        )
    for i, source in enumerate(sip.allowed_sources):
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            errors.append(
                config.error(
                    f"transports.sip.allowed_sources[{i}]",
                    f"expected an address or a network such as 203.0.113.0/24, got {source!r}",
                )
            )
    if sip.enabled and not sip.transports:
        errors.append(config.error("transports.sip.transports", "name udp, tcp, tls or some"))
    if "tls" in sip.transports and (sip.tls_cert is None or sip.tls_key is None):
        errors.append(
            config.error(
                "transports.sip.transports",
                "tls needs transports.sip.tls_cert and tls_key (the certificate and its key)",
            )
        )
    elif "tls" in sip.transports:
        try:
            sip.tls_context()
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
            errors.append(
                config.error(
                    "transports.sip.tls_cert", f"cannot load the certificate and key: {reason}"
                )
            )
    if sip.dial_token_env is not None:
        errors += _secret_env_errors(
            config, "transports.sip.dial_token_env", sip.dial_token_env, "the token"
        )
    for i, trunk in enumerate(sip.trunks):
        where = f"transports.sip.trunks[{i}]"
        try:
            Uri.parse(trunk.registrar)
        except SipError as error:
            errors.append(config.error(f"{where}.registrar", f"expected a sip: URI ({error})"))
        if trunk.password_env is not None:
            errors += _secret_env_errors(
                config, f"{where}.password_env", trunk.password_env, "the trunk's password"
            )
    return errors


def _resolve(config: Config) -> Config:
    agent, written = config.agent, config.lines
    if agent.kind == "pipeline" and "agent.sample_rate" not in written:
        agent = dataclasses.replace(agent, sample_rate=16000)
    llm = agent.llm
    if isinstance(llm, OpenAILLMConfig):
        preset = PROVIDERS[llm.provider]
        key_env = llm.api_key_env if "agent.llm.api_key_env" in written else preset.api_key_env
        llm = dataclasses.replace(
            llm, base_url=llm.base_url or preset.base_url, api_key_env=key_env
        )
        agent = dataclasses.replace(agent, llm=llm)
    return dataclasses.replace(config, agent=agent)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _secret_env_errors(config: Config, field: str, env: str, what: str) -> list[ConfigError]:
    """The mistake in *field*, which names *env*, the environment variable that holds
    *what* (a key, a token, a password): not a variable's name (the secret itself
    written in the file, then not repeated in the message), or a variable that is not
    set."""
    if not _ENV_NAME.match(env):
        return [
            config.error(field, f"expected the name of an environment variable, not {what} itself")
        ]
    if not os.environ.get(env):
        return [config.error(field, f"the environment variable {env} ({what}) is not set")]
    return []


def _carrier_errors(config: Config) -> list[ConfigError]:
    """The mistakes in how carriers' requests are verified: secrets that are not set,
    keys that are not keys."""
    errors: list[ConfigError] = []
    transports = config.transports
    secrets = {
        "stream_token_key_env": (transports.stream_token_key_env, "the stream token key"),
        "twilio.auth_token_env": (transports.twilio.auth_token_env, "the Twilio auth token"),
        "telnyx.public_key_env": (transports.telnyx.public_key_env, "the Telnyx public key"),
        "plivo.auth_token_env": (transports.plivo.auth_token_env, "the Plivo auth token"),
        "vonage.signature_secret_env": (
            transports.vonage.signature_secret_env,
            "the Vonage signature secret",
        ),
        "exotel.username_env": (transports.exotel.username_env, "the Exotel user name"),
        "exotel.password_env": (transports.exotel.password_env, "the Exotel password"),
    }
    for name, (env, what) in secrets.items():
        if env is not None:
            errors += _secret_env_errors(config, f"transports.{name}", env, what)
    key_env = transports.stream_token_key_env
    key = os.environ.get(key_env) if key_env else None
    if key and len(key) < 32:
        errors.append(
            config.error(
                "transports.stream_token_key_env",
                f"the key in {key_env} is too short: give at least 32 random characters",
            )
        )
    public_key_env = transports.telnyx.public_key_env
    if public_key_env and os.environ.get(public_key_env):
        try:
            ed25519_public_key(os.environ[public_key_env])
        except ValueError as problem:
            errors.append(
                config.error("transports.telnyx.public_key_env", f"{public_key_env}: {problem}")
            )
    exotel = transports.exotel
    if (exotel.username_env is None) != (exotel.password_env is None):
        errors.append(
            config.error("transports.exotel", "give both username_env and password_env, or neither")
        )
    for i, entry in enumerate(exotel.allow_from):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            errors.append(
                config.error(
                    f"transports.exotel.allow_from[{i}]",
                    f"expected an IP address or network (203.0.113.0/24), got {entry!r}",
                )
            )
    return errors


def _check_access(config: Config) -> list[ConfigError]:
    """The mistakes in the server's access token, TLS files and trusted proxies."""
    server, errors = config.server, []
    token_env = server.access_token_env
    if token_env is not None:
        field = "server.access_token_env"
        unset = _secret_env_errors(config, field, token_env, "the access token")
        token = os.environ.get(token_env, "")
        if unset:
            errors += unset
        elif len(token) < MIN_TOKEN_CHARS:
            errors.append(
                config.error(
                    field,
                    f"the token in {token_env} is {len(token)} characters: it needs at least "
                    f"{MIN_TOKEN_CHARS} ({_MAKE_TOKEN} makes one)",
                )
            )
    if (server.tls_cert is None) != (server.tls_key is None):
        given, missing = (
            ("tls_cert", "tls_key") if server.tls_key is None else ("tls_key", "tls_cert")
        )
        errors.append(config.error(f"server.{given}", f"needs server.{missing} too"))
    elif server.tls_cert is not None:
        try:
            server.tls_context()
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
            errors.append(
                config.error("server.tls_cert", f"cannot load the certificate and key: {reason}")
            )
    try:
        TrustedProxies(server.trusted_proxies)
    except ValueError as error:
        errors.append(config.error("server.trusted_proxies", str(error)))
    return errors


_MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe())'"


def _check(config: Config) -> list[ConfigError]:
    """The mistakes that involve several fields, the file system or the environment."""
    errors: list[ConfigError] = []

    def error(field: str, message: str) -> None:
        errors.append(config.error(field, message))

    url = config.server.public_url
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            error("server.public_url", f"expected an http:// or https:// URL, got {url!r}")
    endpoint = config.telemetry.otlp_endpoint
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            error(
                "telemetry.otlp_endpoint",
                f"expected an http:// or https:// URL (OTLP over HTTP), got {endpoint!r}",
            )
    if not config.transports.carriers:
        error("transports.carriers", "serve at least one carrier")
    errors += _carrier_errors(config)
    errors += _check_access(config)
    errors += _check_sip(config)

    agent = config.agent
    sections = {"stt": agent.stt, "llm": agent.llm, "tts": agent.tts}
    if agent.kind == "echo":
        for name in ("vad", "turns", *sections):
            if f"agent.{name}" in config.lines:
                error(f"agent.{name}", "the echo agent has no use for it")
        return errors
    for name, section in sections.items():
        engine = section.engine
        offline = _OFFLINE_ENGINES[name]
        if agent.kind == "offline" and engine not in offline:
            error(
                f"agent.{name}.engine",
                f"the offline agent needs no network: use {' or '.join(offline)} "
                "(or agent.kind: pipeline)",
            )
            continue
        if agent.kind == "pipeline" and name == "llm" and engine in offline:
            error(
                "agent.llm.engine",
                "a pipeline agent needs an LLM that takes a context: openai or anthropic "
                f"({engine} belongs to agent.kind: offline)",
            )
            continue
        key_env = getattr(section, "api_key_env", None)
        if key_env is not None:
            errors += _secret_env_errors(
                config, f"agent.{name}.api_key_env", key_env, "the API key"
            )
    llm = agent.llm
    if (
        isinstance(llm, OpenAILLMConfig)
        and llm.api_key_env is None
        and PROVIDERS[llm.provider].api_key_env is not None
    ):
        error(
            "agent.llm.api_key_env",
            f"provider {llm.provider} needs a key; for a server that takes none, "
            "use provider vllm or ollama with its base_url",
        )
    if isinstance(llm, GraphLLMConfig) and not llm.graph.is_file():
        error("agent.llm.graph", f"no such file: {llm.graph}")
    stt = agent.stt
    if (
        isinstance(stt, SphinxSTTConfig)
        and stt.mode == "grammar"
        and not isinstance(llm, GraphLLMConfig)
    ):
        error("agent.stt.mode", "a grammar comes from a conversation graph (llm.engine: graph)")
    return errors
