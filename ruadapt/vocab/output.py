"""The one ending of every stage that changes a model's vocabulary (``swap``, ``lep``, ``trim``).

A stage validates its inputs and decides everything first, into a :class:`VocabOutput` plan: the checkpoint
every other tensor is copied from, the new input matrix (and lm_head of an untied model), the row count, the
configs with their token ids remapped and the tokenizer to write. :func:`write_vocab_output` then does what
the stages used to repeat, in one way:

* the tie rule (:meth:`ruadapt.vocab.arch.Arch.matrix_roles`): which stored tensor gets which new matrix;
* the vocab-size keys of the config (``vocab_size_keys`` in ``archs.yaml``), and a check that every token id
  the configs name lies inside the new rows;
* an atomic output directory (:mod:`ruadapt.io.outdir`): temporary folder beside the target, renamed on success;
* the shards (:func:`ruadapt.io.checkpoint.write_with_replacements`: unchanged tensors copied through), then a
  check of the written vocabulary tensors' shapes from their headers;
* the tokenizer files, checked on reload (:func:`ruadapt.io.tokdir.write_tokenizer`);
* the stage record, with the facts every stage reports under ``result`` (:mod:`ruadapt.io.record`);
* the model card and lineage (:mod:`ruadapt.io.model_card`).

The options these stages share are declared once (:class:`ruadapt.options.VocabOutputOptions`); a stage's
``plan_<stage>(options)`` checks everything without writing and :func:`output_tensor_bytes` sizes its output for
``--dry-run``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RuadaptError
from ..io.checkpoint import CheckpointReader, Replacement, write_with_replacements
from ..io.model_card import write_model_card
from ..io.outdir import atomic_output_dir
from ..io.record import StageRecord
from ..io.tokdir import TOKEN_ID_KEYS, TokenizerFiles, tokenizer_size, write_json, write_tokenizer
from .arch import INPUT, Arch

log = logging.getLogger(__name__)


def output_tensor_bytes(reader: CheckpointReader, arch: Arch, rows: int) -> int:
    """Bytes of every tensor of the output: the input's, with each vocabulary matrix resized to ``rows`` rows."""
    vocab = arch.matrix_roles(reader.infos)
    total = 0
    for name, info in reader.infos.items():
        if name in vocab:
            total += info.nbytes // max(info.shape[0], 1) * rows
        else:
            total += info.nbytes
    return total


@dataclass
class VocabOutput:
    """Everything a vocabulary-changing stage decided, before anything is written.

    ``input_matrix`` / ``output_matrix`` are tensors, :class:`ruadapt.io.checkpoint.RowBlocks` or zero-argument
    callables that build the matrix when its shard is written (one big matrix in memory at a time);
    ``output_matrix`` is for untied models only. ``extra`` replaces other tensors (LEP's LoRA-merged weights)
    and wins over the tie rule (trim slices each stored copy of a tied matrix by its own rows).
    """

    out: Path
    inputs: Sequence[Path]  # the output must not be one of them or lie inside one
    reader: CheckpointReader  # every tensor not replaced is copied from this checkpoint
    arch: Arch
    rows: int
    config: dict  # config.json with token ids already remapped; the vocab-size keys are set on write
    gen_config: dict | None
    tokenizer: TokenizerFiles
    input_matrix: Replacement
    output_matrix: Replacement | None = None
    extra: Mapping[str, Replacement] = field(default_factory=dict)
    max_shard_bytes: int | None = None
    # model card (ruadapt.io.model_card): the model this output continues, others it is built from, its tokenizer dir
    started_from: Path | None = None
    other_inputs: Mapping[str, Path] = field(default_factory=dict)
    tokenizer_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.arch.tied and self.output_matrix is None:
            raise ValueError(f"{self.arch.model_type} is untied: the plan needs an output matrix")

    def replacements(self) -> dict[str, Replacement]:
        """Stored tensor name → new value, by the tie rule. An input matrix built by a callable and stored under
        several names (T5's tied copies, a tied lm_head stored anyway) is built once and dropped after its last
        write, so it is not held while another big matrix is built."""
        roles = self.arch.matrix_roles(self.reader.infos)
        out: dict[str, Replacement] = {}
        users = [n for n, role in roles.items() if role == INPUT and n not in self.extra]
        if callable(self.input_matrix) and len(users) > 1:
            build, cache, left = self.input_matrix, {}, {"n": len(users)}

            def shared():
                if "m" not in cache:
                    cache["m"] = build()
                left["n"] -= 1
                return cache["m"] if left["n"] else cache.pop("m")

            out.update({n: shared for n in users})
        else:
            out.update({n: self.input_matrix for n in users})
        out.update({n: self.output_matrix for n, role in roles.items() if role != INPUT})
        out.update(self.extra)  # wins over the tie rule: trim keeps each stored copy's own rows
        return out


def check_token_ids(config: dict, rows: int, where: str) -> None:
    """Every token id a config names (bos/eos/pad/...) must lie inside the ``rows`` of the new matrices."""
    for key in TOKEN_ID_KEYS:
        value = config.get(key)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and int(v) >= rows:
                raise RuadaptError(
                    f"{where}: {key} {v} lies past the {rows} rows of the new vocabulary and is no token"
                )


def write_vocab_output(
    plan: VocabOutput,
    record: StageRecord,
    *,
    progress: bool = True,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``plan`` into ``plan.out`` atomically with its record. ``finish(tmp)`` runs last, inside the temporary
    directory (stage-specific files and result entries). Returns the output path."""
    config = plan.arch.with_vocab_size(plan.config, plan.rows)
    check_token_ids(config, plan.rows, str(plan.reader.path / "config.json"))
    if plan.gen_config is not None:
        check_token_ids(plan.gen_config, plan.rows, str(plan.reader.path / "generation_config.json"))
    replacements = plan.replacements()
    with atomic_output_dir(plan.out, plan.inputs) as tmp:
        with record.timed("write"):
            write_with_replacements(
                plan.reader, tmp, replacements, max_shard_bytes=plan.max_shard_bytes, progress=progress
            )
        replacements.clear()  # drop the new matrices before the rest is written
        plan.input_matrix = plan.output_matrix = None
        plan.extra = {}
        plan.reader.close()
        hidden = _check_written_matrices(tmp, plan)
        write_json(tmp / "config.json", config)
        if plan.gen_config is not None:
            write_json(tmp / "generation_config.json", plan.gen_config)
        record.set("tokenizer_files", write_tokenizer(tmp, plan.tokenizer, plan.rows))
        record.update(
            {
                "model_type": plan.arch.model_type,
                "tied": plan.arch.tied,
                "hidden_size": hidden,
                "rows": plan.rows,
                "tokens": tokenizer_size(plan.tokenizer.tokenizer),
                "vocab_tensors": sorted(plan.arch.matrix_roles(plan.reader.infos)),
            }
        )
        if finish is not None:
            finish(tmp)
        record.write(tmp)
        write_model_card(
            tmp,
            record.data,
            started_from=plan.started_from or plan.reader.path,
            other_inputs=dict(plan.other_inputs),
            tokenizer_dir=plan.tokenizer_dir,
        )
    log.info("wrote %s", plan.out)
    return Path(plan.out)


def _check_written_matrices(tmp: Path, plan: VocabOutput) -> int:
    """The written vocabulary tensors have ``plan.rows`` rows and one hidden size (from the headers alone)."""
    written = CheckpointReader(tmp, need_config=False)
    shapes = {n: written.info(n).shape for n in plan.arch.matrix_roles(plan.reader.infos)}
    hidden = {s[1] for s in shapes.values() if len(s) == 2}
    if any(len(s) != 2 or s[0] != plan.rows for s in shapes.values()) or len(hidden) != 1:
        raise RuadaptError(
            f"{plan.out}: written vocabulary tensors have shapes {shapes}, expected {plan.rows} rows each; output not "
            "written"
        )
    return hidden.pop()
