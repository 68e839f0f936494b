"""Typed configuration shared by the three services: YAML file < environment < command-line flags.

Each service declares its settings as msgspec Structs (``forbid_unknown_fields``), so a typo or a wrong type
in a YAML file fails at start with a message naming the key (``mqtt.port: Expected `int`, got `str```),
instead of surfacing hours later. Environment overrides use ``PREFIX`` + the dotted key with ``__`` for the
dots, e.g. ``EDGELOOP_EDGE__SAMPLER__P_MIN=0.02``; values are parsed as YAML scalars so numbers and booleans
come out typed. In overrides (environment and flags) ``None`` means "not given" and the string ``none``
means null ("unlimited" for budgets).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

import msgspec
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Dotted-key overrides from variables named ``{prefix}{KEY}`` (``__`` separates nesting levels)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix) or name == prefix:
            continue
        key = name[len(prefix):].lower().replace("__", ".")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_config(cls: type[T], path: str | Path | None = None, *, env_prefix: str | None = None,
                overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from a YAML file, then environment overrides, then explicit (dotted-key) overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data = loaded
    layered: list[Mapping[str, Any]] = []
    if env_prefix:
        layered.append(env_overrides(env_prefix, environ))
    if overrides:
        layered.append(overrides)
    for layer in layered:
        for key, value in layer.items():
            if value is None:
                continue  # not given
            if isinstance(value, str) and value.strip().lower() == "none":
                value = None  # "none" means unset/unlimited, like YAML's null
            _set_dotted(data, key, value)
    _check_unknown(data, cls, "")
    try:
        return msgspec.convert(data, type=cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_readable(str(exc), path, data, cls)) from None


def _fields(cls: Any) -> dict[str, Any] | None:
    """Field name -> type for a Struct or dataclass, else None (a leaf)."""
    import dataclasses
    import typing

    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        hints = typing.get_type_hints(cls)
        return {name: hints.get(name) for name in cls.__struct_fields__}
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}
    return None


def _check_unknown(data: Any, cls: Any, where: str) -> None:
    """msgspec ignores unknown keys of dataclasses; a typo in a config must fail, naming the key."""
    import typing

    if not isinstance(data, dict):
        return
    for candidate in (typing.get_args(cls) or (cls,)):  # Optional[Section] -> Section
        fields = _fields(candidate)
        if fields is None:
            continue
        renamed = getattr(candidate, "renamed_keys", {})  # a section's keys of earlier releases -> now
        for key, value in data.items():
            name = f"{where}.{key}" if where else str(key)
            if key not in fields and key in renamed:
                new = f"{where}.{renamed[key]}" if where else renamed[key]
                raise ConfigError(f"{name}: renamed; use {new}")
            if key not in fields:
                raise ConfigError(f"{name}: unknown key (known here: {', '.join(sorted(fields))})")
            _check_unknown(value, fields[key], name)
        return


def _readable(message: str, path: Path | str | None, data: Any = None, cls: Any = None) -> str:
    """msgspec says ``Expected `int` >= 1 - at `$.update.batch```; operators read
    ``update.batch: 0 is out of range [1, 100000]``: the key, the value and the range."""
    where = ""
    if " - at `$." in message:
        message, _, key = message.rpartition(" - at `$.")
        where = key.rstrip("`")
    elif message.endswith(" - at `$`"):
        message = message[: -len(" - at `$`")]
    if where and data is not None and message.startswith("Expected") and ", got " not in message:
        found, value = _value_at(data, where)
        bounds = _range_of(cls, where) if cls is not None else None
        if found:
            message = (f"{value!r} is out of range {bounds}" if bounds
                       else f"{value!r} is out of range (expected{message[len('Expected'):]})")
    if message.startswith("Expected `str`, got `bool`"):  # YAML 1.1: off/on/yes/no are booleans
        message += ' (YAML reads off, on, yes and no as true/false: quote the word, e.g. "off")'
    elif message.startswith("Expected `str`, got `null`"):
        message += (' (in the environment and on the command line the word none means null; where "none" is a '
                    "value of this setting, it is the default: leave the key out)")
    prefix = f"{path}: " if path else ""
    return f"{prefix}{where + ': ' if where else ''}{message}"


def value_error(exc: Exception, data: Any = None, cls: Any = None) -> str:
    """A msgspec ``ValidationError`` as ``key: value is out of range [lo, hi]`` (for settings that are
    converted outside :func:`load_config`, e.g. a strategy's)."""
    return _readable(str(exc), None, data, cls)


def _range_of(cls: Any, dotted: str) -> str | None:
    """The interval a key's ``msgspec.Meta`` allows, written ``[0, 1)``; None if it has no bounds."""
    import typing

    node: Any = cls
    for part in dotted.split("."):
        if "[" in part or node is None:
            return None
        hints = None
        for candidate in (typing.get_args(node) or (node,)):  # Optional[Section] -> Section
            if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
                hints = typing.get_type_hints(candidate, include_extras=True)
                break
        if hints is None or part not in hints:
            return None
        node = hints[part]
    options = [node] if hasattr(node, "__metadata__") else list(typing.get_args(node))  # Annotated, or X | None
    metas = [m for arg in options for m in getattr(arg, "__metadata__", ()) if isinstance(m, msgspec.Meta)]
    for m in metas:
        if (m.ge, m.gt, m.le, m.lt) == (None, None, None, None):
            continue
        lo = f"[{_num(m.ge)}" if m.ge is not None else f"({_num(m.gt)}" if m.gt is not None else "(-inf"
        hi = f"{_num(m.le)}]" if m.le is not None else f"{_num(m.lt)})" if m.lt is not None else "inf)"
        return f"{lo}, {hi}"
    return None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def _value_at(data: Any, dotted: str) -> tuple[bool, Any]:
    """The value at ``a.b[0].c`` in plain data, and whether it was there."""
    node = data
    for part in dotted.replace("[", ".[").split("."):
        if not part:
            continue
        try:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return False, None
    return True, node


def _plain(value: Any) -> Any:
    """Structs and dataclasses as plain dicts with *every* field (msgspec drops dataclass defaults)."""
    fields = _fields(type(value))
    if fields is not None:
        return {name: _plain(getattr(value, name)) for name in fields}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: Keys whose values never leave the process: ``--print-config`` and logs show ``"***"`` instead.
SECRET_KEYS = frozenset({"password", "token", "secret", "api_token"})


def redact(value: Any) -> Any:
    """A plain config tree with secrets replaced: values of SECRET_KEYS, and passwords inside URLs."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.password is not None:
            return value.replace(f":{parts.password}@", ":***@", 1)
    return value


def dump_config(config: Any) -> str:
    """The effective configuration as YAML, for logs and ``--print-config``; secrets redacted."""
    return yaml.safe_dump(redact(_plain(config)), sort_keys=False)


def config_digest(config: Any) -> str:
    """A short stable digest of the effective configuration, published in the device's birth message."""
    import hashlib

    # Over the redacted tree: the digest is published (birth message) and must not help guess a password.
    return hashlib.sha256(msgspec.json.encode(redact(msgspec.to_builtins(config)))).hexdigest()[:16]
