"""The machine-readable record every stage writes next to its output: ``ruadapt_<stage>.json``.

It says what went in (paths and fingerprints), with which options, with which library versions, how long each
step took and what was done, so a later stage or a person can check and reproduce the run.

One schema for every stage (:data:`SCHEMA`, checked by the tests on every record the stages write)::

    {"schema": 1, "stage": "swap", "started": ISO time, "finished": ISO time,
     "options": {...}, "inputs": {name: {"path": ..., "fingerprint" | "sha256": ..., ...}},
     "timings_s": {step: seconds, "total": ...}, "versions": {package: version},
     "result": {...what the stage found and did: the only stage-specific part}}
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import RuadaptError
from .hub import describe

if TYPE_CHECKING:
    from .checkpoint import CheckpointReader

_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "peft", "deepspeed", "accelerate", "lm_eval")


def versions() -> dict[str, str]:
    out = {"ruadapt": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


SCHEMA_VERSION = 1
SCHEMA = ("schema", "stage", "started", "finished", "options", "inputs", "timings_s", "versions", "result")


def iso_time(t: float | None = None) -> str:
    """Local time with its UTC offset, e.g. ``2026-11-30T06:12:03+0000``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


class StageRecord:
    """Collects a stage's inputs, options, timings and results; ``write`` puts them into ``ruadapt_<stage>.json``.

    ``started`` defaults to now; a stage that spans several processes (a resumed training run) passes the time
    the work really began."""

    def __init__(self, stage: str, options: dict[str, Any] | None = None, *, started: float | None = None):
        self.stage = stage
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "stage": stage,
            "started": iso_time(started),
            "finished": None,
            "options": {k: _plain(v) for k, v in (options or {}).items()},
            "inputs": {},
            "timings_s": {},
            "versions": versions(),
            "result": {},
        }
        self._t0 = time.perf_counter()

    def input(self, name: str, path: Path | str, **facts: Any) -> None:
        """An input by its absolute path, symlinks not followed (a file of a hub snapshot keeps its name, not
        ``blobs/<sha>``); a hub snapshot directory adds its repo id, revision and commit."""
        path = Path(os.path.abspath(Path(path).expanduser()))
        self.data["inputs"][name] = {"path": str(path), **describe(path), **{k: _plain(v) for k, v in facts.items()}}

    def input_file(self, name: str, path: Path | str, **facts: Any) -> None:
        """An input file, identified by the sha256 of its bytes."""
        self.input(name, path, sha256=sha256_file(Path(path)), bytes=Path(path).stat().st_size, **facts)

    def input_model(self, name: str, reader: CheckpointReader, fingerprint: str, **facts: Any) -> None:
        """An input checkpoint, identified by its fingerprint (:func:`ruadapt.vocab.arch.model_fingerprint`,
        computed by the caller: which tensors it hashes whole is a fact of the architecture, above this layer)."""
        self.input(name, reader.path, fingerprint=fingerprint, **facts)

    def set(self, key: str, value: Any) -> None:
        """One entry of ``result``."""
        self.data["result"][key] = _plain(value)

    def update(self, values: dict[str, Any]) -> None:
        """Several entries of ``result``."""
        for k, v in values.items():
            self.set(k, v)

    @property
    def result(self) -> dict[str, Any]:
        return self.data["result"]

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.data["timings_s"][step] = round(time.perf_counter() - t, 4)

    def write(self, directory: Path) -> Path:
        self.data["timings_s"]["total"] = round(time.perf_counter() - self._t0, 4)
        self.data["finished"] = iso_time()
        path = Path(directory) / f"ruadapt_{self.stage}.json"
        path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def check_record(data: dict, where: str = "record") -> dict:
    """``data`` follows :data:`SCHEMA` (every key, nothing else, the types a reader relies on); returns it."""
    if not isinstance(data, dict) or tuple(data) != SCHEMA:
        keys = list(data) if isinstance(data, dict) else type(data).__name__
        raise RuadaptError(f"{where}: keys {keys} are not the stage record schema {list(SCHEMA)}")
    for key, typ in (
        ("schema", int),
        ("stage", str),
        ("started", str),
        ("finished", str),
        ("options", dict),
        ("inputs", dict),
        ("timings_s", dict),
        ("versions", dict),
        ("result", dict),
    ):
        if not isinstance(data[key], typ):
            raise RuadaptError(f"{where}: {key} is {type(data[key]).__name__}, expected {typ.__name__}")
    for name, facts in data["inputs"].items():
        if not isinstance(facts, dict) or "path" not in facts:
            raise RuadaptError(f"{where}: input {name!r} has no path")
    return data


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
