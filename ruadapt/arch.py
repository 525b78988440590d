"""Per-architecture facts (where the vocabulary matrices live, tie rules), read from ``archs.yaml``.

Kept as data so that supporting a new model family is one YAML entry, not another ``if`` branch in every
stage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import RuadaptError

if TYPE_CHECKING:
    from .checkpoint import CheckpointReader


@dataclass(frozen=True)
class Arch:
    """Vocabulary layout of one ``model_type``."""

    model_type: str
    input_names: tuple[str, ...]
    output_name: str
    tied: bool
    scaled_input: bool = False
    encoder_decoder: bool = False

    @property
    def input_name(self) -> str:
        """The canonical input-embedding tensor (the first listed; the others are tied copies)."""
        return self.input_names[0]

    def vocab_tensor_names(self) -> tuple[str, ...]:
        """Every tensor whose rows are indexed by token id."""
        return self.input_names if self.tied else self.input_names + (self.output_name,)


@functools.cache
def _table() -> dict[str, dict]:
    text = resources.files("ruadapt").joinpath("archs.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def supported_model_types() -> list[str]:
    return sorted(_table())


def arch_for_config(config: dict, config_path: Path | str = "config.json") -> Arch:
    """The :class:`Arch` of a model from its parsed ``config.json``; unknown types are a user error."""
    model_type = config.get("model_type")
    table = _table()
    if model_type not in table:
        raise RuadaptError(
            f"{config_path}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(supported_model_types())}"
        )
    entry = table[model_type]
    tied = config.get("tie_word_embeddings")
    if tied is None:
        tied = bool(entry.get("tie_default", False))
    return Arch(
        model_type=model_type,
        input_names=tuple(entry["input"]),
        output_name=entry["output"],
        tied=bool(tied),
        scaled_input=bool(entry.get("scaled_input", False)),
        encoder_decoder=bool(entry.get("encoder_decoder", False)),
    )


# ------------------------------------------------------------------ vocabulary rows: padding and checks
def padding_multiple(rows: int, n_tokens: int, cap: int = 1024) -> int:
    """The multiple a checkpoint padded its vocabulary rows to: 1 when unpadded, else the largest power of two
    dividing ``rows`` (Qwen2.5 151,936 → 128, 152,064 → 512; Gemma-3 262,208 → 64)."""
    if rows <= n_tokens:
        return 1
    m = 1
    while rows % (m * 2) == 0 and m * 2 <= cap:
        m *= 2
    return m


def padded_rows(n_rows_wanted: int, multiple: int) -> int:
    """``n_rows_wanted`` rounded up to ``multiple``."""
    return -(-n_rows_wanted // multiple) * multiple


def check_vocab_tensors(reader: "CheckpointReader", arch: Arch, n_tokens: int) -> None:
    """The vocabulary matrices exist, agree in shape and cover every token id of the checkpoint's tokenizer."""
    cfg_path = reader.path / "config.json"
    if arch.input_name not in reader:
        raise RuadaptError(f"{reader.path}: input embedding {arch.input_name} not in the checkpoint ({arch.model_type})")
    rows, d = reader.info(arch.input_name).shape
    if not arch.tied:
        if arch.output_name not in reader:
            raise RuadaptError(
                f"{cfg_path}: tie_word_embeddings is false but {arch.output_name} is missing from {reader.path}"
            )
        if reader.info(arch.output_name).shape != (rows, d):
            raise RuadaptError(
                f"{reader.path}: {arch.output_name} shape {reader.info(arch.output_name).shape} differs from "
                f"{arch.input_name} {(rows, d)}"
            )
    if rows < n_tokens:
        raise RuadaptError(
            f"{reader.path}: embedding has {rows} rows but its tokenizer has {n_tokens} tokens; ids past the rows "
            "have no embedding"
        )
