"""Continued pretraining data: documents → ids with EOS after each (one token file per source) → ``block_size`` blocks.

Labels are the inputs (the model shifts them); every token of every block is trained. A block is a plain slice of
the memory-mapped stream, so blocks run across document boundaries (the EOS marks them), as in GPT-style packing.
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

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
        return np.asarray(self.tf.tokens[i * b:(i + 1) * b]), None


def encode_pipelined(tok: Tokenizer, blocks: Iterator[list[str]]) -> Iterator[tuple[list[str], list]]:
    """(documents, encodings) block by block, with block k+1 read and encoded while the caller stores block k.

    ``encode_batch_fast`` runs on all cores in Rust and releases the GIL, so the reading, JSON parsing and array
    conversion of this thread overlap with it; memory holds about three blocks whatever the corpus size.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # a preparation process exists to use every core
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for docs in blocks:
            future = pool.submit(encode, docs, add_special_tokens=False)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (docs, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def write_documents(tok: Tokenizer, blocks: Iterator[list[str]], writer: TokenFileWriter, *, eos_id: int,
                    limit: int = 0, desc: str = "") -> dict:
    """Encode every document (or the first ``limit``) and append it, followed by ``eos_id``; returns statistics."""
    t0 = time.perf_counter()
    chars = 0
    if limit:
        blocks = _first(blocks, limit)
    with tqdm(desc=desc, unit=" docs", mininterval=2.0, disable=not desc) as bar:
        for docs, encodings in encode_pipelined(tok, blocks):
            ids = [e.ids for e in encodings]
            lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
            flat = np.empty(int(lengths.sum()), dtype=writer.dtype)
            ends = np.cumsum(lengths)
            flat[ends - 1] = eos_id
            body = np.ones(len(flat), dtype=bool)
            body[ends - 1] = False
            flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=writer.dtype, count=int(body.sum()))
            writer.add_flat(flat, lengths)
            chars += sum(map(len, docs))
            bar.update(len(docs))
            bar.set_postfix(tokens=f"{writer.n_tokens:,}", refresh=False)
    seconds = time.perf_counter() - t0
    return {"chars": chars, "seconds": round(seconds, 3), "tokens_per_s": round(writer.n_tokens / max(seconds, 1e-9), 1)}


def _first(blocks: Iterator[list[str]], limit: int) -> Iterator[list[str]]:
    left = limit
    for docs in blocks:
        if left <= 0:
            return
        yield docs[:left]
        left -= len(docs)
