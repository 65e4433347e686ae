"""Load a YAML file into frozen dataclasses, keeping the line each field was written on.

:func:`load_yaml` reads a file against a schema of ``kw_only`` dataclasses, one per
section (a mapping), and reports every mistake at once as a :class:`ConfigError` naming the
file, the line and the field. A field's type says what the file may hold there:

- ``bool``, ``int``, ``float`` (finite), ``str`` (as written: ``no`` stays a word),
  ``Path`` (relative to the file's folder), ``Literal[...]`` (text matched in any case),
  ``None`` and unions of these;
- ``tuple[X, ...]``: a list;
- a dataclass: a section of its own (null or absent: its defaults);
- a union of dataclasses: one of them, picked by the section's ``engine`` key (each
  dataclass's ``engine`` field defaults to its name; absent: the field default's class).

A field made with :func:`bounded` must lie in its range; one made with :func:`internal`
is not read from the file. An unknown field is named with the closest known one; an
``api_key`` field anywhere is refused (keys go in the environment, named by ``api_key_env``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "Loaded", "bounded", "internal", "load_yaml"]


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

    @classmethod
    def collect(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error that lists all of *errors* (at least one)."""
        first = errors[0]
        error = cls(first.path, first.line, first.field, first.message)
        error.errors = tuple(errors)
        return error

    def __str__(self) -> str:
        return "\n".join(error._one_line() for error in self.errors)

    def _one_line(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


def bounded(
    default: Any, low: float | None = None, high: float | None = None, *, above: float | None = None
) -> Any:
    """A field whose value must lie in ``low..high`` (inclusive) or above ``above``."""
    return dataclasses.field(default=default, metadata={"low": low, "high": high, "above": above})


def internal(**field_options: Any) -> Any:
    """A field that is not read from the file (``dataclasses.field`` options)."""
    return dataclasses.field(metadata={"internal": True}, **field_options)


class Loaded[T](NamedTuple):
    """What :func:`load_yaml` read: the dataclass, the file's name (``<defaults>`` for
    none) and the line of each field written in it, by dotted path (``agent.vad`` and
    ``agent.vad.stop_secs``)."""

    value: T
    source: str
    lines: Mapping[str, int]


def load_yaml[T](cls: type[T], path: str | os.PathLike[str] | None) -> Loaded[T]:
    """Read the YAML file *path* (None: no file, every field its default) into the
    dataclass *cls*; :class:`ConfigError` lists every mistake."""
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
    value = loader.load(cls, text)
    if loader.errors:
        raise ConfigError.collect(loader.errors)
    assert value is not None
    return Loaded(value, source, loader.lines)


_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_BAD = object()  # a value that was reported as a mistake


class _Invalid(Exception):
    """A value that does not fit its type; the argument says what was expected."""


class _Loader:
    """Builds dataclasses from YAML's node tree, which keeps each value's line; collects
    the mistakes in ``errors`` and the lines of the fields in ``lines``."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base  # relative paths in the file are relative to this folder
        self.errors: list[ConfigError] = []
        self.lines: dict[str, int] = {}
        self._constructor = yaml.SafeLoader("")  # builds Python scalars from nodes

    def error(self, node: yaml.Node | int | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if isinstance(node, yaml.Node) else node
        self.errors.append(ConfigError(self.source, line, field, message))

    def load(self, cls: type, text: str) -> Any:
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
        return self.section(cls, root, "")

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
