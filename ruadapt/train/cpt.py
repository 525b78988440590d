"""Continued pretraining data: documents → ids with EOS after each (one token file per source) → ``block_size`` blocks.

Labels are the inputs (the model shifts them); every token of every block is trained. A block is a plain slice of
the memory-mapped stream, so blocks run across document boundaries (the EOS marks them), as in GPT-style packing.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tokenizers import Tokenizer

from ..errors import RuadaptError
from .supervise import tokenizer_worker_init, worker_context
from .tokenfile import TokenFile, TokenFileWriter


class BlockSource:
    """``n_tokens // block_size`` consecutive blocks of one token file (the tail shorter than a block is dropped)."""

    def __init__(self, tf: TokenFile, block_size: int):
        self.tf, self.block_size = tf, block_size
        self.n = tf.n_tokens // block_size

    def __len__(self) -> int:
        return self.n

    def item(self, i: int) -> tuple[np.ndarray, None]:
        b = self.block_size
        return np.asarray(self.tf.tokens[i * b : (i + 1) * b]), None


WORKERS_ENV = "RUADAPT_PREPARE_WORKERS"  # processes that tokenize (default: every core this process may use)

_worker: dict = {}  # the tokenizer and EOS id of a worker process (set by _init_worker)


def prepare_workers() -> int:
    """How many tokenizing processes: ``$RUADAPT_PREPARE_WORKERS``, else every core this process may run on."""
    value = os.environ.get(WORKERS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise RuadaptError(f"{WORKERS_ENV}={value!r}: expected a number of processes, at least 1")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    tokenizer_worker_init()  # Ctrl-C is the parent's to handle; die with the parent, SIGKILL included
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _worker.update(tok=Tokenizer.from_file(tokenizer_json), eos=eos_id, dtype=np.dtype(dtype))


def _encode_block(docs: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """In a worker: (ids of every document followed by EOS, one flat array; the documents' lengths; characters)."""
    encodings = _worker["tok"].encode_batch_fast(docs, add_special_tokens=False)
    ids = [e.ids for e in encodings]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    ends = np.cumsum(lengths)
    flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=_worker["dtype"])
    body = np.ones(len(flat), dtype=bool)
    body[ends - 1] = False
    flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=flat.dtype, count=len(flat) - len(ids))
    flat[ends - 1] = _worker["eos"]
    return flat, lengths, sum(map(len, docs))


def write_documents(
    tokenizer_json: Path,
    blocks: Iterator[list[str]],
    writer: TokenFileWriter,
    *,
    eos_id: int,
    limit: int = 0,
    desc: str = "",
    workers: int = 0,
) -> dict:
    """Encode every document (or the first ``limit``), each followed by ``eos_id``, and append them in order.

    Blocks of documents go to ``workers`` processes (default :func:`prepare_workers`), each with its own
    single-threaded tokenizer, which also turn the ids into arrays — the Python part of encoding runs on every
    core too, not only the Rust part. At most two blocks per worker are in flight, so memory is bounded by the
    block size times the workers, whatever the corpus size. Processes are spawned, not forked: this process
    may already run tokenizer or torch threads.
    """
    workers = workers or prepare_workers()
    t0 = time.perf_counter()
    chars = 0
    if limit:
        blocks = _first(blocks, limit)
    ctx = worker_context()  # spawn, SIGINT blocked until the worker ignores it (see _init_worker)
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(str(tokenizer_json), eos_id, writer.dtype.str)
    )
    try:
        with tqdm(desc=desc, unit=" docs", mininterval=2.0, disable=not desc) as bar:
            pending: deque = deque()

            def store(result: tuple[np.ndarray, np.ndarray, int]) -> None:
                nonlocal chars
                flat, lengths, n_chars = result
                writer.add_flat(flat, lengths)
                chars += n_chars
                bar.update(len(lengths))
                bar.set_postfix(tokens=f"{writer.n_tokens:,}", refresh=False)

            for docs in blocks:
                pending.append(pool.submit(_encode_block, docs))
                if len(pending) >= 2 * workers:
                    store(pending.popleft().result())
            while pending:
                store(pending.popleft().result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t0
    return {
        "chars": chars,
        "seconds": round(seconds, 3),
        "workers": workers,
        "tokens_per_s": round(writer.n_tokens / max(seconds, 1e-9), 1),
    }


def _first(blocks: Iterator[list[str]], limit: int) -> Iterator[list[str]]:
    left = limit
    for docs in blocks:
        if left <= 0:
            return
        yield docs[:left]
        left -= len(docs)
