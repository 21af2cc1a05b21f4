"""The config machinery shared by every run kind: parsing, merging, overrides, one-line errors.

A run config is a frozen dataclass of sections (:class:`RunSpec`), each section a frozen
dataclass. Plain data (a YAML / TOML / JSON file, ``section.key=value`` overrides) becomes
a run config through :meth:`RunSpec.from_dict`: every key must be a field (an unknown one is a
:class:`ConfigError` naming it and suggesting the closest valid key, the one "did you mean"
path of every run kind), every value is coerced to the field's annotation, and the
dataclasses' own checks become ConfigErrors.

Hand-written rather than OmegaConf or pydantic: the coercion rules here are a page, the
errors are single lines with a suggestion for every run kind, and the sections stay plain
frozen dataclasses that the networks' own configs (``UNetConfig`` ...) already are.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import yaml

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class ConfigError(ValueError):
    """A user's configuration is invalid (unknown key, wrong type, out-of-range value)."""


def require(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``: the check every section's ``__post_init__`` uses."""
    if not ok:
        raise ConfigError(message)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def section_to_dict(cfg) -> dict[str, Any]:
    """Plain data (tuples become lists) for one section dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; lists become tuples, ints floats, '1e-3' 1e-3."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError:
                pass
        allowed = " or ".join("null" if a is type(None) else _type_name(a) for a in args)
        raise ConfigError(f"{key} must be {allowed}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r} ({type(value).__name__})")
    if tp is int:
        original = value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):   # YAML 1.1 reads '1e4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)   # 1e4 means 10000
        raise ConfigError(f"{key} must be an integer, got {original!r} ({type(original).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):   # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r} ({type(value).__name__})")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key} must be a mapping, got {value!r} ({type(value).__name__})")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {list(value)!r}")
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"{key}: unsupported annotation {tp!r}")   # a bug in a config dataclass


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of nested dicts; values in ``update`` win (lists are replaced, not merged)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


class RunSpec:
    """What every run config is: a frozen dataclass whose fields are the sections in ``SECTIONS``.

    ``KIND`` names the run kind in the preset registry; ``LABEL`` prefixes its error messages
    ("unknown classifier config key ..."). ``to_dict`` / ``from_dict`` round-trip exactly.
    """

    KIND: ClassVar[str] = ""
    LABEL: ClassVar[str] = ""
    SECTIONS: ClassVar[dict[str, type]] = {}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {name: section_to_dict(getattr(self, name)) for name in self.SECTIONS}

    @classmethod
    def all_keys(cls) -> list[str]:
        return [f"{s}.{f.name}" for s, sec in cls.SECTIONS.items() for f in dataclasses.fields(sec)]

    @classmethod
    def unknown_key(cls, key: str) -> ConfigError:
        """The one "unknown key" error: names ``key`` and the closest valid ``section.key``."""
        keys = cls.all_keys()
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        if not close:   # a bare or misplaced field name: match the last component
            last = key.rsplit(".", 1)[-1]
            close = [k for k in keys if k.rsplit(".", 1)[-1] == last] or \
                [k for k in keys if k.rsplit(".", 1)[-1] in difflib.get_close_matches(
                    last, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.75)]
        hint = f"; did you mean {close[0]!r}?" if close else f"; sections are {', '.join(cls.SECTIONS)}"
        return ConfigError(f"unknown {cls.LABEL}config key {key!r}{hint}")

    @classmethod
    def section_from_dict(cls, name: str, d: Any):
        """Section ``name`` from a mapping: every key must be a field, every value is coerced to its
        annotation; the dataclass's own checks become ConfigErrors."""
        section = cls.SECTIONS[name]
        if not isinstance(d, Mapping):
            raise ConfigError(f"config section {name!r} must be a mapping of keys to values, got {d!r}")
        hints = typing.get_type_hints(section)
        names = {f.name for f in dataclasses.fields(section)}
        kwargs = {}
        for k, v in d.items():
            if k not in names:
                raise cls.unknown_key(f"{name}.{k}")
            kwargs[k] = coerce(v, hints[k], f"{name}.{k}")
        try:
            return section(**kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{name}: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The run config from nested plain data; missing sections and keys take the defaults."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a {cls.LABEL}run config must be a mapping with sections {', '.join(cls.SECTIONS)}, "
                              f"got {type(d).__name__}")
        for k in d:
            if k not in cls.SECTIONS:
                raise cls.unknown_key(str(k))
        sections = {name: cls.section_from_dict(name, d.get(name, {}) or {}) for name in cls.SECTIONS}
        try:
            return cls(**sections)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- files and overrides
def read_config_file(path: str | Path) -> dict[str, Any]:
    """Nested plain data from a YAML, TOML or JSON file. A top-level ``preset: NAME`` is kept."""
    path = Path(path)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"{path}: config files must end in {', '.join(CONFIG_SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:   # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as e:   # the parsers raise their own error types
        raise ConfigError(f"{path} could not be parsed: {type(e).__name__}: {e}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections (e.g. model, data, train), "
                          f"got {type(data).__name__}")
    return data


def parse_override(item: str, spec: type[RunSpec]) -> tuple[list[str], Any]:
    """``'train.lr=1e-3'`` -> ``(['train', 'lr'], 0.001)``; the value is parsed with yaml.safe_load."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    path = key.split(".")
    if len(path) == 1 and key in spec.SECTIONS:
        raise ConfigError(f"override {item!r} sets a whole section; name a key inside it, "
                          f"e.g. {key}.{dataclasses.fields(spec.SECTIONS[key])[0].name}=...")
    if len(path) < 2 or not all(path):
        raise spec.unknown_key(key)
    return path, value


def apply_overrides(d: Mapping[str, Any], overrides: Iterable[str], spec: type[RunSpec]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to nested plain data (keys are checked by ``spec.from_dict``)."""
    out = merge({}, d)
    for item in overrides:
        path, value = parse_override(item, spec)
        if path[0] not in spec.SECTIONS:
            raise spec.unknown_key(".".join(path))
        node = out
        for i, p in enumerate(path[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, Mapping):   # e.g. a file's `train: 3`: report it, never drop it
                raise ConfigError(f"cannot apply {item!r}: {'.'.join(path[:i + 1])} is {nxt!r} "
                                  f"({type(nxt).__name__}), not a mapping of keys to values")
            node[p] = nxt = dict(nxt)
            node = nxt
        node[path[-1]] = value
    return out
