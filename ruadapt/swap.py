"""``ruadapt swap``: give a model a new vocabulary (docs/design.md §2-3).

Input rows of tokens the base already has (same bytes, or the same special-token content) are copied
bit-identically; every new token starts from the base rows of the pieces the *base* tokenizer cuts its bytes
into, combined by an init rule (:mod:`ruadapt.vocab.init_rules`, one per matrix of an untied model); rows that
belong to no token (padding) get the mean row. Untied models build the lm_head from the base lm_head, never from
input rows. Only the new rows are held in memory: a copied row, like every other
tensor, goes from the input file to the output by the kernel (byte ranges, or whole shards without a
vocabulary matrix), and of the old matrices only the pieces' rows are read besides one chunked scan.

:func:`plan_swap` checks everything and decides every row without writing (``ruadapt swap --dry-run`` prints it);
:func:`write_swap` builds the new rows and writes (docs/stages.md).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from .errors import RuadaptError
from .io.checkpoint import CheckpointReader, RowBlocks
from .io.outdir import check_output_dir
from .io.record import StageRecord
from .io.tokdir import (
    TokenizerFiles,
    load_tokenizer,
    remap_model_configs,
    tokenizer_json_path,
    tokenizer_pipeline,
    tokenizer_size,
)
from .mistakes import refuse
from .options import PlanFigures, SwapOptions
from .vocab.arch import Arch, arch_for_config, check_vocab_tensors, model_fingerprint, padded_rows, padding_multiple
from .vocab.init_rules import DEFAULT_INPUT, DEFAULT_OUTPUT, DEFAULT_TIED
from .vocab.output import VocabOutput, output_tensor_bytes, write_vocab_output
from .vocab.pieces import TokenCodec, VocabMap, build_vocab_map, matrix_blocks, mean_of_rows, rows_are_finite

log = logging.getLogger(__name__)


@dataclass
class SwapPlan:
    """What :func:`plan_swap` decided and checked; :func:`write_swap` executes it."""

    options: SwapOptions
    record: StageRecord
    reader: CheckpointReader
    arch: Arch
    new_tok: Tokenizer
    vmap: VocabMap  # one entry per row of the new matrices
    n_base: int
    base_rows: int
    multiple: int
    extension: bool
    config: dict
    gen_config: dict | None
    id_changes: dict
    max_shard_bytes: int | None
    rules: dict[str, str]  # init rule per matrix: {"tied": r} or {"input": r, "output": r}

    def matrix_names(self) -> list[str]:
        """The matrices swap builds: the input embedding, and the lm_head of an untied model."""
        return list(self.rule_of())

    def rule_of(self) -> dict[str, str]:
        """Each matrix swap builds → the init rule of its new rows."""
        if self.arch.tied:
            return {self.arch.input_name: self.rules["tied"]}
        return {self.arch.input_name: self.rules["input"], self.arch.output_name: self.rules["output"]}

    def figures(self) -> PlanFigures:
        """Rows by kind, bytes to write and the new rows held in memory (every built matrix's computed rows
        plus one 512-row float32 averaging chunk), as ``--dry-run`` prints them."""
        computed = len(self.vmap.mean_rows()) + len(self.vmap.pad_rows())
        held = 0
        for name in self.matrix_names():
            info = self.reader.info(name)
            held += computed * info.nbytes // info.shape[0] + 512 * info.shape[1] * 4
        return PlanFigures(
            "swap",
            self.options.out,
            self.vmap.n_rows,
            self.vmap.summary(),
            output_tensor_bytes(self.reader, self.arch, self.vmap.n_rows),
            held,
            ("the NaN/inf scan of the base matrices runs when written, before any output exists",),
        )


def swap_model(model_dir: Path, tokenizer_dir: Path, out: Path, **options) -> dict:
    """Write ``out``: ``model_dir`` with the vocabulary of ``tokenizer_dir``; ``options``: the other fields of
    :class:`SwapOptions`. Returns the stage record."""
    if "allow" in options:
        options["allow"] = tuple(options["allow"])
    return write_swap(plan_swap(SwapOptions(model_dir=model_dir, tokenizer_dir=tokenizer_dir, out=out, **options)))


def init_rules(tied: bool, init: str | None, init_input: str | None, init_output: str | None) -> dict[str, str]:
    """The rule of each matrix, ``{"input": ..., "output": ...}`` (untied) or ``{"tied": ...}``, from the options
    (names already checked by :meth:`SwapOptions.check`). A tied model has one matrix that serves as input and
    lm_head, so only ``--init`` applies to it; the defaults are the measured ones of docs/init.md."""
    if tied:
        if init_input is not None or init_output is not None:
            raise RuadaptError(
                "--init-input/--init-output: the model ties its input embedding and lm_head (one "
                "matrix); give its rule with --init"
            )
        return {"tied": init or DEFAULT_TIED}
    return {"input": init_input or init or DEFAULT_INPUT, "output": init_output or init or DEFAULT_OUTPUT}


def plan_swap(options: SwapOptions) -> SwapPlan:
    """Check everything and decide every row, reading tokenizers and checkpoint headers only; writes nothing."""
    options.check()
    model_dir, tokenizer_dir, out = Path(options.model_dir), Path(options.tokenizer_dir), Path(options.out)
    record = StageRecord("swap", options.record_options())
    check_output_dir(out, [model_dir, tokenizer_dir])
    reader = CheckpointReader(model_dir)
    arch = arch_for_config(reader.config, reader.path / "config.json")
    rules = init_rules(arch.tied, options.init, options.init_input, options.init_output)
    base_tok = load_tokenizer(model_dir, "--model")
    new_tok = load_tokenizer(tokenizer_dir, "--tokenizer")
    check_likely_mistakes(model_dir, tokenizer_dir, base_tok, new_tok, options.allow)
    base_codec, new_codec = TokenCodec(base_tok), TokenCodec(new_tok)  # their sizes = len(tokenizer)
    n_base, n_new = len(base_codec), len(new_codec)
    check_vocab_tensors(reader, arch, n_base)
    base_rows = reader.info(arch.input_name).shape[0]
    max_shard_bytes = options.max_shard_bytes()
    config, gen_config, id_changes = remap_model_configs(reader.path, reader.config, base_tok, new_tok)

    with record.timed("vocab_map"):
        vmap = build_vocab_map(base_codec, new_codec)
    multiple = options.pad_to_multiple_of or padding_multiple(base_rows, n_base)
    # an extension keeps every base id, so its matrices keep at least the base's rows; a replacement (renumbered
    # ids) is sized to its own vocabulary: the base's 151,936 rows under a 16k vocabulary would leave 135,936
    # padding rows in the softmax and the files
    extension = keeps_base_ids(base_tok, new_tok)
    n_rows = padded_rows(max(base_rows, n_new) if extension else n_new, multiple)
    vmap = vmap.with_rows(n_rows)
    log.info(
        "%s: %d base tokens (%d rows) -> %d new tokens, %d rows (multiple %d): %s",
        reader.path.name,
        n_base,
        base_rows,
        n_new,
        n_rows,
        multiple,
        vmap.summary(),
    )
    record.input_model("model", reader, model_fingerprint(reader), model_type=arch.model_type, tied=arch.tied)
    record.input_file("base_tokenizer", tokenizer_json_path(model_dir))
    record.input_file("tokenizer", tokenizer_json_path(tokenizer_dir))
    return SwapPlan(
        options,
        record,
        reader,
        arch,
        new_tok,
        vmap,
        n_base,
        base_rows,
        multiple,
        extension,
        config,
        gen_config,
        id_changes,
        max_shard_bytes,
        rules,
    )


def build_matrices(plan: SwapPlan) -> dict[str, RowBlocks]:
    """The new matrices as row blocks, before any output exists: one chunked pass per matrix for the padding
    row and a NaN/inf check, then the new rows. Runs of old rows are copied from the input file by the writer;
    the computed rows are the only part in memory; the old matrix is mapped lazily and only the pieces' rows
    are read."""
    reader, record, opts = plan.reader, plan.record, plan.options
    built: dict[str, RowBlocks] = {}
    for name, rule in plan.rule_of().items():
        with record.timed(f"scan {name}"):
            mean = mean_of_rows(lambda a, b: reader.get_rows(name, a, b), plan.n_base)  # noqa: B023 (used at once)
            reader.close()  # unmap: touched pages of a mapped shard count as resident memory
            if not rows_are_finite(mean):
                raise RuadaptError(f"{reader.path}: {name} has NaN or infinite values in its token rows")
        with record.timed(f"build {name}"):
            old = reader.get(name)
            blocks = matrix_blocks(
                plan.vmap, old, init=rule, pad_row=mean.to(old.dtype), progress=opts.progress, desc=name
            )
            built[name] = RowBlocks(reader.info(name), blocks)
            del old
            reader.close()
    return built


def write_swap(plan: SwapPlan) -> dict:
    """Build the new matrices and write the output with its record (:func:`ruadapt.vocab.output.write_vocab_output`).
    Returns the stage record."""
    opts, arch, record = plan.options, plan.arch, plan.record
    model_dir, tokenizer_dir = Path(opts.model_dir), Path(opts.tokenizer_dir)
    built = build_matrices(plan)
    output = VocabOutput(
        out=Path(opts.out),
        inputs=[model_dir, tokenizer_dir],
        reader=plan.reader,
        arch=arch,
        rows=plan.vmap.n_rows,
        config=plan.config,
        gen_config=plan.gen_config,
        tokenizer=TokenizerFiles(tokenizer_dir, plan.new_tok, fallback_chat_from=model_dir),
        input_matrix=built.pop(arch.input_name),
        output_matrix=built.pop(arch.output_name, None),
        max_shard_bytes=plan.max_shard_bytes,
        started_from=model_dir,
        tokenizer_dir=tokenizer_dir,
    )
    record.update(
        {
            "vocabulary": "extension" if plan.extension else "replacement",
            "base_tokens": plan.n_base,
            "base_rows": plan.base_rows,
            "padding_multiple": plan.multiple,
            "rows_by_kind": plan.vmap.summary(),
            "init": plan.rules,
            # an extension's new tokens are the ids [n_base, n_new); a replacement's are the "mean" rows of the
            # provenance (``ruadapt eval --start-base`` finds both by the same vocab map, docs/init.md)
            "new_token_ids": [plan.n_base, tokenizer_size(plan.new_tok)] if plan.extension else None,
            "token_id_changes": plan.id_changes,
            "provenance_format": "[copy, first_new_id, first_old_id, run_length] | [pad, first_id, run_length] | "
            "[mean|special, new_id, [old piece ids]]",
            "provenance": plan.vmap.provenance(),
        }
    )
    write_vocab_output(output, record, progress=opts.progress)
    return record.data


def keeps_base_ids(base_tok: Tokenizer, new_tok: Tokenizer) -> bool:
    """Every token of the base (added ones included) has the same id in the new tokenizer."""
    new_vocab = new_tok.get_vocab(with_added_tokens=True)
    return all(new_vocab.get(t) == i for t, i in base_tok.get_vocab(with_added_tokens=True).items())


def check_likely_mistakes(
    model_dir: Path, tokenizer_dir: Path, base_tok: Tokenizer, new_tok: Tokenizer, allow: Collection[str]
) -> None:
    """A tokenizer that changes nothing, or one of another family, is refused unless allowed
    (:mod:`ruadapt.mistakes`)."""
    if base_tok.get_vocab(with_added_tokens=True) == new_tok.get_vocab(with_added_tokens=True):
        refuse(
            "same-tokenizer",
            allow,
            f"{tokenizer_dir}: --tokenizer has exactly the vocabulary of --model {model_dir}; swap would change "
            "nothing",
            "give the new tokenizer's directory (ruadapt tokenizer train --out)",
        )
    ours, theirs = (
        tokenizer_pipeline(tokenizer_json_path(model_dir)),
        tokenizer_pipeline(tokenizer_json_path(tokenizer_dir)),
    )
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        refuse(
            "foreign-tokenizer",
            allow,
            f"{tokenizer_dir}: --tokenizer's {', '.join(differ)} differ from --model's tokenizer; "
            "its tokens cut text differently, so rows copied by equal bytes would not mean the same",
            "train the new tokenizer from this model's own (ruadapt tokenizer train --base MODEL)",
        )
