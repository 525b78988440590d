"""Per-architecture facts (where the vocabulary matrices live, tie rules), read from ``archs.yaml``.

Kept as data so that supporting a new model family is one YAML entry, not another ``if`` branch in every
stage.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import RuadaptError
from ..schema import build

if TYPE_CHECKING:
    from ..io.checkpoint import CheckpointReader


INPUT, OUTPUT = "input", "output"


@dataclass(frozen=True)
class ArchEntry:
    """The schema of one ``archs.yaml`` entry (read by :func:`ruadapt.schema.build`: a misspelt key is an error)."""

    input: list[str]  # input-embedding tensors; the first is canonical, the others tied copies (T5)
    output: str  # the lm_head tensor
    tie_default: bool  # tied when the config does not say
    tie_key: str = "tie_word_embeddings"  # config key (dotted for nested configs) that says whether it is tied
    vocab_size_keys: list[str] = field(default_factory=lambda: ["vocab_size"])  # config keys holding the row count
    scaled_input: bool = False
    encoder_decoder: bool = False


@dataclass(frozen=True)
class Arch:
    """Vocabulary layout of one ``model_type``, resolved against one model's config."""

    model_type: str
    input_names: tuple[str, ...]
    output_name: str
    tied: bool
    scaled_input: bool = False
    encoder_decoder: bool = False
    vocab_size_keys: tuple[str, ...] = ("vocab_size",)

    @property
    def input_name(self) -> str:
        """The canonical input-embedding tensor (the first listed; the others are tied copies)."""
        return self.input_names[0]

    def vocab_tensor_names(self) -> tuple[str, ...]:
        """Every tensor whose rows are indexed by token id."""
        return self.input_names if self.tied else self.input_names + (self.output_name,)

    def matrix_roles(self, stored: Iterable[str]) -> dict[str, str]:
        """The tie rule: which new matrix (:data:`INPUT` or :data:`OUTPUT`) each stored vocabulary tensor gets.

        Every stored input name gets the input matrix; the lm_head gets its own matrix when untied, and the
        input matrix when the model is tied but its checkpoint stores lm_head anyway (a stale lm_head there
        would silently break the tie on load). Swap, LEP, trim and the training export all write by this."""
        stored = set(stored)
        roles = {n: INPUT for n in self.input_names if n in stored}
        if not self.tied:
            roles[self.output_name] = OUTPUT
        elif self.output_name in stored:
            roles[self.output_name] = INPUT
        return roles

    def with_vocab_size(self, config: dict, rows: int) -> dict:
        """A copy of ``config`` whose every vocab-size key (``vocab_size_keys`` in archs.yaml) says ``rows``."""
        config = copy.deepcopy(config)
        for key in self.vocab_size_keys:
            *path, last = key.split(".")
            node = config
            for p in path:
                node = node.setdefault(p, {})
            node[last] = rows
        return config


def parse_arch_table(text: str, where: str = "archs.yaml") -> dict[str, ArchEntry]:
    """``model_type -> ArchEntry`` from the YAML text of an architecture table; a bad entry is a one-line error."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise RuadaptError(f"{where}: expected a mapping of model_type to entries")
    return {str(k): build(ArchEntry, v if isinstance(v, dict) else {}, f"{where}: {k}") for k, v in raw.items()}


@functools.cache
def _table() -> dict[str, ArchEntry]:
    return parse_arch_table(
        resources.files("ruadapt.vocab").joinpath("archs.yaml").read_text(encoding="utf-8"), "ruadapt/vocab/archs.yaml"
    )


def supported_model_types() -> list[str]:
    return sorted(_table())


def _lookup(config: dict, key: str) -> object:
    node: object = config
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


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
    tied = _lookup(config, entry.tie_key)
    return Arch(
        model_type=model_type,
        input_names=tuple(entry.input),
        output_name=entry.output,
        tied=entry.tie_default if tied is None else bool(tied),
        scaled_input=entry.scaled_input,
        encoder_decoder=entry.encoder_decoder,
        vocab_size_keys=tuple(entry.vocab_size_keys),
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


def check_vocab_tensors(reader: CheckpointReader, arch: Arch, n_tokens: int, option: str | None = None) -> None:
    """The vocabulary matrices exist, are rows × hidden, agree in shape and cover every token id of the
    checkpoint's tokenizer. ``option`` (``--instruct``) names the input in the messages of a stage with several."""
    cfg_path = reader.path / "config.json"
    who = f"{option} " if option else ""
    if arch.input_name not in reader:
        raise RuadaptError(
            f"{reader.path}: {who}input embedding {arch.input_name} not in the checkpoint ({arch.model_type})"
        )
    shape = reader.info(arch.input_name).shape
    if len(shape) != 2:
        raise RuadaptError(f"{reader.path}: {who}{arch.input_name} has shape {shape}, expected rows × hidden")
    rows, d = shape
    if not arch.tied:
        if arch.output_name not in reader:
            raise RuadaptError(
                f"{cfg_path}: tie_word_embeddings is false but {arch.output_name} is missing from {who}{reader.path}"
            )
        if reader.info(arch.output_name).shape != (rows, d):
            raise RuadaptError(
                f"{reader.path}: {who}{arch.output_name} shape {reader.info(arch.output_name).shape} differs from "
                f"{arch.input_name} {(rows, d)}"
            )
    if rows < n_tokens:
        raise RuadaptError(
            f"{reader.path}: {who}embedding has {rows} rows but its tokenizer has {n_tokens} tokens; ids past the rows "
            "have no embedding"
        )


def model_fingerprint(reader: CheckpointReader) -> str:
    """The fingerprint of a checkpoint as every stage record stores it: headers, sampled windows and the whole
    vocabulary matrices of its architecture (:meth:`ruadapt.io.checkpoint.CheckpointReader.fingerprint`).

    Here and not in the reader, because which tensors are the vocabulary is this module's knowledge and io sits
    below it. An unknown model type is not an error for a fingerprint: headers and windows only."""
    try:
        names = arch_for_config(reader.config).vocab_tensor_names()
    except RuadaptError:
        names = ()
    return reader.fingerprint(whole=names)
