"""Continued BPE: learn new merges on top of an existing segmentation of the training words.

Pure Python with a max-heap of pair counts (stale entries skipped lazily) and a pair → words index, so each
merge touches only the words that contain its pair: 48k merges over ~160k distinct words take seconds.

The result reproduces training exactly at inference because (1) every new merge ranks after every base merge,
so the base merges finish first and give the base segmentation the learning started from; (2) a merge whose
result is a *base* token is never learned (base merges involving that token would then fire at inference
but not in training); (3) with ``ignore_merges`` (Llama-3, Mistral-Nemo) a word that equals a vocabulary entry
is emitted whole, so a word equal to a new token becomes that one token here too.
Ties are broken by the smaller (left id, right id): same words in the same order → the same merges.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class MergeResult:
    """New merges (as piece strings, in rank order) and new tokens (string → id), plus final segmentations."""

    merges: list[tuple[str, str]] = field(default_factory=list)
    new_tokens: dict[str, int] = field(default_factory=dict)
    words: list[list[int]] = field(default_factory=list)
    skipped_base_results: int = 0
    skipped_not_allowed: int = 0
    skipped_forbidden: int = 0
    stopped: str = ""


def _pairs(seq: list[int]) -> list[tuple[int, int]]:
    return list(zip(seq, seq[1:]))


def merge_word(seq: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace every non-overlapping (a, b) left to right, as the BPE model does for one rank."""
    out: list[int] = []
    i, n = 0, len(seq)
    while i < n:
        if i + 1 < n and seq[i] == a and seq[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def learn_merges(
    words: list[list[int]],
    counts: list[int],
    pieces: dict[int, str],
    *,
    first_id: int,
    n_new: int,
    min_frequency: int = 2,
    base_vocab: dict[str, int] | None = None,
    blocked: set[int] | frozenset[int] = frozenset(),
    word_strings: list[str] | None = None,
    allowed: Callable[[str], bool] | None = None,
    forbidden_pairs: Collection[tuple[int, int]] = frozenset(),
    forbidden_results: Collection[str] = frozenset(),
    progress: bool = True,
) -> MergeResult:
    """Merge the most frequent adjacent pair until ``n_new`` new tokens exist (ids ``first_id`` upward).

    ``words`` are base segmentations (lists of ids) with ``counts``; ``pieces`` maps every id that occurs to
    its vocabulary string; ``base_vocab`` (string → id) lists strings a merge must not produce; ``blocked``
    ids never take part in a merge (byte-fallback pieces, whose strings do not concatenate into text);
    ``word_strings`` enables the ``ignore_merges`` rule (a word equal to a new token becomes that token);
    ``allowed(piece)`` can veto a merge result (the base's own piece rules, e.g. SentencePiece's digits and scripts);
    ``forbidden_pairs`` (id pairs) are never merged and ``forbidden_results`` (strings) never become tokens: a text
    that must keep its base segmentation (llama.cpp's check text, :mod:`ruadapt.vocab.checktext`).
    ``words`` is modified in place and returned in the result.
    """
    base_vocab = base_vocab or {}
    pieces = dict(pieces)
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (seq, c) in enumerate(zip(words, counts)):
        for p in _pairs(seq):
            pair_count[p] += c
            where[p].add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    whole = {s: wi for wi, s in enumerate(word_strings)} if word_strings is not None else None

    result = MergeResult(words=words)
    next_id = first_id
    bar = tqdm(total=n_new, desc="merges", unit=" tokens", disable=not progress, mininterval=1.0)

    def set_word(wi: int, new_seq: list[int], grown: set[tuple[int, int]], token: int) -> None:
        c = counts[wi]
        old_seq = words[wi]
        old_pairs = _pairs(old_seq)
        new_pairs = _pairs(new_seq)
        for p in old_pairs:
            pair_count[p] -= c
        for p in new_pairs:
            pair_count[p] += c
            where[p].add(wi)
        kept = set(new_pairs)
        grown.update(p for p in kept if token in p)  # only pairs with the new token can grow
        for p in old_pairs:
            if p not in kept:
                where[p].discard(wi)
        words[wi] = new_seq

    while next_id < first_id + n_new:
        if not heap:
            result.stopped = "no pair left to merge"
            break
        negc, a, b = heapq.heappop(heap)
        c = pair_count.get((a, b), 0)
        if c != -negc:  # stale entry: re-queue with the current count
            if c >= min_frequency:
                heapq.heappush(heap, (-c, a, b))
            continue
        if c < min_frequency:
            result.stopped = f"no pair occurs {min_frequency} times or more"
            break
        if a in blocked or b in blocked:
            continue
        if (a, b) in forbidden_pairs:
            result.skipped_forbidden += 1
            continue
        s = pieces[a] + pieces[b]
        if s in base_vocab:
            result.skipped_base_results += 1
            continue
        if s in forbidden_results:
            result.skipped_forbidden += 1
            continue
        if allowed is not None and s not in result.new_tokens and not allowed(s):
            result.skipped_not_allowed += 1
            continue
        tid = result.new_tokens.get(s)
        if tid is None:
            tid = next_id
            next_id += 1
            result.new_tokens[s] = tid
            pieces[tid] = s
            bar.update(1)
        result.merges.append((pieces[a], pieces[b]))
        grown: set[tuple[int, int]] = set()
        for wi in sorted(where.pop((a, b), ())):
            set_word(wi, merge_word(words[wi], a, b, tid), grown, tid)
        pair_count.pop((a, b), None)
        if whole is not None:
            whole_wi = whole.get(s)
            if whole_wi is not None and words[whole_wi] != [tid]:
                set_word(whole_wi, [tid], grown, tid)
        for p in grown:
            n = pair_count.get(p, 0)
            if n >= min_frequency and p != (a, b):
                heapq.heappush(heap, (-n, p[0], p[1]))
    bar.close()
    return result
