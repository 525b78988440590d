"""Training data: read documents, tokenize once (cached beside the output), pack, hold out, shard by rank.

The cache key is a hash of everything the tokens depend on (file contents, tokenizer.json, EOS id, options),
so a rerun or a resume on the same data skips tokenization, and a changed file or tokenizer never reuses
stale tokens. Rank 0 builds the cache; the other ranks wait at a barrier and read it.

Which sequences a rank sees at optimizer step ``s`` is a pure function of (seed, s, rank, world size):
that is what makes a resumed run bit-for-bit the continuation of the interrupted one, and it is also why we
shard by ``RANK`` ourselves instead of trusting a sampler (the HF Trainer reports world size 1 under the
DeepSpeed launcher on CPU and would feed every rank the same batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import RuadaptError
from ..record import sha256_file

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def read_documents(path: Path, text_field: str = "text", limit: int = 0) -> Iterator[str]:
    """Documents of a plain-text file (one per non-empty line) or of a JSONL file (``{text_field: ...}``)."""
    path = Path(path)
    jsonl = path.suffix in (".jsonl", ".json")
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if jsonl:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RuadaptError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                    raise RuadaptError(f"{path}:{lineno}: expected an object with a string {text_field!r}")
                line = rec[text_field]
            yield line
            n += 1
            if limit and n >= limit:
                return


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def file_facts(files: list[str]) -> list[list[str]]:
    return [[str(Path(f).name), sha256_file(Path(f))] for f in files]


def cached_arrays(work_dir: Path, name: str, key_parts: dict, build: Callable[[], dict[str, np.ndarray]],
                  *, rank: int = 0, barrier: Callable[[], None] = lambda: None) -> dict[str, np.ndarray]:
    """Build ``name`` once (rank 0) into ``work_dir/name-<hash>.npz``; every rank then loads it."""
    key_parts = {"version": CACHE_VERSION, **key_parts}
    path = Path(work_dir) / f"{name}-{cache_key(key_parts)}.npz"
    if rank == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("tokenizing into %s", path)
        arrays = build()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(key_parts, indent=2) + "\n")
    elif rank == 0:
        log.info("reusing token cache %s", path)
    barrier()
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def pack(ids: np.ndarray, block_size: int) -> np.ndarray:
    """Cut one long token stream into ``[n, block_size]`` (the tail shorter than a block is dropped)."""
    n = len(ids) // block_size
    if n == 0:
        raise RuadaptError(f"the data has {len(ids)} tokens, fewer than one block_size of {block_size}")
    return ids[: n * block_size].reshape(n, block_size)


def concat_with_eos(docs: list[list[int]], eos_id: int) -> np.ndarray:
    """Documents joined into one stream, each followed by EOS so the model sees where one ends."""
    total = sum(len(d) + 1 for d in docs)
    out = np.empty(total, dtype=np.int64)
    i = 0
    for d in docs:
        out[i:i + len(d)] = d
        i += len(d)
        out[i] = eos_id
        i += 1
    return out


def split_eval(n: int, eval_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, eval): a fixed, seeded held-out set of ``eval_count`` items."""
    perm = np.random.default_rng(seed).permutation(n)
    eval_count = min(eval_count, max(n - 1, 0))
    return np.sort(perm[eval_count:]), np.sort(perm[:eval_count])


class StepSampler:
    """Which items each rank processes at each optimizer step: a seeded permutation per epoch.

    One optimizer step consumes ``global_batch = micro × accum × world`` items; rank ``r`` takes a contiguous
    slice of ``micro × accum`` of them. Depends only on (seed, step, rank, world): a resumed run continues
    exactly where the killed one stopped.
    """

    def __init__(self, n_items: int, *, micro: int, accum: int, world: int, rank: int, seed: int):
        self.n = n_items
        self.micro, self.accum, self.world, self.rank, self.seed = micro, accum, world, rank, seed
        self.global_batch = micro * accum * world
        if n_items < self.global_batch:
            raise RuadaptError(
                f"the data gives {n_items} training sequences, fewer than one global batch "
                f"({micro} micro × {accum} accum × {world} processes); add data or lower the batch"
            )
        self.steps_per_epoch = n_items // self.global_batch
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm  # type: ignore[return-value]

    def micro_batches(self, step: int) -> list[np.ndarray]:
        """Item indices of this rank's ``accum`` micro-batches at optimizer ``step`` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._perm_for(epoch)
        start = k * self.global_batch + self.rank * self.micro * self.accum
        mine = perm[start:start + self.micro * self.accum]
        return [mine[i * self.micro:(i + 1) * self.micro] for i in range(self.accum)]


def shard(n: int, rank: int, world: int) -> np.ndarray:
    """Indices ``rank::world`` of ``n`` items (for the eval loss, summed over ranks afterwards)."""
    return np.arange(rank, n, world)


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
            from ..tokdir import load_tokenizer

            i = load_tokenizer(model_dir).token_to_id(tok)
            if i is not None:
                return i
    raise RuadaptError(f"{model_dir}: no eos_token_id in config.json, generation_config.json or tokenizer_config.json")
