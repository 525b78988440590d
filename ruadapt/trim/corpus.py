"""Corpus side of ``ruadapt trim``: read text files, count token use, and compare segmentations before/after.

chars/token follows docs/design.md §5: Σ len(line) / Σ len(encode(line, add_special_tokens=False)) over the lines, as
:func:`ruadapt.vocab.measure.measure` computes it; here it is accumulated batch by batch while the same ids
are compared old vs new, so a 14M-character corpus is encoded once per tokenizer and never held as id lists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tokenizers import Tokenizer

from ..io.corpus import read_documents  # the one reader of corpus files

BATCH_LINES = 4096


def encode_batches(
    tok: Tokenizer, lines: Sequence[str], *, desc: str = "", progress: bool = False
) -> Iterator[list[list[int]]]:
    """Ids of ``lines`` (no special tokens added), batch by batch."""
    fast = getattr(tok, "encode_batch_fast", tok.encode_batch)
    with tqdm(total=len(lines), desc=desc, unit="line", disable=not progress) as bar:
        for k in range(0, len(lines), BATCH_LINES):
            chunk = lines[k : k + BATCH_LINES]
            yield [e.ids for e in fast(list(chunk), add_special_tokens=False)]
            bar.update(len(chunk))


@dataclass
class TokenCounts:
    """How often each token id occurs in a corpus, and the corpus size."""

    counts: np.ndarray
    lines: int
    chars: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return chars_per_token(self.chars, self.tokens)

    def coverage(self, kept: Sequence[int]) -> float:
        """Share of token occurrences whose token is in ``kept``."""
        if self.tokens == 0:
            return 1.0
        return float(self.counts[np.asarray(list(kept), dtype=np.int64)].sum()) / self.tokens


def chars_per_token(chars: int, tokens: int) -> float:
    return chars / tokens if tokens else 0.0


def count_tokens(tok: Tokenizer, files: Sequence[Path], n_ids: int, *, progress: bool = False) -> TokenCounts:
    """Token occurrence counts of ``files`` under ``tok``; an empty corpus is a user error."""
    counts = np.zeros(n_ids, dtype=np.int64)
    n_lines = n_chars = n_tokens = 0
    for f in files:
        lines = read_documents(Path(f))  # an empty file is a one-line error there
        n_lines += len(lines)
        n_chars += sum(len(line) for line in lines)
        for batch in encode_batches(tok, lines, desc=f"counting {Path(f).name}", progress=progress):
            flat = np.fromiter((i for ids in batch for i in ids), dtype=np.int64)
            n_tokens += flat.size
            counts += np.bincount(flat, minlength=n_ids)[:n_ids]
    return TokenCounts(counts, n_lines, n_chars, n_tokens)


def compare_segmentation(
    old: Tokenizer,
    new: Tokenizer,
    old_to_new: dict[int, int],
    lines: Sequence[str],
    *,
    desc: str = "",
    progress: bool = False,
) -> dict:
    """chars/token before/after, lines whose segmentation changed (old ids mapped ≠ new ids) and lines whose
    ``decode(encode(line)) != line`` after trimming."""
    chars = sum(len(line) for line in lines)
    before = after = changed = not_round_trip = 0
    old_batches = encode_batches(old, lines)
    for k, new_batch in enumerate(encode_batches(new, lines, desc=desc, progress=progress)):
        old_batch = next(old_batches)
        texts = new.decode_batch(new_batch, skip_special_tokens=False)
        for j, (o, n) in enumerate(zip(old_batch, new_batch)):
            before += len(o)
            after += len(n)
            if len(o) != len(n) or any(old_to_new.get(a) != b for a, b in zip(o, n)):
                changed += 1
            if texts[j] != lines[k * BATCH_LINES + j]:
                not_round_trip += 1
    return {
        "lines": len(lines),
        "chars": chars,
        "tokens_before": before,
        "tokens_after": after,
        "chars_per_token_before": round(chars_per_token(chars, before), 4),
        "chars_per_token_after": round(chars_per_token(chars, after), 4),
        "lines_segmentation_changed": changed,
        "lines_not_round_trip": not_round_trip,
    }
