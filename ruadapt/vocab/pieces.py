"""Tokens as raw bytes, and the map from a new vocabulary to the old one (docs/design.md §2-3).

This is the *one* token-to-bytes function of ruadapt. A byte-level BPE token (Qwen, Llama-3, Mistral-Nemo)
may be only part of a UTF-8 character, so tokens are never decoded to ``str`` and re-encoded: a token is
turned into its raw bytes (GPT-2 byte alphabet, or ``▁`` / ``<0xNN>`` pieces for SentencePiece-style BPE such
as Gemma), and those bytes are segmented by the base *model* as one pre-token.

:func:`build_vocab_map` gives, for every id of a new tokenizer, where its row comes from: a copy of one old
row (same bytes, or the same special-token content), or the mean of the old rows of its pieces. Swap, LEP
(the averaging map T) and the reports all use it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from tqdm.auto import tqdm

from tokenizers import Tokenizer

from .init_rules import RULES, rule_parts  # noqa: F401 (RULES: the names, re-exported with the arithmetic)

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
SPACE_MARK = "\u2581"  # ▁


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@functools.cache
def _byte_level_tables() -> tuple[dict[int, int], dict[int, int]]:
    """``str.translate`` tables between raw bytes (as latin-1 code points) and byte-level characters.

    Decoding maps every code point below 256 that is *not* a byte-level character to U+FFFF, so a piece that is
    not a byte-level string fails the latin-1 encode instead of passing as the wrong bytes."""
    encode = {b: ord(c) for b, c in bytes_to_unicode().items()}
    decode = {cp: 0xFFFF for cp in range(256)}
    decode.update({ord(c): b for b, c in bytes_to_unicode().items()})
    return encode, decode


def detect_family(tokenizer: Tokenizer) -> str:
    """``byte_level`` (GPT-2 byte alphabet) or ``sentencepiece`` (``▁`` for space, ``<0xNN>`` byte fallback).

    Looks only at the pre-tokenizer and decoder (serialising a whole 33 MB tokenizer.json would be slow).
    """
    kind = type(tokenizer.model).__name__
    if kind == "Unigram":
        return SENTENCEPIECE
    parts = []
    for component in (tokenizer.pre_tokenizer, tokenizer.decoder):
        if component is not None:
            state = component.__getstate__()
            parts.append(state.decode() if isinstance(state, bytes) else str(state))
    return BYTE_LEVEL if '"ByteLevel"' in "".join(parts) else SENTENCEPIECE


def bytes_to_piece(data: bytes, family: str) -> str | None:
    """The model-vocabulary string for raw bytes (``None`` when a SentencePiece model cannot spell them)."""
    if family == BYTE_LEVEL:
        return data.decode("latin-1").translate(_byte_level_tables()[0])
    try:
        return data.decode("utf-8").replace(" ", SPACE_MARK)
    except UnicodeDecodeError:
        return None


def piece_to_bytes(piece: str, family: str) -> bytes:
    """Raw bytes of a model-vocabulary string (inverse of :func:`bytes_to_piece`)."""
    if family == BYTE_LEVEL:  # str.translate: C speed over the 150k+ pieces of a vocabulary
        try:
            return piece.translate(_byte_level_tables()[1]).encode("latin-1")
        except UnicodeEncodeError:  # not a byte-level string (e.g. a special token kept in the model vocab)
            return piece.encode("utf-8")
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace(SPACE_MARK, " ").encode("utf-8")


class TokenCodec:
    """Token id ↔ raw bytes for one tokenizer, and segmentation of raw bytes by its BPE model."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.family = detect_family(tokenizer)
        self.vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=False)
        self.added: dict[int, str] = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        self.special: set[int] = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.id_to_piece: dict[int, str] = {i: p for p, i in self.vocab.items()}
        self.size = max(list(self.id_to_piece) + list(self.added)) + 1
        self._by_bytes: dict[bytes, int] | None = None

    def __len__(self) -> int:
        return self.size

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes a token stands for; added tokens stand for their content as UTF-8."""
        if token_id in self.added:
            return self.added[token_id].encode("utf-8")
        return piece_to_bytes(self.id_to_piece[token_id], self.family)

    def id_of_bytes(self, data: bytes) -> int | None:
        """The id of the *model-vocabulary* token with exactly these bytes, if any."""
        if self._by_bytes is None:
            by_bytes: dict[bytes, int] = {}
            for i in sorted(self.id_to_piece):
                if i in self.added:
                    continue
                by_bytes.setdefault(piece_to_bytes(self.id_to_piece[i], self.family), i)
            self._by_bytes = by_bytes
        return self._by_bytes.get(data)

    def segment(self, data: bytes) -> list[int]:
        """Ids the BPE model gives ``data`` as one pre-token (no normalizer, no pre-tokenizer on mojibake)."""
        piece = bytes_to_piece(data, self.family)
        if piece is None:  # bytes that are not UTF-8 in a SentencePiece model: one byte-fallback piece each
            ids = [self.vocab.get(f"<0x{b:02X}>") for b in data]
            return [i for i in ids if i is not None]
        return [t.id for t in self.tokenizer.model.tokenize(piece)]


ROW_COPY = "copy"  # same bytes / same special content as an old token: the old row, bit-identical
ROW_MEAN = "mean"  # new token: mean of the old rows of its pieces
ROW_SPECIAL = "special"  # added/special token matched by content in the old tokenizer
ROW_PAD = "pad"  # a matrix row that belongs to no token


@dataclass
class VocabMap:
    """For each row of a new embedding matrix: its kind and the old ids it is built from."""

    kinds: list[str]
    sources: list[tuple[int, ...]]
    n_tokens: int
    n_base_tokens: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.kinds)

    def with_rows(self, n_rows: int) -> VocabMap:
        """The same map padded with ``pad`` rows up to ``n_rows``."""
        extra = n_rows - self.n_rows
        if extra < 0:
            raise ValueError(f"cannot shrink a vocab map of {self.n_rows} rows to {n_rows}")
        return VocabMap(self.kinds + [ROW_PAD] * extra, self.sources + [()] * extra, self.n_tokens, self.n_base_tokens)

    def copy_pairs(self) -> tuple[list[int], list[int]]:
        """(new ids, old ids) of rows copied unchanged."""
        dst, src = [], []
        for i, (k, s) in enumerate(zip(self.kinds, self.sources)):
            if k in (ROW_COPY, ROW_SPECIAL) and len(s) == 1:
                dst.append(i)
                src.append(s[0])
        return dst, src

    def copy_runs(self) -> list[tuple[int, int, int]]:
        """Copied rows as runs ``(first_new, first_old, length)`` of consecutive ids on both sides."""
        runs: list[list[int]] = []
        for i, j in zip(*self.copy_pairs()):
            if runs and runs[-1][0] + runs[-1][2] == i and runs[-1][1] + runs[-1][2] == j:
                runs[-1][2] += 1
            else:
                runs.append([i, j, 1])
        return [(i, j, n) for i, j, n in runs]

    def mean_rows(self) -> list[int]:
        return [
            i
            for i, (k, s) in enumerate(zip(self.kinds, self.sources))
            if s and not (k in (ROW_COPY, ROW_SPECIAL) and len(s) == 1)
        ]

    def pad_rows(self) -> list[int]:
        return [i for i, s in enumerate(self.sources) if not s]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kinds:
            out[k] = out.get(k, 0) + 1
        return out

    def provenance(self) -> list[list]:
        """Compact per-row provenance: runs of consecutive copies as ``["copy", first_new, first_old, n]``,
        others as ``[kind, new_id, [old ids]]``."""
        out: list[list] = []
        for i, (k, s) in enumerate(zip(self.kinds, self.sources)):
            if k == ROW_COPY and len(s) == 1:
                last = out[-1] if out else None
                if last and last[0] == ROW_COPY and last[1] + last[3] == i and last[2] + last[3] == s[0]:
                    last[3] += 1
                    continue
                out.append([ROW_COPY, i, s[0], 1])
            elif k == ROW_PAD:
                last = out[-1] if out else None
                if last and last[0] == ROW_PAD and last[1] + last[2] == i:
                    last[2] += 1
                    continue
                out.append([ROW_PAD, i, 1])
            else:
                out.append([k, i, list(s)])
        return out


def piece_weights(n: int, init: str) -> list[float]:
    """Weights of a token's pieces: ``mean`` = uniform; ``weighted`` = halving from the first piece on
    (w_k ∝ 2^-k, the word-start piece counts most, in the spirit of the original ruadapt's decaying weights);
    ``first`` / ``last`` = all weight on one piece (tokensurgeon's ``first_last``: lm_head first, input last)."""
    if init == "first":
        return [1.0] + [0.0] * (n - 1)
    if init == "last":
        return [0.0] * (n - 1) + [1.0]
    if init == "mean":
        return [1.0 / n] * n
    if init == "weighted":
        raw = [2.0**-k for k in range(n)]
        s = sum(raw)
        return [w / s for w in raw]
    raise ValueError(f"unknown init {init!r}")


def build_vocab_map(base: Tokenizer | TokenCodec, new: Tokenizer | TokenCodec) -> VocabMap:
    """Where each token of ``new`` comes from in ``base`` (by bytes for normal tokens, by content for added)."""
    base = base if isinstance(base, TokenCodec) else TokenCodec(base)
    new = new if isinstance(new, TokenCodec) else TokenCodec(new)
    base_added = {content: i for i, content in base.added.items()}
    same_family = base.family == new.family
    kinds: list[str] = []
    sources: list[tuple[int, ...]] = []
    for i in range(new.size):
        if i in new.added:
            content = new.added[i]
            if content in base_added:
                kinds.append(ROW_SPECIAL)
                sources.append((base_added[content],))
                continue
            data = content.encode("utf-8")
            old = base.id_of_bytes(data)
            pieces = (old,) if old is not None else tuple(base.segment(data))
            kinds.append(ROW_SPECIAL)
            sources.append(pieces)
            continue
        if i not in new.id_to_piece:  # a hole in the id space
            kinds.append(ROW_PAD)
            sources.append(())
            continue
        piece = new.id_to_piece[i]
        if same_family and piece in base.vocab:  # the same token string: prefer it over a byte-equal twin
            kinds.append(ROW_COPY)  # (Gemma has both "<0x41>" and "A" for the byte 0x41)
            sources.append((base.vocab[piece],))
            continue
        data = new.token_bytes(i)
        old = base.id_of_bytes(data)
        if old is not None:
            kinds.append(ROW_COPY)
            sources.append((old,))
        else:
            pieces = tuple(base.segment(data))
            kinds.append(ROW_MEAN if pieces else ROW_PAD)
            sources.append(pieces)
    return VocabMap(kinds, sources, new.size, base.size)


def averaged_rows(
    vmap: VocabMap,
    old: torch.Tensor,
    rows: Sequence[int],
    *,
    init: str = "mean",
    dtype: torch.dtype = torch.float32,
    all_row: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows ``T[rows] @ old`` computed in ``dtype`` (T = the map of rule ``init``; copy rows have one weight 1).

    Rules (:mod:`ruadapt.vocab.init_rules`): ``mean`` / ``weighted`` / ``first`` / ``last`` weight the pieces;
    ``mean-norm`` rescales the mean to the pieces' mean row norm; ``all`` is ō; ``X-all`` = ½ X + ½ ō.

    ``all_row`` is ō, the mean of the old token rows, for the rules that use it (``all``, ``*-all``); when not given
    it is computed from ``old`` (an in-memory matrix). Rows without sources stay zero."""
    weighting, share, rescale = rule_parts(init)
    flat: list[int] = []
    seg: list[int] = []
    weights: list[float] = []
    for j, r in enumerate(rows):
        src = vmap.sources[r]
        if not src:
            continue
        flat.extend(src)
        seg.extend([j] * len(src))
        weights.extend(piece_weights(len(src), weighting))
    out = torch.zeros(len(rows), old.shape[1], dtype=dtype)
    if not flat:
        return out
    has_src = torch.tensor([bool(vmap.sources[r]) for r in rows])
    if share < 1.0:
        gathered = old[torch.tensor(flat)].to(dtype)
        w = torch.tensor(weights, dtype=dtype)
        if rescale:  # the target norm: the pieces' mean row norm, with the same weights
            target = torch.zeros(len(rows), dtype=dtype).index_add_(0, torch.tensor(seg), gathered.norm(dim=1) * w)
        gathered.mul_(w[:, None])  # in place: no second gathered-size temporary
        out.index_add_(0, torch.tensor(seg), gathered)
        if rescale:
            norm = out.norm(dim=1)
            out.mul_(torch.where(norm > 0, target / norm.clamp_min(torch.finfo(dtype).tiny), 1.0)[:, None])
    if share > 0.0:
        if all_row is None:
            all_row = mean_row(old, vmap.n_base_tokens)
        out.mul_(1.0 - share).add_(share * all_row.to(dtype)[None, :] * has_src[:, None].to(dtype))
    return out


def iter_chunks(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for k in range(0, len(ids), size):
        yield ids[k : k + size]


def matrix_blocks(
    vmap: VocabMap,
    old: torch.Tensor,
    *,
    init: str = "mean",
    chunk_rows: int = 512,
    pad_row: torch.Tensor | None = None,
    progress: bool = False,
    desc: str = "rows",
) -> list[tuple[int, int] | torch.Tensor]:
    """The rows of a new vocabulary matrix, in order, as blocks: ``(first_old, n)`` for a run of rows copied
    unchanged from ``old`` (rows × d), or a tensor of computed rows: new tokens the (weighted) mean of their
    pieces, accumulated in float32 in chunks of ``chunk_rows`` new rows (small chunks: their temporaries are
    cheap to allocate, measured 1.8× faster than 8,192); padding rows ``pad_row`` (default: the mean of the old
    token rows). :class:`ruadapt.io.checkpoint.RowBlocks` writes such a list with the old runs copied from the input
    file, so only the computed rows are ever in memory, and ``old`` may be a lazily mapped tensor of which only the
    pieces' rows are read. :func:`build_matrix` assembles it in memory. ``init`` is any rule of :data:`RULES`;
    the ō of the ``*all`` rules is ``pad_row`` (the mean of the old token rows), so it is computed once.
    """
    d = old.shape[1]
    copied = vmap.copy_runs()
    mean_ids, pads = vmap.mean_rows(), vmap.pad_rows()
    computed_ids = sorted(mean_ids + pads)
    values = torch.empty(len(computed_ids), d, dtype=old.dtype)
    slot = {row: k for k, row in enumerate(computed_ids)}
    if pad_row is None and (pads or rule_parts(init)[1] > 0):
        pad_row = mean_row(old, vmap.n_base_tokens)
    with tqdm(total=len(mean_ids), desc=f"new rows of {desc}", unit="row", disable=not progress or not mean_ids) as bar:
        for chunk in iter_chunks(mean_ids, chunk_rows):
            rows = averaged_rows(vmap, old, chunk, init=init, all_row=pad_row)
            values[torch.tensor([slot[i] for i in chunk])] = rows.to(old.dtype)
            bar.update(len(chunk))
    if pads:
        assert pad_row is not None  # computed above when there are padding rows
        values[torch.tensor([slot[i] for i in pads])] = pad_row.to(old.dtype)

    blocks: list[tuple[int, int] | torch.Tensor] = []
    pos = 0  # next new row; computed rows between copy runs are consecutive slices of ``values``
    for first_new, first_old, n in copied + [(vmap.n_rows, -1, 0)]:
        if first_new > pos:
            k = slot[pos]
            blocks.append(values[k : k + first_new - pos])
        if n:
            blocks.append((first_old, n))
        pos = first_new + n
    return blocks


def build_matrix(vmap: VocabMap, old: torch.Tensor, **options) -> torch.Tensor:
    """The new vocabulary matrix of :func:`matrix_blocks` assembled in memory (copied rows bit-identical)."""
    return torch.cat(
        [old[b[0] : b[0] + b[1]] if isinstance(b, tuple) else b for b in matrix_blocks(vmap, old, **options)]
    )


def mean_row(matrix: torch.Tensor, n_rows: int, chunk_rows: int = 4096) -> torch.Tensor:
    """Mean of the first ``n_rows`` rows (the real token rows) of an in-memory matrix; see :func:`mean_of_rows`."""
    return mean_of_rows(lambda a, b: matrix[a:b], min(n_rows, matrix.shape[0]), chunk_rows).to(matrix.dtype)


def mean_of_rows(get_rows: Callable[[int, int], torch.Tensor], n_rows: int, chunk_rows: int = 4096) -> torch.Tensor:
    """float64 mean of rows ``0:n_rows`` served chunk by chunk by ``get_rows(start, stop)`` (an in-memory slice or
    :meth:`CheckpointReader.get_rows`, so a 72B matrix is never loaded for it).

    Each chunk is copied into one reused float32 buffer and summed there; the chunk sums are added in float64.
    (Measured on the 2-core dev machine: 2.6× faster than ``sum(dtype=float32)`` over bf16 rows, 15× faster than
    a float64 reduction, because no chunk-sized temporary is allocated and faulted in per chunk.) A NaN or
    infinite value anywhere in those rows makes the result non-finite, so it doubles as a finiteness check of
    the whole matrix (see :func:`rows_are_finite`); a chunk whose float32 sum overflows on finite values is
    summed again in float64.
    """
    acc: torch.Tensor | None = None
    buf = None
    for k in range(0, n_rows, chunk_rows):
        rows = get_rows(k, min(k + chunk_rows, n_rows))
        if buf is None:
            buf = torch.empty(min(chunk_rows, n_rows), *rows.shape[1:], dtype=torch.float32)
        part = buf[: rows.shape[0]].copy_(rows).sum(0).to(torch.float64)
        if not torch.isfinite(part).all() and torch.isfinite(rows).all():
            part = rows.sum(0, dtype=torch.float64)
        acc = part if acc is None else acc + part
    return cast(torch.Tensor, acc) / max(n_rows, 1)


def rows_are_finite(mean: torch.Tensor) -> bool:
    """Whether the rows a :func:`mean_row` result was computed from were all finite."""
    return bool(torch.isfinite(mean.to(torch.float64)).all())
