"""``ruadapt swap``: give a model a new vocabulary (docs/design.md §2-3).

Input rows of tokens the base already has (same bytes, or the same special-token content) are copied
bit-identically; every new token starts from the base rows of the pieces the *base* tokenizer cuts its bytes
into, combined by an init rule (:mod:`ruadapt.vocab.init_rules`, one per matrix of an untied model); rows that
belong to no token (padding) get the mean row. Untied models build the lm_head from the base lm_head, never from
input rows. Only the new rows are held in memory: a copied row, like every other
tensor, goes from the input file to the output by the kernel (byte ranges, or whole shards without a
vocabulary matrix), and of the old matrices only the pieces' rows are read besides one chunked scan.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Collection

from tokenizers import Tokenizer

from .vocab.arch import arch_for_config, check_vocab_tensors, padded_rows, padding_multiple
from .io.checkpoint import CheckpointReader, RowBlocks, parse_size
from .errors import RuadaptError
from .mistakes import refuse
from .io.outdir import check_output_dir
from .io.record import StageRecord
from .io.tokdir import TokenizerFiles, load_tokenizer, remap_model_configs, tokenizer_json_path, tokenizer_pipeline
from .vocab.init_rules import DEFAULT_INPUT, DEFAULT_OUTPUT, DEFAULT_TIED, INPUT_RULES, OUTPUT_RULES
from .vocab.pieces import TokenCodec, build_vocab_map, matrix_blocks, mean_of_rows, rows_are_finite
from .vocab.output import VocabOutput, write_vocab_output

log = logging.getLogger(__name__)

INITS = OUTPUT_RULES  # --init: the rule of a tied model's one matrix, or of both matrices of an untied one


def init_rules(tied: bool, init: str | None, init_input: str | None, init_output: str | None) -> dict[str, str]:
    """The rule of each matrix, ``{"input": ..., "output": ...}`` (untied) or ``{"tied": ...}``, from the options.

    A tied model has one matrix that serves as input and lm_head, so only ``--init`` applies to it."""
    for option, value, allowed in (("--init", init, INITS), ("--init-input", init_input, INPUT_RULES),
                                   ("--init-output", init_output, OUTPUT_RULES)):
        if value is not None and value not in allowed:
            raise RuadaptError(f"{option} {value!r} is not one of {', '.join(allowed)}")
    if tied:
        if init_input is not None or init_output is not None:
            raise RuadaptError("--init-input/--init-output: the model ties its input embedding and lm_head (one "
                               "matrix); give its rule with --init")
        return {"tied": init or DEFAULT_TIED}
    return {"input": init_input or init or DEFAULT_INPUT, "output": init_output or init or DEFAULT_OUTPUT}


def swap_model(
    model_dir: Path,
    tokenizer_dir: Path,
    out: Path,
    *,
    init: str | None = None,
    init_input: str | None = None,
    init_output: str | None = None,
    pad_to_multiple_of: int | None = None,
    max_shard_size: str | int | None = None,
    allow: Collection[str] = (),
    progress: bool = True,
) -> dict:
    """Write ``out``: ``model_dir`` with the vocabulary of ``tokenizer_dir``. Returns the stage record.
    ``allow``: likely mistakes (:mod:`ruadapt.mistakes`) to go on with. ``init`` / ``init_input`` /
    ``init_output``: rules of :mod:`ruadapt.vocab.pieces` for the new rows (see :func:`init_rules`)."""
    init_rules(False, init, init_input, init_output)  # names checked before anything is read
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise RuadaptError(f"--pad-to-multiple-of must be ≥ 1, got {pad_to_multiple_of}")
    model_dir, tokenizer_dir, out = Path(model_dir), Path(tokenizer_dir), Path(out)
    record = StageRecord("swap", {"init": init, "init_input": init_input, "init_output": init_output,
                                  "pad_to_multiple_of": pad_to_multiple_of, "max_shard_size": max_shard_size,
                                  "allow": sorted(allow)})

    # ---- everything is validated before any work and before any output exists
    check_output_dir(out, [model_dir, tokenizer_dir])
    reader = CheckpointReader(model_dir)
    arch = arch_for_config(reader.config, reader.path / "config.json")
    rules = init_rules(arch.tied, init, init_input, init_output)
    base_tok = load_tokenizer(model_dir, "--model")
    new_tok = load_tokenizer(tokenizer_dir, "--tokenizer")
    check_likely_mistakes(model_dir, tokenizer_dir, base_tok, new_tok, allow)
    base_codec, new_codec = TokenCodec(base_tok), TokenCodec(new_tok)  # their sizes = len(tokenizer)
    n_base, n_new = len(base_codec), len(new_codec)
    check_vocab_tensors(reader, arch, n_base)
    base_rows, hidden = reader.info(arch.input_name).shape
    max_shard_bytes = parse_size(max_shard_size) if max_shard_size is not None else None
    config, gen_config, id_changes = remap_model_configs(reader.path, reader.config, base_tok, new_tok)

    with record.timed("vocab_map"):
        vmap = build_vocab_map(base_codec, new_codec)
    multiple = pad_to_multiple_of or padding_multiple(base_rows, n_base)
    # an extension keeps every base id, so its matrices keep at least the base's rows; a replacement (renumbered
    # ids) is sized to its own vocabulary: the base's 151,936 rows under a 16k vocabulary would leave 135,936
    # padding rows in the softmax and the files
    extension = keeps_base_ids(base_tok, new_tok)
    n_rows = padded_rows(max(base_rows, n_new) if extension else n_new, multiple)
    vmap = vmap.with_rows(n_rows)
    counts = vmap.summary()
    log.info(
        "%s: %d base tokens (%d rows) -> %d new tokens, %d rows (multiple %d): %s",
        reader.path.name, n_base, base_rows, n_new, n_rows, multiple, counts,
    )

    record.input_model("model", reader, model_type=arch.model_type, tied=arch.tied)
    record.input_file("base_tokenizer", tokenizer_json_path(model_dir))
    record.input_file("tokenizer", tokenizer_json_path(tokenizer_dir))

    # Before any output exists: one chunked pass per matrix for the padding row and a NaN/inf check, then the new
    # rows. A new matrix is kept as row blocks: runs of old rows (copied from the input file by the writer) and
    # the computed rows, the only part in memory; the old matrix is mapped lazily and only the pieces' rows are read.
    built: dict[str, RowBlocks] = {}
    rule_of = {arch.input_name: rules.get("tied") or rules["input"]}
    if not arch.tied:
        rule_of[arch.output_name] = rules["output"]
    for name, rule in rule_of.items():
        with record.timed(f"scan {name}"):
            mean = mean_of_rows(lambda a, b: reader.get_rows(name, a, b), n_base)  # noqa: B023 (used at once)
            reader.close()  # unmap: touched pages of a mapped shard count as resident memory
            if not rows_are_finite(mean):
                raise RuadaptError(f"{reader.path}: {name} has NaN or infinite values in its token rows")
        with record.timed(f"build {name}"):
            old = reader.get(name)
            blocks = matrix_blocks(vmap, old, init=rule, pad_row=mean.to(old.dtype), progress=progress, desc=name)
            built[name] = RowBlocks(reader.info(name), blocks)
            del old
            reader.close()

    plan = VocabOutput(
        out=out,
        inputs=[model_dir, tokenizer_dir],
        reader=reader,
        arch=arch,
        rows=n_rows,
        config=config,
        gen_config=gen_config,
        tokenizer=TokenizerFiles(tokenizer_dir, new_tok, fallback_chat_from=model_dir),
        input_matrix=built.pop(arch.input_name),
        output_matrix=built.pop(arch.output_name, None),
        max_shard_bytes=max_shard_bytes,
        started_from=model_dir,
        tokenizer_dir=tokenizer_dir,
    )
    record.update(
        {
            "vocabulary": "extension" if extension else "replacement",
            "base_tokens": n_base,
            "base_rows": base_rows,
            "padding_multiple": multiple,
            "rows_by_kind": counts,
            "init": rules,
            # an extension's new tokens are the ids [n_base, n_new); a replacement's are the "mean" rows of the
            # provenance (``ruadapt eval --start-base`` finds both by the same vocab map, docs/init.md)
            "new_token_ids": [n_base, n_new] if extension else None,
            "token_id_changes": id_changes,
            "provenance_format": "[copy, first_new_id, first_old_id, run_length] | [pad, first_id, run_length] | "
            "[mean|special, new_id, [old piece ids]]",
            "provenance": vmap.provenance(),
        }
    )
    write_vocab_output(plan, record, progress=progress)
    return record.data


def keeps_base_ids(base_tok: Tokenizer, new_tok: Tokenizer) -> bool:
    """Every token of the base (added ones included) has the same id in the new tokenizer."""
    new_vocab = new_tok.get_vocab(with_added_tokens=True)
    return all(new_vocab.get(t) == i for t, i in base_tok.get_vocab(with_added_tokens=True).items())


def check_likely_mistakes(model_dir: Path, tokenizer_dir: Path, base_tok: Tokenizer, new_tok: Tokenizer,
                          allow: Collection[str]) -> None:
    """A tokenizer that changes nothing, or one of another family, is refused unless allowed (:mod:`ruadapt.mistakes`)."""
    if base_tok.get_vocab(with_added_tokens=True) == new_tok.get_vocab(with_added_tokens=True):
        refuse("same-tokenizer", allow,
               f"{tokenizer_dir}: --tokenizer has exactly the vocabulary of --model {model_dir}; swap would change nothing",
               "give the new tokenizer's directory (ruadapt tokenizer train --out)")
    ours, theirs = tokenizer_pipeline(tokenizer_json_path(model_dir)), tokenizer_pipeline(tokenizer_json_path(tokenizer_dir))
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        refuse("foreign-tokenizer", allow,
               f"{tokenizer_dir}: --tokenizer's {', '.join(differ)} differ from --model's tokenizer; "
               "its tokens cut text differently, so rows copied by equal bytes would not mean the same",
               "train the new tokenizer from this model's own (ruadapt tokenizer train --base MODEL)")
