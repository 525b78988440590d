"""``ruadapt lep``: Learned Embedding Propagation (docs/design.md §4, arXiv 2412.21140 eq. 8-14).

The adapted base A has new embeddings that the instruct model I never saw. LEP fits a d×d map W from the base
B's rows to I's rows (what instruction tuning did to the vocabulary matrices) and applies it to A's rows:
``E_out = E_a·W_in`` and, for untied models, ``O_out = O_a·W_out``. The transformer body, norms and chat tokens
stay I's. Methods differ only in which rows fit W:

* ``conversion`` (default): X = T·E_b, Y = T·E_i over the new vocabulary, T the averaging map of swap
  (:func:`ruadapt.vocab.pieces.build_vocab_map` / :func:`ruadapt.vocab.pieces.averaged_rows`);
* ``overlap``: rows of tokens present in both vocabularies (same bytes);
* ``swap``: W = I (A's rows go into I's body unchanged).

Special/added tokens never enter a fit; every added token of I takes I's own row, unprojected.

Streaming: the fit accumulates XᵀX and XᵀY in float64 over row chunks (:mod:`ruadapt.vocab.lstsq`), reading only the
rows a chunk needs; the output matrices are built one at a time, just when their shard is written, and every
other tensor of I is copied through (whole shards as files). A 72B model (V = 152,064, d = 8,192, untied) needs
two d×d float64 matrices, one chunk and one output matrix in memory: 4-5 GB (docs/benchmarks.md, bench/lep.py: 4.02 GB
tied, 5.09 GB untied peak RSS with 16,000 new tokens, the solves' peak).

:func:`plan_lep` opens and checks the three models and chooses the fitted rows without reading a matrix
(``ruadapt lep --dry-run`` prints it); :func:`write_lep` checks A's rows, fits and writes (docs/stages.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tokenizers import Tokenizer

from .errors import RuadaptError
from .io.checkpoint import CheckpointReader
from .io.outdir import check_output_dir
from .io.record import StageRecord, sha256_file
from .io.tokdir import (
    TokenizerFiles,
    load_tokenizer,
    remap_model_configs,
    same_bytes,
    tokenizer_json_path,
    tokenizer_size,
)
from .mistakes import refuse
from .options import LepOptions, PlanFigures
from .vocab.arch import Arch, arch_for_config, check_vocab_tensors, model_fingerprint
from .vocab.lora import merge_replacements, read_adapter
from .vocab.lstsq import NormalEquations
from .vocab.output import VocabOutput, output_tensor_bytes, write_vocab_output
from .vocab.pieces import ROW_COPY, ROW_MEAN, TokenCodec, VocabMap, averaged_rows, build_vocab_map

log = logging.getLogger(__name__)

# float64 working set of one chunk (X and Y of every fitted matrix side by side); rows per chunk follow from d
CHUNK_BYTES = 512 * 1024**2
# rows read through when two needed rows are this close (one read instead of two), and the longest single read
_GAP_ROWS = 16
_MAX_READ_ROWS = 4096


@dataclass
class Model:
    """One input checkpoint: reader, vocabulary layout, tokenizer."""

    option: str
    reader: CheckpointReader
    arch: Arch
    tok: Tokenizer
    n_tokens: int  # len(tokenizer)

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def config_path(self) -> Path:
        return self.reader.path / "config.json"

    @property
    def rows(self) -> int:
        return self.reader.info(self.arch.input_name).shape[0]

    @property
    def hidden(self) -> int:
        return self.reader.info(self.arch.input_name).shape[1]

    def matrix_names(self) -> dict[str, str]:
        """``{"input": name}`` plus ``{"output": name}`` for untied models: the matrices LEP fits and rewrites."""
        names = {"input": self.arch.input_name}
        if not self.arch.tied:
            names["output"] = self.arch.output_name
        return names


def open_model(path: Path, option: str, same_tokenizer_as: Model | None = None) -> Model:
    """Open a model dir and check its vocabulary matrices exist and agree (one-line errors naming the file).
    ``same_tokenizer_as``: reuse that model's parsed tokenizer when the tokenizer.json files are byte-identical
    (B and I usually are; parsing a 262k vocabulary takes seconds)."""
    reader = CheckpointReader(Path(path))
    arch = arch_for_config(reader.config, reader.path / "config.json")
    if arch.encoder_decoder:
        raise RuadaptError(
            f"{reader.path / 'config.json'}: {option} is an encoder-decoder ({arch.model_type}); LEP supports "
            "decoder-only models"
        )
    if same_tokenizer_as is not None and same_bytes(
        tokenizer_json_path(reader.path, option), tokenizer_json_path(same_tokenizer_as.path)
    ):
        tok, n = same_tokenizer_as.tok, same_tokenizer_as.n_tokens
    else:
        tok = load_tokenizer(reader.path, option)
        n = tokenizer_size(tok)
    check_vocab_tensors(reader, arch, n, option)
    return Model(option, reader, arch, tok, n)


def validate(base: Model, instruct: Model, adapted: Model) -> None:
    """B and I: same architecture, hidden size, tie, vocabulary; A: same hidden size and tie as I."""
    b, i, a = base, instruct, adapted
    pair = f"{b.option} {b.path} vs {i.option} {i.path}"
    if b.arch.model_type != i.arch.model_type:
        raise RuadaptError(
            f"{pair}: model_type {b.arch.model_type} vs {i.arch.model_type}; the instruct model must be the base's"
        )
    if b.hidden != i.hidden:
        raise RuadaptError(f"{pair}: hidden size {b.hidden} vs {i.hidden}")
    if b.arch.tied != i.arch.tied:
        raise RuadaptError(f"{pair}: tie_word_embeddings {b.arch.tied} vs {i.arch.tied}")
    same_vocab = b.tok is i.tok or b.tok.get_vocab(with_added_tokens=False) == i.tok.get_vocab(with_added_tokens=False)
    if b.rows != i.rows or not same_vocab:
        raise RuadaptError(
            f"{pair}: different vocabularies ({b.rows} vs {i.rows} rows, tokenizer.json model vocab "
            f"{'equal' if same_vocab else 'differs'}); "
            "LEP needs the instruct model of this exact base"
        )
    pair = f"{a.option} {a.path} vs {i.option} {i.path}"
    if a.hidden != i.hidden:
        raise RuadaptError(
            f"{pair}: hidden size {a.hidden} vs {i.hidden}; --adapted must be the swapped base of the same size"
        )
    if a.arch.tied != i.arch.tied:
        raise RuadaptError(f"{pair}: tie_word_embeddings {a.arch.tied} vs {i.arch.tied}")
    if a.arch.input_name != i.arch.input_name or a.arch.output_name != i.arch.output_name:
        raise RuadaptError(
            f"{pair}: model_type {a.arch.model_type} vs {i.arch.model_type} name their embeddings differently"
        )


# ---------------------------------------------------------------------------------------------- reading rows
def _check_finite(t: torch.Tensor, model: Model, name: str, ids: Sequence[int] | None, start: int = 0) -> None:
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        row = ids[k] if ids is not None else start + k
        raise RuadaptError(
            f"{model.path}: {model.option} {name} row {row} has NaN or infinite values; the checkpoint is broken"
        )


def gather_rows(model: Model, name: str, ids: Sequence[int]) -> torch.Tensor:
    """Rows ``ids`` (sorted, unique) of a matrix, read as few contiguous slices as possible, never the whole matrix."""
    reader = model.reader
    parts: list[torch.Tensor] = []
    k = 0
    while k < len(ids):
        start = ids[k]
        j = k + 1
        while j < len(ids) and ids[j] - ids[j - 1] <= _GAP_ROWS and ids[j] - start < _MAX_READ_ROWS:
            j += 1
        stop = ids[j - 1] + 1
        block = reader.get_rows(name, start, stop)
        want = ids[k:j]
        parts.append(block if len(want) == stop - start else block[torch.tensor(want) - start])
        k = j
    out = torch.cat(parts) if parts else torch.empty(0, model.hidden)
    _check_finite(out, model, name, ids)
    return out


# ---------------------------------------------------------------------------------------------- the fit
def fit_rows(vmap: VocabMap, method: str, exclude_sources: set[int]) -> list[int]:
    """New-vocabulary rows whose (X, Y) pairs enter the fit: copies (``overlap``) or copies and means
    (``conversion``), never special/added tokens or padding, never a row built from a base added token."""
    kinds = (ROW_COPY,) if method == "overlap" else (ROW_COPY, ROW_MEAN)
    return [
        r
        for r, (k, s) in enumerate(zip(vmap.kinds, vmap.sources))
        if k in kinds and s and not any(x in exclude_sources for x in s)
    ]


def piece_chunks(vmap: VocabMap, rows: Sequence[int], max_pieces: int) -> Iterator[Sequence[int]]:
    """``rows`` in consecutive chunks of at most ``max_pieces`` source rows each (a row alone may exceed it).

    Chunks are bounded by pieces, not rows: a new token is the mean of several base rows, and every piece is
    read and averaged in float64, so a chunk of 4,096 new tokens of 3 pieces each would hold three times the
    budget (≈ +2 GB at d = 8,192, tied: gathered pieces and the averaged rows of X and Y in float64)."""
    start, pieces = 0, 0
    for k, r in enumerate(rows):
        n = len(vmap.sources[r])
        if pieces and pieces + n > max_pieces:
            yield rows[start:k]
            start, pieces = k, 0
        pieces += n
    if start < len(rows):
        yield rows[start:]


def accumulate(
    base: Model,
    instruct: Model,
    names: Sequence[str],
    vmap: VocabMap,
    rows: Sequence[int],
    *,
    chunk_rows: int | None,
    progress: bool,
) -> dict[str, NormalEquations]:
    """XᵀX and XᵀY for X = T[rows]·B[name], Y = T[rows]·I[name], for every matrix in ``names`` in one pass.

    Each chunk reads only the base/instruct rows its tokens are built from (input and output matrices side by
    side), remaps the chunk's sources to positions in that block and averages them all with one call of
    :func:`ruadapt.vocab.pieces.averaged_rows` in float64, so memory is one chunk however large V is. ``chunk_rows``
    bounds the source rows (pieces) of a chunk. Both readers are closed after every read: the pieces of new
    tokens are spread over the whole matrix, and every touched page of a still-mapped shard counts as resident
    memory (two whole 2.5 GB matrices by the end of a tied 72B fit).
    """
    d = base.hidden
    k_mats = len(names)
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (2 * k_mats * d * 8))
    eqs = {n: NormalEquations(d) for n in names}
    bar = tqdm(total=len(rows), desc="fit " + " + ".join(names), unit="row", disable=not progress)
    for chunk in piece_chunks(vmap, rows, chunk_rows):
        needed = sorted({s for r in chunk for s in vmap.sources[r]})
        pos = {s: j for j, s in enumerate(needed)}
        local = VocabMap(
            [vmap.kinds[r] for r in chunk],
            [tuple(pos[s] for s in vmap.sources[r]) for r in chunk],
            len(chunk),
            len(needed),
        )
        blocks = []
        for model in (base, instruct):
            for n in names:
                blocks.append(gather_rows(model, n, needed))
                model.reader.close()  # unmap (see above)
        xy = averaged_rows(local, torch.cat(blocks, dim=1), range(len(chunk)), dtype=torch.float64)
        del blocks
        for j, n in enumerate(names):
            eqs[n].add(xy[:, j * d : (j + 1) * d], xy[:, (k_mats + j) * d : (k_mats + j + 1) * d])
        del xy
        bar.update(len(chunk))
    bar.close()
    return eqs


# ---------------------------------------------------------------------------------------------- applying W
@dataclass
class NormStats:
    """Streaming row-norm statistics (count, mean, std, min, max)."""

    n: int = 0
    s: float = 0.0
    s2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, rows: torch.Tensor) -> None:
        if rows.shape[0] == 0:
            return
        norms = rows.to(torch.float64).norm(dim=1)
        self.n += norms.numel()
        self.s += float(norms.sum())
        self.s2 += float((norms * norms).sum())
        self.lo = min(self.lo, float(norms.min()))
        self.hi = max(self.hi, float(norms.max()))

    def summary(self) -> dict:
        mean = self.s / max(self.n, 1)
        var = max(self.s2 / max(self.n, 1) - mean * mean, 0.0)
        return {"rows": self.n, "mean": mean, "std": math.sqrt(var), "min": self.lo, "max": self.hi}


def check_adapted_finite(adapted: Model, names: Sequence[str], *, chunk_rows: int | None, progress: bool) -> None:
    """A pass over A's vocabulary rows before any fit: a NaN row fails in seconds, not after the GEMMs."""
    chunk_rows = chunk_rows or max(1, CHUNK_BYTES // (adapted.hidden * 8))
    for name in names:
        rows = adapted.rows
        for s in tqdm(range(0, rows, chunk_rows), desc=f"check {name}", unit="chunk", disable=not progress):
            _check_finite(adapted.reader.get_rows(name, s, min(s + chunk_rows, rows)), adapted, name, None, s)
            adapted.reader.close()  # unmap: touched pages of a memory-mapped shard count as resident memory


def project_matrix(
    adapted: Model,
    instruct: Model,
    name: str,
    w: torch.Tensor | None,
    specials: Sequence[tuple[int, int]],
    n_token_rows: int,
    stats: dict,
    *,
    chunk_rows: int | None,
    progress: bool,
) -> torch.Tensor:
    """``A[name]·W`` in I's dtype (``W = None``: A's rows cast, unchanged), then I's own rows for ``specials``
    (pairs of A id, I id). Computed chunk by chunk in float32: the result is stored in bf16/fp16/fp32 anyway."""
    dtype = instruct.reader.info(name).dtype
    rows, d = adapted.rows, adapted.hidden
    chunk_rows = chunk_rows or max(1, CHUNK_BYTES // (d * 4 * 2))
    out = torch.empty(rows, d, dtype=dtype)
    w32 = None if w is None else w.to(torch.float32)  # no copy when already float32
    before, after = NormStats(), NormStats()
    for s in tqdm(range(0, rows, chunk_rows), desc=f"apply {name}", unit="chunk", disable=not progress):
        e = min(s + chunk_rows, rows)
        a = adapted.reader.get_rows(name, s, e)  # finiteness was checked before the fit
        adapted.reader.close()  # unmap: touched pages of a memory-mapped shard count as resident memory
        new = a.to(dtype) if w32 is None else (a.to(torch.float32) @ w32).to(dtype)
        out[s:e] = new
        t = min(e, n_token_rows)
        if t > s:
            before.add(a[: t - s])
    adapted.reader.close()
    if specials:
        for a_id, i_id in specials:
            out[a_id] = instruct.reader.get_rows(name, i_id, i_id + 1)[0]
        instruct.reader.close()
    for s in range(0, n_token_rows, chunk_rows):
        after.add(out[s : min(s + chunk_rows, n_token_rows)])
    stats[name] = {"adapted": before.summary(), "output": after.summary()}
    return out


def special_pairs(adapted: Model, instruct: Model) -> list[tuple[int, int]]:
    """(A id, I id) for every added/special token of I; A's tokenizer must have each of them."""
    pairs = []
    for i_id, t in sorted(instruct.tok.get_added_tokens_decoder().items()):
        a_id = adapted.tok.token_to_id(t.content)
        if a_id is None:
            raise RuadaptError(
                f"{tokenizer_json_path(adapted.path)}: lacks the instruct model's token {t.content!r} "
                f"(id {i_id} in {instruct.path}); build the new tokenizer from this model family's tokenizer"
            )
        if a_id >= adapted.rows:
            raise RuadaptError(
                f"{adapted.path}: token {t.content!r} has id {a_id} past the {adapted.rows} embedding rows"
            )
        pairs.append((a_id, i_id))
    return pairs


# ---------------------------------------------------------------------------------------------- LoRA deltas
def lora_replacements(adapter_path: Path, instruct: Model, alpha_scale: float, skip: set[str]) -> tuple[dict, dict]:
    """Replacements ``{I tensor name: callable}`` adding a peft adapter's deltas (trained on the base's body),
    divided by ``alpha_scale``, to I's body weights (:mod:`ruadapt.vocab.lora`: built one at a time, when written)."""
    if not alpha_scale > 0:
        raise RuadaptError(f"--alpha-scale must be positive, got {alpha_scale}")
    adapter = read_adapter(adapter_path)
    repl, skipped = merge_replacements(adapter, instruct.reader, divide=alpha_scale, skip=skip)
    summary = {
        **adapter.summary(),
        "modules": len(repl),
        "skipped_vocabulary_modules": skipped,
        "alpha_scale": alpha_scale,
    }
    return repl, summary


# ---------------------------------------------------------------------------------------------- the stage
@dataclass
class LepPlan:
    """What :func:`plan_lep` opened, checked and decided; :func:`write_lep` fits and writes it."""

    options: LepOptions
    record: StageRecord
    base: Model
    instruct: Model
    adapted: Model
    specials: list[tuple[int, int]]  # (A id, I id): rows kept from the instruct model
    config: dict
    gen_config: dict | None
    id_changes: dict
    lora: dict
    lora_summary: dict | None
    max_shard_bytes: int | None
    vmap: VocabMap | None = None  # None for method swap
    fit_rows: list[int] = field(default_factory=list)

    def figures(self) -> PlanFigures:
        """Rows projected / kept from the instruct model, bytes to write, and the fit's and apply's buffers: two
        d×d float64 normal equations and a float32 W per fitted matrix, one chunk, one output matrix at a time."""
        i, a = self.instruct, self.adapted
        names = list(i.matrix_names().values())
        d, dtype = a.hidden, i.reader.info(i.arch.input_name)
        elem = dtype.nbytes // max(dtype.shape[0] * dtype.shape[1], 1)
        chunk = min(CHUNK_BYTES, len(self.fit_rows) * 2 * len(names) * d * 8)  # the fit's float64 X and Y
        fit = 0 if self.vmap is None else len(names) * (2 * d * d * 8 + d * d * 4) + chunk
        peak = fit + a.rows * d * elem
        notes = (
            [f"method {self.options.method}: W is the identity, no fit"]
            if self.vmap is None
            else [
                f"method {self.options.method}: W fitted on {len(self.fit_rows):,} rows of {d} columns "
                f"(vocabulary map {', '.join(f'{k} {v:,}' for k, v in self.vmap.summary().items())})"
            ]
        )
        if self.lora:
            notes.append(f"LoRA deltas added to {len(self.lora)} tensors of --instruct, one at a time")
        notes.append("the NaN/inf pass over --adapted's rows runs when written, before any output exists")
        kinds = {"projected": a.rows - len(self.specials), "instruct": len(self.specials)}
        return PlanFigures(
            "lep", self.options.out, a.rows, kinds, output_tensor_bytes(i.reader, i.arch, a.rows), peak, tuple(notes)
        )


def lep_model(base: Path, instruct: Path, adapted: Path, out: Path, **options) -> dict:
    """Write ``out``: I's body with A's vocabulary rows mapped through the fitted W; ``options``: the other
    fields of :class:`ruadapt.options.LepOptions`. Returns the stage record."""
    if "allow" in options:
        options["allow"] = tuple(options["allow"])
    return write_lep(plan_lep(LepOptions(base=base, instruct=instruct, adapted=adapted, out=out, **options)))


def plan_lep(options: LepOptions) -> LepPlan:
    """Open and check the three models, the adapter and the output, and choose the fitted rows, before any work
    or output (the fit takes minutes at 72B). Reads tokenizers and checkpoint headers only; writes nothing."""
    opts = options
    opts.check()
    record = StageRecord("lep", opts.record_options())
    check_output_dir(Path(opts.out), opts.inputs())
    b = open_model(opts.base, "--base")
    i = open_model(opts.instruct, "--instruct", same_tokenizer_as=b)
    a = open_model(opts.adapted, "--adapted", same_tokenizer_as=b)
    validate(b, i, a)
    max_shard_bytes = opts.max_shard_bytes()
    specials = special_pairs(a, i)
    config, gen_config, id_changes = remap_model_configs(i.path, i.reader.config, i.tok, a.tok)
    lora: dict = {}
    lora_summary: dict | None = None
    if opts.lora_deltas is not None:
        lora, lora_summary = lora_replacements(
            Path(opts.lora_deltas), i, opts.alpha_scale, set(i.arch.vocab_tensor_names())
        )
    for m in (b, i, a):
        record.input_model(
            m.option.lstrip("-"),
            m.reader,
            model_fingerprint(m.reader),
            model_type=m.arch.model_type,
            tied=m.arch.tied,
            rows=m.rows,
            hidden=m.hidden,
            tokenizer_sha256=sha256_file(tokenizer_json_path(m.path)),
        )
    check_likely_mistakes(b, i, a, record.data["inputs"], opts.allow)
    plan = LepPlan(opts, record, b, i, a, specials, config, gen_config, id_changes, lora, lora_summary, max_shard_bytes)
    if opts.method != "swap":
        with record.timed("vocab_map"):
            codec = TokenCodec(b.tok)  # one codec when A kept the base tokenizer (a 262k vocabulary takes seconds)
            plan.vmap = build_vocab_map(codec, codec if a.tok is b.tok else TokenCodec(a.tok))
        plan.fit_rows = fit_rows(plan.vmap, opts.method, set(b.tok.get_added_tokens_decoder()))
        if not plan.fit_rows:
            raise RuadaptError(
                f"{a.path}: no token of --adapted's tokenizer maps to --base's vocabulary; "
                f"method {opts.method} has no rows to fit"
            )
    return plan


def fit_maps(plan: LepPlan) -> tuple[dict[str, torch.Tensor], dict]:
    """The fitted maps ``{matrix name: W (float32)}`` and their summary by role (none for method swap)."""
    b, i, opts, record = plan.base, plan.instruct, plan.options, plan.record
    maps: dict[str, torch.Tensor] = {}
    fit_summary: dict = {}
    if plan.vmap is None:
        return maps, fit_summary
    names = i.matrix_names()
    if len(plan.fit_rows) < b.hidden:
        log.warning(
            "only %d rows for a %d×%d fit: W is underdetermined (minimum-norm solution)",
            len(plan.fit_rows),
            b.hidden,
            b.hidden,
        )
    with record.timed("fit"):
        eqs = accumulate(
            b, i, list(names.values()), plan.vmap, plan.fit_rows, chunk_rows=opts.chunk_rows, progress=opts.progress
        )
    for role, name in names.items():
        with record.timed(f"solve_{role}"):
            fit = eqs.pop(name).solve()
        maps[name] = fit.w.to(torch.float32)  # applied in float32; drop the float64 copy (0.5 GB at d=8192)
        fit_summary[role] = {"tensor": name, **fit.summary()}
        log.info(
            "%s: %d rows, relative residual %.4g, cond(XᵀX) %.3g (%s)",
            name,
            fit.rows,
            fit.relative_residual,
            fit.condition_number,
            fit.solver,
        )
        if fit.condition_number > 1e12:
            log.warning("%s: XᵀX is ill-conditioned (cond %.3g); W is a least-norm fit", name, fit.condition_number)
        del fit
    return maps, fit_summary


def write_lep(plan: LepPlan) -> dict:
    """Check A's rows, fit W, and write I's checkpoint with the new vocabulary matrices (built just in time, when
    their shard is written) and the optional LoRA deltas. Returns the stage record."""
    opts, record, i, a = plan.options, plan.record, plan.instruct, plan.adapted
    with record.timed("check_adapted"):
        check_adapted_finite(a, list(i.matrix_names().values()), chunk_rows=opts.chunk_rows, progress=opts.progress)
    maps, fit_summary = fit_maps(plan)
    norm_stats: dict = {}

    def builder(name: str) -> Callable[[], torch.Tensor]:
        def build() -> torch.Tensor:
            with record.timed(f"apply {name}"):
                return project_matrix(
                    a,
                    i,
                    name,
                    maps.pop(name, None),
                    plan.specials,
                    a.n_tokens,
                    norm_stats,
                    chunk_rows=opts.chunk_rows,
                    progress=opts.progress,
                )

        return build

    output = VocabOutput(
        out=Path(opts.out),
        inputs=opts.inputs(),
        reader=i.reader,
        arch=i.arch,
        rows=a.rows,
        config=plan.config,
        gen_config=plan.gen_config,
        tokenizer=TokenizerFiles(a.path, a.tok, chat_from=i.path),
        input_matrix=builder(i.arch.input_name),
        output_matrix=None if i.arch.tied else builder(i.arch.output_name),
        extra=plan.lora,
        max_shard_bytes=plan.max_shard_bytes,
        started_from=Path(opts.adapted),
        other_inputs={"base": Path(opts.base), "instruct": Path(opts.instruct)},
    )

    def finish(_tmp: Path) -> None:  # the row norms are known once the matrices were built
        record.update(
            {
                "method": opts.method,
                "dtype": str(i.reader.info(i.arch.input_name).dtype).replace("torch.", ""),
                "adapted_tokens": a.n_tokens,
                "vocab_map_rows_by_kind": None if plan.vmap is None else plan.vmap.summary(),
                "fits": fit_summary,
                "instruct_rows_kept": [[a_id, i_id] for a_id, i_id in plan.specials],
                "row_norms": norm_stats,
                "token_id_changes": plan.id_changes,
                "lora_deltas": plan.lora_summary,
            }
        )

    write_vocab_output(output, record, progress=opts.progress, finish=finish)
    return record.data


def check_likely_mistakes(b: Model, i: Model, a: Model, recorded: dict, allow: Collection[str]) -> None:
    """I or A identical to B (equal fingerprints) is refused unless allowed; A without a new token is a warning."""
    fp = {k: v["fingerprint"] for k, v in recorded.items()}
    if fp["instruct"] == fp["base"]:
        refuse(
            "same-model",
            allow,
            f"{i.path}: --instruct is the same checkpoint as --base {b.path} (equal fingerprints); "
            "the fit would learn the identity and LEP would change nothing",
            "give the instruct model of this base (e.g. Qwen2.5-7B-Instruct for Qwen2.5-7B)",
        )
    if fp["adapted"] == fp["base"]:
        refuse(
            "adapted-is-base",
            allow,
            f"{a.path}: --adapted is the same checkpoint as --base {b.path} (equal fingerprints); "
            "there are no adapted embeddings to propagate",
            "give the swapped (and continued-pretrained) model: ruadapt swap, then ruadapt train",
        )
    elif a.tok is b.tok or a.tok.get_vocab(with_added_tokens=False) == b.tok.get_vocab(with_added_tokens=False):
        log.warning(
            "%s: --adapted has the vocabulary of --base (no new token); LEP only maps its trained rows "
            "into the instruct model - expected after ruadapt swap with a new tokenizer",
            a.path,
        )


def load_record(out: Path) -> dict:
    """The ``ruadapt_lep.json`` of an output directory."""
    return json.loads((Path(out) / "ruadapt_lep.json").read_text(encoding="utf-8"))
