"""Training data on the ranks: memory-mapped token files (prepared before launch, :mod:`.prepare`), items of several
sources in one id space, the weighted mix, and which items each rank takes at each step.

Nothing here tokenizes: every rank maps the token files that ``ruadapt train`` / ``ruadapt data prepare`` wrote,
so per-rank memory does not grow with the corpus and no rank waits at a barrier while another one works.

Which sequences a rank sees at optimizer step ``s`` is a pure function of (seed, s, rank, world size): that is
what makes a resumed run bit-for-bit the continuation of the interrupted one, and it is also why we shard by
``RANK`` ourselves instead of trusting a sampler (the HF Trainer reports world size 1 under the DeepSpeed
launcher on CPU and would feed every rank the same batch).
"""

from __future__ import annotations

import json
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import RuadaptError

IGNORE = -100  # label of a token that is not trained


class ItemSource(Protocol):
    """Items (training sequences) of one prepared file."""

    def __len__(self) -> int: ...
    def item(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(token ids, trained-token mask or None when every token is trained)."""
        ...


class Items:
    """Ranges ``[lo, hi)`` of several sources, addressed by one global id (source after source)."""

    def __init__(self, parts: list[tuple[ItemSource, int, int]], *, pad_id: int, names: list[str]):
        self.parts, self.pad_id, self.names = parts, pad_id, names
        self.sizes = np.array([hi - lo for _, lo, hi in parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def part_of(self, idx: np.ndarray) -> np.ndarray:
        """The source index of each global id."""
        return np.searchsorted(self.starts, np.asarray(idx), side="right") - 1

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        p = int(np.searchsorted(self.starts, i, side="right") - 1)
        src, lo, _ = self.parts[p]
        return src.item(lo + int(i - self.starts[p]))

    def collate(self, idx) -> dict[str, torch.Tensor]:
        """A model batch: equal-length items (CPT blocks) are stacked and every token is a label; others are padded
        on the right with attention mask 0 and label -100, and only masked-in tokens are labels."""
        rows = [self.get(int(i)) for i in idx]
        if all(m is None for _, m in rows) and len({len(r) for r, _ in rows}) == 1:
            ids = torch.from_numpy(np.stack([r for r, _ in rows]).astype(np.int64))
            return {"input_ids": ids, "labels": ids.clone()}
        width = max(len(r) for r, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for k, (r, m) in enumerate(rows):
            t = torch.from_numpy(r.astype(np.int64))
            ids[k, : len(r)] = t
            labels[k, : len(r)] = t if m is None else torch.where(torch.from_numpy(m.astype(bool)), t, IGNORE)
            attn[k, : len(r)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def apportion(weights: list[Fraction], total: int) -> list[int]:
    """How many of the first ``total`` slots of an endless weighted schedule go to each source.

    The schedule interleaves the sources by the Sainte-Laguë rule: source s's j-th slot sits at time
    (j + ½)/w_s and slots are taken in time order (ties: lower source first). Counts are therefore exact to
    within one of ``w_s · total`` at every length and never decrease as ``total`` grows, so step k's share of
    source s is ``apportion(k+1)[s] − apportion(k)[s]``, a pure function of k — no state to carry across a resume.
    """
    half = Fraction(1, 2)
    counts = [floor(w * total + half) if w > 0 else 0 for w in weights]  # every slot at time <= total
    while sum(counts) > total:  # drop the latest counted slot
        s = max((s for s in range(len(weights)) if counts[s] > 0), key=lambda s: ((counts[s] - half) / weights[s], s))
        counts[s] -= 1
    while sum(counts) < total:  # add the earliest uncounted slot
        s = min((s for s in range(len(weights)) if weights[s] > 0), key=lambda s: ((counts[s] + half) / weights[s], s))
        counts[s] += 1
    return counts


def normalized_weights(weights: list[float], sizes: list[int]) -> list[Fraction]:
    """Exact shares: the given weights, or each source's size when every weight is 0 (the natural mix)."""
    raw = (
        [Fraction(w).limit_denominator(10**6) for w in weights]
        if any(w > 0 for w in weights)
        else [Fraction(n) for n in sizes]
    )
    total = sum(raw)
    if total <= 0:
        raise RuadaptError("data.train: the sources hold no training sequence")
    return [w / total for w in raw]


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers whose output bits each depend on every input bit."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


class IndexPermutation:
    """A seeded pseudo-random permutation of ``range(n)`` evaluated one index at a time, in O(1) memory.

    Why not ``rng.permutation(n)``: that array is 8 bytes per item on every rank — per document for SFT, per
    block for CPT — so rank memory would grow with the corpus (issue 25, point 7). Here ``perm(j)`` is a balanced
    Feistel network over the smallest even number of bits covering ``n`` (a bijection of that power-of-two
    range for any round function), with cycle-walking: values ≥ ``n`` are fed through again until one lands
    in range, which keeps it a bijection of ``range(n)`` (fewer than 4 passes expected, since the power of two is
    < 4n). The round keys come from ``key`` (seed, source, epoch), so each epoch of each source has its own order.
    """

    ROUNDS = 6

    def __init__(self, n: int, key: tuple[int, ...]):
        if n < 1:
            raise ValueError("a permutation of no items")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.low = (1 << self.half) - 1
        k = 0x9E3779B97F4A7C15
        for part in key:
            k = _mix64(k ^ (int(part) & _MASK64))
        self.keys = []
        for _ in range(self.ROUNDS):
            k = _mix64(k + 0x9E3779B97F4A7C15 & _MASK64)
            self.keys.append(k)

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half, x & self.low
        for k in self.keys:
            left, right = right, left ^ (_mix64(right ^ k) & self.low)
        return (left << self.half) | right

    def __call__(self, j: int) -> int:
        if not 0 <= j < self.n:
            raise IndexError(f"index {j} outside a permutation of {self.n}")
        x = self._feistel(j)
        while x >= self.n:
            x = self._feistel(x)
        return x

    def __len__(self) -> int:
        return self.n


class MixSampler:
    """Which items each rank processes at each optimizer step.

    One optimizer step consumes ``global_batch = micro × accum × world`` items: source s contributes its
    :func:`apportion` share, read in a seeded per-epoch permutation of that source (an epoch of a source ends
    when its items are used up, independently of the others: a small source with a big weight repeats, as
    upsampling should); the permutation is :class:`IndexPermutation`, computed per item, never stored. The step's
    items are shuffled (seeded by the step) and rank ``r`` takes a contiguous
    slice of ``micro × accum`` of them. Everything depends only on (seed, step, rank, world).
    """

    def __init__(self, items: Items, weights: list[float], *, micro: int, accum: int, world: int, rank: int, seed: int):
        self.items = items
        self.micro, self.accum, self.world, self.rank, self.seed = micro, accum, world, rank, seed
        self.global_batch = micro * accum * world
        self.weights = normalized_weights(weights, [int(n) for n in items.sizes])
        if len(items) < self.global_batch:
            raise RuadaptError(
                f"the data gives {len(items)} training sequences, fewer than one global batch "
                f"({micro} micro × {accum} accum × {world} processes); add data or lower the batch"
            )
        for s, (w, n) in enumerate(zip(self.weights, items.sizes)):
            if w > 0 and n == 0:
                raise RuadaptError(
                    f"data.train: {items.names[s]} gives no training sequence (too short for one block?)"
                )
        self._perms: dict[int, tuple[int, IndexPermutation]] = {}  # source -> (epoch, its permutation)

    def _perm(self, source: int, epoch: int) -> IndexPermutation:
        """The order of ``source``'s items in ``epoch``: a function, not an array (O(1) memory per source)."""
        got = self._perms.get(source)
        if got is None or got[0] != epoch:
            order = IndexPermutation(int(self.items.sizes[source]), (self.seed, source, epoch))
            got = self._perms[source] = (epoch, order)
        return got[1]

    def step_items(self, step: int) -> np.ndarray:
        """Global ids of all ``global_batch`` items of optimizer ``step`` (0-based), in the order ranks split them."""
        g = self.global_batch
        before, after = apportion(self.weights, step * g), apportion(self.weights, (step + 1) * g)
        chosen = []
        for s, (a, b) in enumerate(zip(before, after)):
            n = int(self.items.sizes[s])
            for p in range(a, b):
                epoch, j = divmod(p, n)
                chosen.append(int(self.items.starts[s]) + self._perm(s, epoch)(j))
        out = np.array(chosen, dtype=np.int64)
        np.random.default_rng([self.seed, 1 << 30, step]).shuffle(out)
        return out

    def micro_batches(self, step: int) -> list[np.ndarray]:
        """Item ids of this rank's ``accum`` micro-batches at optimizer ``step`` (0-based)."""
        per_rank = self.micro * self.accum
        mine = self.step_items(step)[self.rank * per_rank : (self.rank + 1) * per_rank]
        return [mine[i * self.micro : (i + 1) * self.micro] for i in range(self.accum)]


def eos_token_id(model_dir: Path) -> int:
    """The EOS id from config.json (first of a list), else generation_config.json, else tokenizer_config.json."""
    model_dir = Path(model_dir)
    for fname in ("config.json", "generation_config.json"):
        p = model_dir / fname
        if p.is_file():
            v = json.loads(p.read_text(encoding="utf-8")).get("eos_token_id")
            if isinstance(v, list) and v:
                v = v[0]
            if isinstance(v, int):
                return v
    p = model_dir / "tokenizer_config.json"
    if p.is_file():
        tok = json.loads(p.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if tok:
            from ..io.tokdir import load_tokenizer

            i = load_tokenizer(model_dir).token_to_id(tok)
            if i is not None:
                return i
    raise RuadaptError(f"{model_dir}: no eos_token_id in config.json, generation_config.json or tokenizer_config.json")


def pad_token_id(model_dir: Path) -> int:
    """config.json's pad_token_id, else the EOS id (padding is masked out of attention and loss either way)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    pad = cfg.get("pad_token_id")
    return pad if isinstance(pad, int) else eos_token_id(model_dir)
