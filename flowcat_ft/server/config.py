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
defaults of a cloud engine's options are its service's.

Every mistake is a :class:`ConfigError` naming the file, the line and the field::

    agent.yaml:12: agent.vad.stop_secs: expected a number, got 'soon'
    agent.yaml:3: server.prot: unknown field (did you mean 'port'?)

and all of a file's mistakes are reported at once. API keys never go in the file: a
section names the environment variable that holds its key (``api_key_env``), and one that
is not set is a mistake too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

from flowcat_ft.audio.vad import VADParams
from flowcat_ft.services.llm.anthropic import AnthropicLLMService
from flowcat_ft.services.llm.openai import PROVIDERS
from flowcat_ft.services.offline import DEFAULT_GRAPH, VAD_PARAMS
from flowcat_ft.services.offline.espeak_tts import EspeakTTS
from flowcat_ft.services.stt import DeepgramSTTService, OpenAISTTService
from flowcat_ft.services.tts import CartesiaTTSService, ElevenLabsTTSService, OpenAITTSService
from flowcat_ft.transports.server import CARRIERS
from flowcat_ft.transports.session import MediaOptions

__all__ = [
    "AgentConfig",
    "AnthropicLLMConfig",
    "CartesiaTTSConfig",
    "Config",
    "ConfigError",
    "DeepgramSTTConfig",
    "EchoLLMConfig",
    "ElevenLabsTTSConfig",
    "EspeakTTSConfig",
    "GraphLLMConfig",
    "LimitsConfig",
    "LoggingConfig",
    "OpenAILLMConfig",
    "OpenAISTTConfig",
    "OpenAITTSConfig",
    "ServerConfig",
    "SphinxSTTConfig",
    "TransportsConfig",
    "TurnsConfig",
    "VADConfig",
    "load_config",
]


class ConfigError(ValueError):
    """A mistake in a configuration file: ``path``, ``line`` (1-based; None where no line
    is to blame), ``field`` (``agent.vad.stop_secs``; empty where the whole file is) and
    ``message``. ``errors`` holds every mistake found with it (each a ConfigError of its
    own), the first one this one's copy; ``str()`` lists them one to a line."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        super().__init__(path, line, field, message)
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.errors: tuple[ConfigError, ...] = (self,)

    def __str__(self) -> str:
        return "\n".join(error._one_line() for error in self.errors)

    def _one_line(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


def _service_default(service: Callable[..., Any], name: str) -> Any:
    """The default of a service's parameter: the config follows the service."""
    return inspect.signature(service).parameters[name].default


def _limit(
    default: Any, low: float | None = None, high: float | None = None, *, above: float | None = None
) -> Any:
    """A field whose value must lie in ``low..high`` (inclusive) or above ``above``."""
    return field(default=default, metadata={"low": low, "high": high, "above": above})


_INTERNAL = {"internal": True}  # a Config field that is not read from the file

Carrier = Literal[CARRIERS]
Provider = Literal[tuple(PROVIDERS)]

# -- the sections ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where the server listens (``loops``: event-loop threads, None for one per core) and
    what it serves. ``public_url`` is the URL carriers reach the server at
    (``https://agent.example.com``), written into webhook answers; ``webrtc`` is ``"auto"``
    (serve WebRTC where its companion process can run), True or False."""

    host: str = "0.0.0.0"
    port: int = _limit(8765, 0, 65535)
    loops: int | None = _limit(None, 1)
    public_url: str | None = None
    playground: bool = True
    webrtc: Literal["auto"] | bool = "auto"


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    """Calls at once; seconds of silence from a caller before the call is closed; seconds
    that calls get to finish at shutdown; the flood limit on incoming frames."""

    max_calls: int = _limit(1000, 1)
    idle_timeout: float = _limit(MediaOptions.idle_timeout, above=0)
    shutdown_grace: float = _limit(5.0, 0)
    max_frames_per_second: int = _limit(MediaOptions.max_frames_per_second, 1)


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, kw_only=True)
class TransportsConfig:
    """The carriers served, each on its own path (``/twilio``...)."""

    carriers: tuple[Carrier, ...] = CARRIERS


@dataclass(frozen=True, kw_only=True)
class VADConfig:
    """Voice activity detection: ``engine`` ``"silero"`` (the model), ``"energy"`` or
    ``"auto"`` (Silero where it is installed and takes the rate); the rest as in
    :class:`~flowcat_ft.audio.vad.VADParams`."""

    engine: Literal["auto", "silero", "energy"] = "auto"
    confidence: float = _limit(VAD_PARAMS.confidence, 0, 1)
    start_secs: float = _limit(VAD_PARAMS.start_secs, 0)
    stop_secs: float = _limit(VAD_PARAMS.stop_secs, 0)
    min_volume: float = _limit(VAD_PARAMS.min_volume, 0, 1)

    @property
    def params(self) -> VADParams:
        return VADParams(self.confidence, self.start_secs, self.stop_secs, self.min_volume)


@dataclass(frozen=True, kw_only=True)
class TurnsConfig:
    """Turn taking (:class:`~flowcat_ft.audio.turns.TurnDetector`): seconds of silence
    that end the caller's turn, and seconds of speech that interrupt the bot."""

    timeout_secs: float = _limit(0.8, 0)
    min_barge_in_secs: float = _limit(0.5, 0)


@dataclass(frozen=True, kw_only=True)
class SphinxSTTConfig:
    """PocketSphinx, offline. ``mode``: ``"grammar"`` listens for the graph's phrases only,
    ``"dictation"`` for any words; ``"auto"`` is grammar with a graph, else dictation."""

    engine: Literal["sphinx"] = "sphinx"
    mode: Literal["auto", "grammar", "dictation"] = "auto"


@dataclass(frozen=True, kw_only=True)
class DeepgramSTTConfig:
    engine: Literal["deepgram"] = "deepgram"
    model: str = _service_default(DeepgramSTTService, "model")
    language: str = _service_default(DeepgramSTTService, "language")
    url: str = _service_default(DeepgramSTTService, "url")
    api_key_env: str = _service_default(DeepgramSTTService, "api_key_env")


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
    where they are not given (ollama and vllm take no key)."""

    engine: Literal["openai"] = "openai"
    model: str
    provider: Provider = "openai"
    base_url: str | None = None
    api_key_env: str | None = PROVIDERS["openai"].api_key_env
    system_prompt: str | None = None
    temperature: float | None = _limit(None, 0, 2)


@dataclass(frozen=True, kw_only=True)
class AnthropicLLMConfig:
    engine: Literal["anthropic"] = "anthropic"
    model: str
    base_url: str = _service_default(AnthropicLLMService, "base_url")
    api_key_env: str = _service_default(AnthropicLLMService, "api_key_env")
    system_prompt: str | None = None
    temperature: float | None = _limit(None, 0, 1)
    max_tokens: int = _limit(_service_default(AnthropicLLMService, "max_tokens"), 1)


@dataclass(frozen=True, kw_only=True)
class EspeakTTSConfig:
    """espeak-ng, offline: a voice (``espeak-ng --voices``) and words per minute."""

    engine: Literal["espeak"] = "espeak"
    voice: str = _service_default(EspeakTTS, "voice")
    rate_wpm: int = _limit(_service_default(EspeakTTS, "rate_wpm"), 80, 500)


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
    16000, and None for the echo agent).
    """

    kind: Literal["offline", "pipeline", "echo"] = "offline"
    sample_rate: Literal[8000, 16000, 24000, 48000] | None = 16000
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
    transports: TransportsConfig = TransportsConfig()
    agent: AgentConfig = AgentConfig()
    source: str = field(default="<defaults>", compare=False, metadata=_INTERNAL)
    lines: Mapping[str, int] = field(
        default_factory=dict, compare=False, repr=False, metadata=_INTERNAL
    )

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
    if path is None:
        text, source, base = "", "<defaults>", Path.cwd()
    else:
        source, base = str(path), Path(path).parent
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else str(error)
            raise ConfigError(source, None, "", f"cannot read the file: {reason}") from None
    loader = _Loader(source, base)
    config = loader.load(text)
    if config is not None and not loader.errors:
        config = _resolve(config)
        loader.errors.extend(_check(config))
    if loader.errors:
        first = loader.errors[0]
        error = ConfigError(first.path, first.line, first.field, first.message)
        error.errors = tuple(loader.errors)
        raise error
    assert config is not None
    return config


_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_BAD = object()  # a value that was reported as a mistake


class _Invalid(Exception):
    """A value that does not fit its type; the argument says what was expected."""


class _Loader:
    """Builds a :class:`Config` from YAML's node tree, which keeps each value's line;
    collects the mistakes in ``errors`` and the lines of the fields in ``lines``."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base  # relative paths in the file are relative to this folder
        self.errors: list[ConfigError] = []
        self.lines: dict[str, int] = {}
        self._constructor = yaml.SafeLoader("")  # builds Python scalars from nodes

    def error(self, node: yaml.Node | int | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if isinstance(node, yaml.Node) else node
        self.errors.append(ConfigError(self.source, line, field, message))

    def load(self, text: str) -> Config | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            problem = " ".join(p for p in (error.context, error.problem) if p) or str(error)
            self.error(mark.line + 1 if mark else None, "YAML", problem)
            return None
        except yaml.YAMLError as error:
            self.error(None, "YAML", str(error))
            return None
        config = self.section(Config, root, "")
        if config is None:
            return None
        return dataclasses.replace(config, source=self.source, lines=self.lines)

    def section(self, cls: type, node: yaml.Node | None, path: str, engines: tuple = ()) -> Any:
        """An instance of the dataclass *cls* from a mapping (None, or a null node: the
        defaults); None where a required field is missing. *engines*: the engine classes
        *cls* is one of."""
        entries = self.entries(node, path)
        if entries is None:
            return None
        hints = get_type_hints(cls)
        schema = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        values: dict[str, Any] = {}
        for name, (key, value_node) in entries.items():
            where = f"{path}.{name}" if path else name
            spec = schema.get(name)
            if spec is None:
                self.unknown(key, where, cls, schema, engines)
                continue
            self.lines[where] = key.start_mark.line + 1
            value = self.value(value_node, hints[name], where, spec)
            if value is not _BAD:
                values[name] = value
        missing = [
            name
            for name, spec in schema.items()
            if spec.default is dataclasses.MISSING and name not in values
        ]
        for name in missing:
            if name not in entries:
                needs = f" (engine {_engine(cls)} needs it)" if engines else ""
                self.error(self.lines.get(path), f"{path}.{name}", f"is missing{needs}")
        return None if missing else cls(**values)

    def entries(
        self, node: yaml.Node | None, path: str
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """A mapping's entries by key (none for a null node); None if it is no mapping."""
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path or "config", f"expected a mapping, got {_shown(node)}")
            return None
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                self.error(key, path or "config", "keys must be plain names")
            elif key.value in entries:
                self.error(key, f"{path}.{key.value}" if path else key.value, "appears twice")
            else:
                entries[key.value] = (key, value)
        return entries

    def unknown(
        self, key: yaml.Node, where: str, cls: type, schema: Mapping, engines: tuple
    ) -> None:
        name = key.value
        if name == "api_key":
            message = (
                "API keys do not go in the file: put the key in an environment variable "
                "and name the variable in api_key_env"
            )
        elif any(name in {f.name for f in dataclasses.fields(e)} for e in engines):
            message = f"engine {_engine(cls)} takes no {name} (it takes {', '.join(schema)})"
        else:
            close = difflib.get_close_matches(name, list(schema), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(schema)}"
            message = f"unknown field ({hint})"
        self.error(key, where, message)

    def value(self, node: yaml.Node, tp: Any, path: str, spec: dataclasses.Field) -> Any:
        """The value of one field of type *tp*, or _BAD (reported)."""
        if dataclasses.is_dataclass(tp):
            section = self.section(tp, node, path)
            return _BAD if section is None else section
        if _is_union(tp) and all(dataclasses.is_dataclass(arg) for arg in get_args(tp)):
            return self.engine_section(get_args(tp), node, path, type(spec.default))
        if get_origin(tp) is tuple:
            if not isinstance(node, yaml.SequenceNode):
                self.error(node, path, f"expected a list, got {_shown(node)}")
                return _BAD
            item_type = get_args(tp)[0]
            items = [
                self.value(item, item_type, f"{path}[{i}]", spec)
                for i, item in enumerate(node.value)
            ]
            return _BAD if _BAD in items else tuple(items)
        try:
            value = self.scalar(node, tp)
        except _Invalid as invalid:
            self.error(node, path, f"expected {invalid}, got {_shown(node)}{_suggest(node, tp)}")
            return _BAD
        problem = _out_of_range(value, spec.metadata)
        if problem:
            self.error(node, path, problem)
            return _BAD
        return value

    def engine_section(self, engines: tuple, node: yaml.Node, path: str, default: type) -> Any:
        """One of the *engines* dataclasses, picked by the mapping's ``engine`` key."""
        entries = self.entries(node, path)
        if entries is None:
            return _BAD
        cls = default
        if "engine" in entries:
            by_name = {_engine(e): e for e in engines}
            engine_node = entries["engine"][1]
            choice = Literal[tuple(by_name)]
            try:
                cls = by_name[self.scalar(engine_node, choice)]
            except _Invalid as invalid:
                self.error(
                    engine_node,
                    f"{path}.engine",
                    f"expected {invalid}, got {_shown(engine_node)}{_suggest(engine_node, choice)}",
                )
                return _BAD
        section = self.section(cls, node, path, engines)
        return _BAD if section is None else section

    def scalar(self, node: yaml.Node, tp: Any) -> Any:
        """*node* as a value of type *tp*; :class:`_Invalid` if it is not one."""
        if _is_union(tp):
            for option in get_args(tp):
                with contextlib.suppress(_Invalid):
                    return self.scalar(node, option)
            raise _Invalid(_expected(tp))
        if isinstance(node, yaml.ScalarNode):
            tag = node.tag
            if tag == _NULL:
                if tp is type(None):
                    return None
            elif get_origin(tp) is Literal:
                for option in get_args(tp):
                    if isinstance(option, str) and tag == _STR:
                        if node.value.lower() == option.lower():
                            return option
                    elif (
                        isinstance(option, int)
                        and tag == _INT
                        and self._constructor.construct_object(node) == option
                    ):
                        return option
            elif (tp is bool and tag == _BOOL) or (tp is int and tag == _INT):
                return self._constructor.construct_object(node)
            elif tp is float and tag in (_INT, _FLOAT):
                number = float(self._constructor.construct_object(node))
                if math.isfinite(number):
                    return number
            elif tp is str:
                return node.value  # as written: "no" stays a word
            elif tp is Path:
                return self.base / Path(node.value).expanduser()
        raise _Invalid(_expected(tp))


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _engine(cls: type) -> str:
    return next(f.default for f in dataclasses.fields(cls) if f.name == "engine")


def _expected(tp: Any) -> str:
    """What a value of type *tp* looks like, in words."""
    if _is_union(tp):
        return " or ".join(_expected(arg) for arg in get_args(tp))
    if get_origin(tp) is Literal:
        options = [str(option) for option in get_args(tp)]
        return f"one of {', '.join(options)}" if len(options) > 1 else options[0]
    words = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "text",
        Path: "a file path",
        type(None): "null",
    }
    return words[tp]


def _shown(node: yaml.Node) -> str:
    """A value as a message shows it."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "null"
    return repr(node.value) if node.tag == _STR else node.value


def _suggest(node: yaml.Node, tp: Any) -> str:
    """`` (did you mean 'x'?)`` where *node* is text close to one of *tp*'s choices."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        return ""
    types_ = get_args(tp) if _is_union(tp) else (tp,)
    choices = [
        option
        for t in types_
        if get_origin(t) is Literal
        for option in get_args(t)
        if isinstance(option, str)
    ]
    close = difflib.get_close_matches(node.value.lower(), choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _out_of_range(value: Any, limits: Mapping[str, Any]) -> str | None:
    if value is None or not limits:
        return None
    low, high, above = limits.get("low"), limits.get("high"), limits.get("above")
    if above is not None and value <= above:
        return f"must be more than {above:g}, got {value:g}"
    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {low:g} and {high:g}, got {value:g}"
    if low is not None and value < low:
        return f"must be at least {low:g}, got {value:g}"
    return None


# -- defaults that depend on other fields, and checks across fields ------------------------


def _resolve(config: Config) -> Config:
    agent, written = config.agent, config.lines
    if agent.kind == "echo" and "agent.sample_rate" not in written:
        agent = dataclasses.replace(agent, sample_rate=None)
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
    if not config.transports.carriers:
        error("transports.carriers", "serve at least one carrier")

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
            if not _ENV_NAME.match(key_env):
                error(
                    f"agent.{name}.api_key_env",
                    "expected the name of an environment variable (such as "
                    "OPENAI_API_KEY), not the key itself",
                )
            elif not os.environ.get(key_env):
                error(
                    f"agent.{name}.api_key_env",
                    f"the environment variable {key_env} (the API key) is not set",
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
