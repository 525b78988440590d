"""``ruadapt trim``: shrink a model's vocabulary to the tokens a corpus uses (the mT5 → Russian-T5 recipe).

Steps: count the tokens of the corpus with the model's own tokenizer; keep specials, the alphabet, the selected
tokens and their BPE closure (:mod:`ruadapt.trim.tokenizer`); renumber the kept tokens compactly in their old
order; copy their rows of every vocabulary matrix (input embedding and its tied copies, the lm_head of untied
models) bit-identically, pad like ``swap`` pads, and remap every special id in the configs. Like ``swap``, the
vocabulary matrices are written as row blocks: runs of kept rows go from the input file to the output, and only
the padding rows are in memory; every other tensor streams through (shards without one are copied as files).

:func:`plan_trim` counts, selects and checks without writing (``ruadapt trim --dry-run`` prints it);
:func:`write_trim` measures and writes (docs/stages.md). :func:`select_tokens` is the tokenizer half of the plan.

:func:`trim_tokenizer` does the tokenizer half alone, for a tokenizer directory without weights (e.g. the demo
trims Qwen2.5's vocabulary before training a tiny base model from scratch).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenizers import Tokenizer

from ..errors import RuadaptError
from ..io.checkpoint import CheckpointReader, RowBlocks, read_json
from ..io.corpus import check_corpus, read_documents, refuse_json_as_text
from ..io.outdir import atomic_output_dir, check_output_dir
from ..io.record import StageRecord
from ..io.tokdir import (
    TokenizerFiles,
    load_tokenizer,
    remap_model_configs,
    tokenizer_json_path,
    write_json,
    write_tokenizer,
)
from ..options import PlanFigures, TrimOptions
from ..vocab.arch import Arch, arch_for_config, check_vocab_tensors, model_fingerprint, padded_rows, padding_multiple
from ..vocab.output import VocabOutput, check_token_ids, output_tensor_bytes, write_vocab_output
from ..vocab.pieces import mean_of_rows
from .corpus import TokenCounts, compare_segmentation, count_tokens
from .tokenizer import Selection, VocabSurgeon

log = logging.getLogger(__name__)

ID_MAP_FILE = "id_map.json"


@dataclass
class TokenSelection:
    """The tokenizer half of a trim: the corpus counts, the kept tokens and the rebuilt tokenizer."""

    old_tok: Tokenizer
    new_tok: Tokenizer
    old_to_new: dict[int, int]
    selection: Selection
    counts: TokenCounts
    n_old: int
    n_new: int


def read_keep_tokens(path: Path, surgeon: VocabSurgeon) -> list[int]:
    """Ids of the tokens listed in ``path``: one per line, spelled as in tokenizer.json (``Ġпривет``, ``▁мир``,
    ``<|im_start|>``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RuadaptError(f"{path}: --keep-tokens file not found")
    by_content = {c: i for i, c in surgeon.added.items()}
    ids = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        token = line.rstrip("\r")
        if not token:
            continue
        i = surgeon.id_of.get(token, by_content.get(token))
        if i is None:
            raise RuadaptError(
                f"{path}:{n}: {token!r} is not a token of the tokenizer (write tokens as tokenizer.json spells them)"
            )
        ids.append(i)
    return ids


def select_tokens(
    tokenizer_dir: Path,
    corpora: Sequence[Path],
    *,
    keep_top: int | None = None,
    min_count: int | None = None,
    keep_tokens: Path | None = None,
    option: str = "--model",
    allow: Collection[str] = (),
    progress: bool = True,
) -> TokenSelection:
    """Count, select and rebuild the tokenizer of ``tokenizer_dir`` (no output written)."""
    if keep_top is not None and min_count is not None:
        raise RuadaptError("--keep-top and --min-count exclude each other; give one")
    if keep_top is not None and keep_top < 1:
        raise RuadaptError(f"--keep-top must be positive, got {keep_top}")
    if min_count is not None and min_count < 1:
        raise RuadaptError(f"--min-count must be ≥ 1, got {min_count}")
    if not corpora:
        raise RuadaptError("--corpus: give at least one text file")
    for f in corpora:  # fail on a missing or empty file before minutes of counting the others
        check_corpus(Path(f))
        refuse_json_as_text(Path(f), "--corpus", allow)
    old_tok = load_tokenizer(tokenizer_dir, option)
    path = tokenizer_json_path(tokenizer_dir, option)
    surgeon = VocabSurgeon(old_tok, str(path), spec=read_json(path))
    keep_ids = read_keep_tokens(keep_tokens, surgeon) if keep_tokens is not None else []
    n_old = surgeon.size
    counts = count_tokens(old_tok, corpora, n_old, progress=progress)
    selection = surgeon.select(counts.counts, keep_top=keep_top, min_count=min_count, keep_tokens=keep_ids)
    new_tok, old_to_new = surgeon.rebuild(selection.kept)
    return TokenSelection(old_tok, new_tok, old_to_new, selection, counts, n_old, len(old_to_new))


def _measure(plan: TokenSelection, corpora: Sequence[Path], eval_texts: Sequence[Path], progress: bool) -> dict:
    """Segmentation before/after on the corpus (all files together) and on each eval text."""
    corpus_lines = [line for f in corpora for line in read_documents(f)]
    out = {
        "corpus": compare_segmentation(
            plan.old_tok, plan.new_tok, plan.old_to_new, corpus_lines, desc="corpus after trim", progress=progress
        ),
        "eval": {},
    }
    out["corpus"]["coverage_of_token_occurrences"] = round(plan.counts.coverage(plan.selection.kept), 6)
    out["corpus"]["distinct_tokens_used"] = int((plan.counts.counts > 0).sum())
    for f in eval_texts:
        lines = read_documents(Path(f), "--eval-text")
        out["eval"][str(f)] = compare_segmentation(
            plan.old_tok, plan.new_tok, plan.old_to_new, lines, desc=Path(f).name, progress=progress
        )
    return out


def _write_id_map(dst: Path, plan: TokenSelection) -> None:
    write_json(
        dst / ID_MAP_FILE,
        {
            "about": "old token id -> new token id for every kept token; new_to_old[j] is the old id of new id j",
            "old_tokens": plan.n_old,
            "new_tokens": plan.n_new,
            "old_to_new": {str(o): n for o, n in sorted(plan.old_to_new.items())},
            "new_to_old": plan.selection.kept,
        },
    )


def _record_common(record: StageRecord, plan: TokenSelection, corpora: Sequence[Path], measured: dict) -> None:
    for k, f in enumerate(corpora):
        record.input_file(f"corpus_{k}", f)
    record.set(
        "vocabulary",
        {
            "before": plan.n_old,
            "after": plan.n_new,
            "kept_by_reason": plan.selection.summary(),
            "corpus_lines": plan.counts.lines,
            "corpus_chars": plan.counts.chars,
            "corpus_tokens": plan.counts.tokens,
        },
    )
    record.set("segmentation", measured)


def trim_tokenizer(
    tokenizer_dir: Path,
    corpora: Sequence[Path],
    out: Path,
    *,
    keep_top: int | None = None,
    min_count: int | None = None,
    keep_tokens: Path | None = None,
    eval_texts: Sequence[Path] = (),
    allow: Collection[str] = (),
    progress: bool = True,
) -> dict:
    """Write a trimmed copy of the tokenizer in ``tokenizer_dir`` (+ ``id_map.json``, ``ruadapt_trim.json``)."""
    tokenizer_dir, out = Path(tokenizer_dir), Path(out)
    corpora, eval_texts = [Path(c) for c in corpora], [Path(e) for e in eval_texts]
    check_output_dir(out, [tokenizer_dir])
    for f in eval_texts:
        check_corpus(f, "--eval-text")
    record = StageRecord(
        "trim", {"keep_top": keep_top, "min_count": min_count, "keep_tokens": keep_tokens, "tokenizer_only": True}
    )
    with record.timed("select"):
        plan = select_tokens(
            tokenizer_dir,
            corpora,
            keep_top=keep_top,
            min_count=min_count,
            keep_tokens=keep_tokens,
            option="--tokenizer",
            allow=allow,
            progress=progress,
        )
    with record.timed("measure"):
        measured = _measure(plan, corpora, eval_texts, progress)
    record.input_file("tokenizer", tokenizer_json_path(tokenizer_dir, "--tokenizer"))
    with atomic_output_dir(out, [tokenizer_dir, *corpora, *eval_texts]) as tmp:
        record.set("tokenizer_files", write_tokenizer(tmp, TokenizerFiles(tokenizer_dir, plan.new_tok, rewrite=True)))
        _write_id_map(tmp, plan)
        _record_common(record, plan, corpora, measured)
        record.write(tmp)
    log.info("wrote %s: %d -> %d tokens", out, plan.n_old, plan.n_new)
    return record.data


def _shard_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


@dataclass
class TrimPlan:
    """What :func:`plan_trim` checked and decided for a model; :func:`write_trim` measures and writes it."""

    options: TrimOptions
    record: StageRecord
    reader: CheckpointReader
    arch: Arch
    selection: TokenSelection
    names: list[str]  # every stored vocabulary tensor, each sliced by its own rows
    old_rows: int
    multiple: int
    new_rows: int
    config: dict
    gen_config: dict | None
    id_changes: dict
    max_shard_bytes: int | None

    def figures(self) -> PlanFigures:
        """Rows kept / padded, bytes to write, and the buffers: the padding rows of every stored matrix and one
        4,096-row float32 chunk of the scan for their mean row (kept rows go from file to file)."""
        pads = self.new_rows - self.selection.n_new
        held = 0
        for name in self.names:
            info = self.reader.info(name)
            held += pads * info.nbytes // info.shape[0] + 4096 * info.shape[1] * 4
        return PlanFigures(
            "trim",
            self.options.out,
            self.new_rows,
            {"copy": self.selection.n_new, "pad": pads},
            output_tensor_bytes(self.reader, self.arch, self.new_rows),
            held,
            ("the segmentation before/after is measured when written",),
        )


def trim_model(model_dir: Path, corpora: Sequence[Path], out: Path, **options) -> dict:
    """Write ``out``: ``model_dir`` with its vocabulary trimmed to what ``corpora`` use; ``options``: the other
    fields of :class:`ruadapt.options.TrimOptions`. Returns the stage record."""
    for key in ("allow", "eval_texts"):
        if key in options:
            options[key] = tuple(options[key])
    return write_trim(plan_trim(TrimOptions(model_dir=model_dir, corpora=tuple(corpora), out=out, **options)))


def plan_trim(options: TrimOptions) -> TrimPlan:
    """Count the corpus, select the tokens and check the checkpoint and configs against them; writes nothing."""
    opts = options
    model_dir, out = Path(opts.model_dir), Path(opts.out)
    corpora, eval_texts = [Path(c) for c in opts.corpora], [Path(e) for e in opts.eval_texts]
    opts.check_padding()
    record = StageRecord("trim", opts.record_options())
    reader = CheckpointReader(model_dir)
    arch = arch_for_config(reader.config, reader.path / "config.json")
    check_output_dir(out, [model_dir])
    tokenizer_json_path(model_dir, "--model")
    for f in eval_texts:
        check_corpus(f, "--eval-text")
    max_shard_bytes = opts.max_shard_bytes()
    with record.timed("select"):
        sel = select_tokens(
            model_dir,
            corpora,
            keep_top=opts.keep_top,
            min_count=opts.min_count,
            keep_tokens=opts.keep_tokens,
            allow=opts.allow,
            progress=opts.progress,
        )
    check_vocab_tensors(reader, arch, sel.n_old)
    names = sorted(arch.matrix_roles(reader.infos))
    old_rows = reader.info(arch.input_name).shape[0]
    for n in names:
        if reader.info(n).shape[0] < sel.n_old:
            raise RuadaptError(
                f"{reader.path}: {n} has {reader.info(n).shape[0]} rows but the tokenizer has {sel.n_old} tokens"
            )
    multiple = opts.pad_to_multiple_of or padding_multiple(old_rows, sel.n_old)
    new_rows = padded_rows(sel.n_new, multiple)
    config, gen_config, id_changes = remap_model_configs(reader.path, reader.config, sel.old_tok, sel.new_tok)
    check_token_ids(config, new_rows, str(reader.path / "config.json"))  # before the measuring pass, not after it
    if gen_config is not None:
        check_token_ids(gen_config, new_rows, str(reader.path / "generation_config.json"))
    return TrimPlan(
        opts,
        record,
        reader,
        arch,
        sel,
        names,
        old_rows,
        multiple,
        new_rows,
        config,
        gen_config,
        id_changes,
        max_shard_bytes,
    )


def trimmed_matrix(plan: TrimPlan, name: str) -> RowBlocks:
    """Stored tensor ``name`` trimmed, as row blocks: runs of kept rows (old order, so mostly long runs) copied
    from the input file by the writer, then the padding rows (the mean of the old token rows, from one chunked
    scan), the only part in memory."""
    reader, sel = plan.reader, plan.selection
    info = reader.info(name)
    runs: list[list[int]] = []  # [first old id, length]
    for old_id in sel.selection.kept:
        if runs and runs[-1][0] + runs[-1][1] == old_id:
            runs[-1][1] += 1
        else:
            runs.append([old_id, 1])
    blocks: list[tuple[int, int] | torch.Tensor] = [(first, n) for first, n in runs]
    pads = plan.new_rows - sel.n_new
    if pads:
        mean = mean_of_rows(lambda a, b: reader.get_rows(name, a, b), sel.n_old)
        reader.close()  # unmap: touched pages of a mapped shard count as resident memory
        blocks.append(mean.to(info.dtype).expand(pads, info.shape[1]).clone())
    return RowBlocks(info, blocks)


def write_trim(plan: TrimPlan) -> dict:
    """Measure the segmentation, then write the trimmed model with ``id_map.json`` and the record."""
    opts, record, reader, arch, sel = plan.options, plan.record, plan.reader, plan.arch, plan.selection
    corpora, eval_texts = [Path(c) for c in opts.corpora], [Path(e) for e in opts.eval_texts]
    with record.timed("measure"):
        measured = _measure(sel, corpora, eval_texts, opts.progress)
    record.input_model("model", reader, model_fingerprint(reader), model_type=arch.model_type, tied=arch.tied)
    params_before = sum(_numel(i.shape) for i in reader.infos.values())
    vocab_params_before = sum(_numel(reader.info(n).shape) for n in plan.names)
    bytes_before = _shard_bytes(reader.path)
    with record.timed("trim_rows"):  # every stored copy sliced by its own rows (T5's tied copies may differ on disk)
        input_matrix = trimmed_matrix(plan, arch.input_name)
        output_matrix = None if arch.tied else trimmed_matrix(plan, arch.output_name)
        copies = {n: trimmed_matrix(plan, n) for n in plan.names if n not in (arch.input_name, arch.output_name)}
    output = VocabOutput(
        out=Path(opts.out),
        inputs=[Path(opts.model_dir), *corpora, *eval_texts],
        reader=reader,
        arch=arch,
        rows=plan.new_rows,
        config=plan.config,
        gen_config=plan.gen_config,
        tokenizer=TokenizerFiles(Path(opts.model_dir), sel.new_tok, rewrite=True),
        input_matrix=input_matrix,
        output_matrix=output_matrix,
        extra=copies,
        max_shard_bytes=plan.max_shard_bytes,
        started_from=Path(opts.model_dir),
    )
    del input_matrix, output_matrix, copies

    def finish(tmp: Path) -> None:
        _write_id_map(tmp, sel)
        out_reader = CheckpointReader(tmp)
        _record_common(record, sel, corpora, measured)
        record.set(
            "model",
            {
                "rows_before": plan.old_rows,
                "rows_after": plan.new_rows,
                "padding_multiple": plan.multiple,
                "parameters_before": params_before,
                "parameters_after": sum(_numel(i.shape) for i in out_reader.infos.values()),
                "vocab_parameters_before": vocab_params_before,
                "vocab_parameters_after": sum(_numel(out_reader.info(n).shape) for n in plan.names),
                "bytes_on_disk_before": bytes_before,
                "bytes_on_disk_after": _shard_bytes(tmp),
                "token_id_changes": plan.id_changes,
            },
        )

    write_vocab_output(output, record, progress=opts.progress, finish=finish)
    log.info("wrote %s: %d -> %d tokens, %d -> %d rows", opts.out, sel.n_old, sel.n_new, plan.old_rows, plan.new_rows)
    return record.data


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def format_report(data: dict) -> str:
    """The short human-readable report of a ``ruadapt_trim.json`` record."""
    data = data["result"]
    tokens = data["vocabulary"]
    reasons = ", ".join(f"{k} {v:,}" for k, v in tokens["kept_by_reason"].items() if v)
    seg = data["segmentation"]
    corpus = seg["corpus"]
    lines = [
        f"tokens          {tokens['before']:,} -> {tokens['after']:,} ({reasons})",
        f"corpus          {tokens['corpus_lines']:,} lines, {tokens['corpus_chars']:,} chars, "
        f"{corpus['distinct_tokens_used']:,} distinct tokens used; coverage of token occurrences "
        f"{100 * corpus['coverage_of_token_occurrences']:.2f} %",
    ]

    def seg_line(name: str, s: dict) -> str:
        return (
            f"  {name:<28} chars/token {s['chars_per_token_before']:.3f} -> {s['chars_per_token_after']:.3f}; "
            f"{s['lines_segmentation_changed']:,} of {s['lines']:,} lines segmented differently; "
            f"{s['lines_not_round_trip']:,} do not round-trip"
        )

    lines.append("segmentation")
    lines.append(seg_line("corpus", corpus))
    for name, s in seg["eval"].items():
        lines.append(seg_line(Path(name).name, s))
    model = data.get("model")
    if model:
        lines += [
            f"rows            {model['rows_before']:,} -> {model['rows_after']:,} (padding multiple "
            f"{model['padding_multiple']})",
            f"parameters      {model['parameters_before']:,} -> {model['parameters_after']:,} "
            f"(vocabulary matrices {model['vocab_parameters_before']:,} -> {model['vocab_parameters_after']:,})",
            f"bytes on disk   {model['bytes_on_disk_before']:,} -> {model['bytes_on_disk_after']:,}",
        ]
        changes = {k: v for f in model["token_id_changes"].values() for k, v in f.items()}
        if changes:
            lines.append("ids remapped    " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in changes.items()))
    return "\n".join(lines)
