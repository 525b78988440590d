"""The machine-readable record every stage writes next to its output: ``ruadapt_<stage>.json``.

It says what went in (paths and fingerprints), with which options, with which library versions, how long each
step took and what was done, so a later stage or a person can check and reproduce the run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import __version__

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


class StageRecord:
    """Collects a stage's inputs, options, timings and results; ``write`` puts them into ``ruadapt_<stage>.json``."""

    def __init__(self, stage: str, options: dict[str, Any] | None = None):
        self.stage = stage
        self.data: dict[str, Any] = {
            "stage": stage,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "options": {k: _plain(v) for k, v in (options or {}).items()},
            "inputs": {},
            "timings_s": {},
            "versions": versions(),
        }
        self._t0 = time.perf_counter()

    def input(self, name: str, path: Path | str, **facts: Any) -> None:
        self.data["inputs"][name] = {"path": str(Path(path).resolve()), **{k: _plain(v) for k, v in facts.items()}}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = _plain(value)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.data["timings_s"][step] = round(time.perf_counter() - t, 4)

    def write(self, directory: Path) -> Path:
        self.data["timings_s"]["total"] = round(time.perf_counter() - self._t0, 4)
        path = Path(directory) / f"ruadapt_{self.stage}.json"
        path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
