"""Typed, checked reading of YAML into dataclasses: the one schema mechanism of the package.

A run config (:mod:`ruadapt.train.config`) and the architecture table (``archs.yaml``, :mod:`ruadapt.vocab.arch`) are
both plain YAML read into dataclasses by :func:`build`: a misspelt key, a missing required key or a value of the
wrong type is a one-line :class:`RuadaptError` naming where it is, instead of being silently ignored. A field
with ``metadata={"schema": False}`` is set by code, never read from YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any, get_args, get_origin, get_type_hints

from .errors import RuadaptError


def coerce(value: Any, typ: Any, where: str) -> Any:
    """``value`` as type ``typ`` (a dataclass, ``list[...]``, bool, int, float or str); ``where`` names it in errors.
    A scalar where a list is expected becomes a one-element list (``train: corpus.txt``)."""
    origin = get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if value is None:
            value = {}
        if isinstance(value, str) and getattr(typ, "SHORTHAND", None):
            value = {typ.SHORTHAND: value}
        if not isinstance(value, dict):
            raise RuadaptError(f"{where}: expected a mapping, got {value!r}")
        return build(typ, value, where)
    if origin is list:
        (inner,) = get_args(typ)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise RuadaptError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RuadaptError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise RuadaptError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise RuadaptError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise RuadaptError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RuadaptError(f"{where}: expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (dict, list)) or value is None:
            raise RuadaptError(f"{where}: expected a string, got {value!r}")
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


def build(cls: type, raw: dict, where: str) -> Any:
    """An instance of dataclass ``cls`` from the mapping ``raw``: unknown keys and missing required keys are errors."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.metadata.get("schema", True)}
    unknown = sorted(set(raw) - known)
    if unknown:
        section = f" in {where}" if where else ""
        raise RuadaptError(f"unknown key {unknown[0]!r}{section}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in known:
            continue
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                section = f" in {where}" if where else ""
                raise RuadaptError(f"missing required key {f.name!r}{section}")
            continue
        kwargs[f.name] = coerce(raw[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
    return cls(**kwargs)
