"""Typed, checked reading of YAML into dataclasses: the one schema mechanism of the package.

A run config (:mod:`ruadapt.train.config`) and the architecture table (``archs.yaml``, :mod:`ruadapt.vocab.arch`) are
both plain YAML read into dataclasses by :func:`build`: a misspelt key, a missing required key or a value of the
wrong type is a :class:`RuadaptError` line naming where it is, instead of being silently ignored. Every problem of
the mapping is collected before anything is raised, one line each, so a config with three mistakes needs one
round trip, not three. A choice is a ``Literal[...]`` in the dataclass: the schema checks it, and the CLI or the
docs can list the choices from the same type. A field with ``metadata={"schema": False}`` is set by code, never
read from YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import RuadaptError


def coerce(value: Any, typ: Any, where: str) -> Any:
    """``value`` as type ``typ`` (a dataclass, ``list[...]``, ``Literal[...]`` of strings, bool, int, float or str);
    ``where`` names it in errors. A scalar where a list is expected becomes a one-element list (``train: a.txt``)."""
    problems: list[str] = []
    out = _coerce(value, typ, where, problems)
    if problems:
        raise RuadaptError(*problems)
    return out


def _coerce(value: Any, typ: Any, where: str, problems: list[str]) -> Any:
    """:func:`coerce`, appending problems (every item of a list, every key of a mapping) instead of raising."""
    origin = get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if value is None:
            value = {}
        cls: Any = typ  # a dataclass type (is_dataclass narrows to instance | type)
        if isinstance(value, str) and getattr(cls, "SHORTHAND", None):
            value = {cls.SHORTHAND: value}
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return None
        return _build(cls, value, where, problems)
    if origin is list:
        (inner,) = get_args(typ)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return None
        return [_coerce(v, inner, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is Literal:
        choices = get_args(typ)
        try:
            text = _scalar(value, str, where)
        except RuadaptError as e:
            problems.append(str(e))
            return None
        if text not in choices:
            problems.append(f"{where} {text!r} is not one of {', '.join(choices)}")
        return text
    try:
        return _scalar(value, typ, where)
    except RuadaptError as e:
        problems.append(str(e))
        return None


def _scalar(value: Any, typ: Any, where: str) -> Any:
    """One scalar as ``typ``; raises, and the caller collects the line."""
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
    """An instance of dataclass ``cls`` from the mapping ``raw``: unknown keys, missing required keys and values of
    the wrong type or outside their ``Literal`` choices are errors, all of them in one :class:`RuadaptError`."""
    problems: list[str] = []
    obj = _build(cls, raw, where, problems)
    if problems:
        raise RuadaptError(*problems)
    return obj


def _build(cls: type, raw: dict, where: str, problems: list[str]) -> Any:
    """:func:`build`, appending each problem to ``problems``; returns None when any was found."""
    before = len(problems)
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.metadata.get("schema", True)}
    section = f" in {where}" if where else ""
    for key in sorted(set(raw) - known, key=str):
        problems.append(f"unknown key {key!r}{section}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in known:
            continue
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"missing required key {f.name!r}{section}")
            continue
        kwargs[f.name] = _coerce(raw[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name, problems)
    return None if len(problems) > before else cls(**kwargs)
