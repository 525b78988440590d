"""Token files: a tokenized corpus on disk as flat arrays that every rank memory-maps (nanoGPT / Megatron style).

One directory per (source file, tokenizer, options) — its name ends in the content hash of all of them::

    <cache_dir>/<kind>-<file stem>-<16 hex key>/
        tokens.bin   uint16 (vocabulary ≤ 65,536 ids) or uint32, little-endian: every document's ids, one after
                     another (CPT: each document followed by EOS, so the file is the training stream as is)
        docs.idx     int64, little-endian, n_docs + 1 offsets into tokens.bin: document i = tokens[idx[i]:idx[i+1]]
        mask.bin     (SFT only) uint8, one per token: 1 = trained (an assistant token), 0 = context
        meta.json    {"format": "ruadapt-tokens", "version", "dtype", "n_tokens", "n_docs", "has_mask", "key", ...}

Read it anywhere with ``np.memmap(d/"tokens.bin", dtype=meta["dtype"], mode="r")`` and
``np.fromfile(d/"docs.idx", dtype="<i8")``. Why this and not Arrow (HF ``datasets``): training reads fixed-size
blocks at random offsets of one token stream; a flat array gives that with one slice, no decoding, zero copies,
and the page cache shared by every rank of a node; 2 bytes a token for vocabularies up to 65,536.

A directory is complete when it exists under its final name: it is written as ``.<name>.tmp-<pid>`` and renamed
after every file is flushed. A killed preparation leaves only a temp dir, which the next one removes and
restarts (under a lock file, so two jobs sharing a cache dir never write the same entry). Opening checks the
sizes against meta.json, so a token file truncated on disk is detected and rebuilt, never used.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "ruadapt-tokens"
VERSION = 1
TOKENS, DOCS, MASK, META = "tokens.bin", "docs.idx", "mask.bin", "meta.json"


def token_dtype(vocab_rows: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (half the disk, page cache and read bandwidth for small vocabularies)."""
    return np.dtype("<u2") if vocab_rows <= 1 << 16 else np.dtype("<u4")


@dataclass
class TokenFile:
    """A complete token directory, memory-mapped: nothing is read until a slice is used."""

    path: Path
    meta: dict
    tokens: np.ndarray  # memmap, n_tokens
    offsets: np.ndarray  # memmap, n_docs + 1
    mask: np.ndarray | None  # memmap, n_tokens (SFT)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])


def open_token_file(path: Path) -> TokenFile:
    """Map a token directory; :class:`DamagedTokenFile` when a file is missing or its size disagrees with meta.json."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DamagedTokenFile(f"{path / META}: unreadable ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DamagedTokenFile(f"{path / META}: not a {FORMAT} v{VERSION} directory")
    dtype = np.dtype(meta["dtype"])
    n, docs = int(meta["n_tokens"]), int(meta["n_docs"])
    want = {TOKENS: n * dtype.itemsize, DOCS: (docs + 1) * 8}
    if meta.get("has_mask"):
        want[MASK] = n
    for name, size in want.items():
        f = path / name
        got = f.stat().st_size if f.is_file() else None
        if got != size:
            raise DamagedTokenFile(f"{f}: {'missing' if got is None else f'{got:,} bytes'}, meta.json says {size:,}")
    tokens = np.memmap(path / TOKENS, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    offsets = np.memmap(path / DOCS, dtype="<i8", mode="r", shape=(docs + 1,))
    if int(offsets[0]) != 0 or int(offsets[-1]) != n:
        raise DamagedTokenFile(f"{path / DOCS}: offsets run from {int(offsets[0])} to {int(offsets[-1])}, not 0 to {n}")
    mask = np.memmap(path / MASK, dtype=np.uint8, mode="r", shape=(n,)) if meta.get("has_mask") and n else None
    return TokenFile(path, meta, tokens, offsets, mask)


class DamagedTokenFile(Exception):
    """A token directory that must not be used (truncated, half-written, another format)."""


class TokenFileWriter:
    """Appends documents to the three arrays of a temp directory, in bounded memory; :meth:`finish` writes meta.json."""

    def __init__(self, tmp: Path, dtype: np.dtype, with_mask: bool):
        self.tmp, self.dtype, self.with_mask = tmp, dtype, with_mask
        tmp.mkdir(parents=True)
        self._tokens = open(tmp / TOKENS, "wb")
        self._docs = open(tmp / DOCS, "wb")
        self._mask = open(tmp / MASK, "wb") if with_mask else None
        self._docs.write(np.zeros(1, "<i8").tobytes())
        self.n_tokens = 0
        self.n_docs = 0

    def add(self, docs: list[np.ndarray], masks: list[np.ndarray] | None = None) -> None:
        """Append a batch of documents (id arrays; with ``masks`` for SFT, one uint8 per token)."""
        if not docs:
            return
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        self.add_flat(np.concatenate(docs), lengths, np.concatenate(masks) if masks is not None else None)

    def add_flat(self, flat: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append documents given as one flat id array and their lengths (no per-document arrays needed)."""
        if self.with_mask != (mask is not None):
            raise ValueError("a mask goes with every document of an SFT token file and with none of a CPT one")
        self._tokens.write(memoryview(np.ascontiguousarray(flat, dtype=self.dtype)))  # type: ignore[arg-type]  # numpy stubs: no __buffer__ before 3.12
        self._docs.write(memoryview((self.n_tokens + np.cumsum(lengths)).astype("<i8")))  # type: ignore[arg-type]  # numpy stubs: no __buffer__ before 3.12
        if self._mask is not None:
            self._mask.write(memoryview(np.ascontiguousarray(mask, dtype=np.uint8)))  # type: ignore[arg-type]  # numpy stubs: no __buffer__ before 3.12
        self.n_tokens += int(lengths.sum())
        self.n_docs += len(lengths)

    def finish(self, meta: dict) -> None:
        for f in (self._tokens, self._docs, self._mask):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        full = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.str,
            "n_tokens": self.n_tokens,
            "n_docs": self.n_docs,
            "has_mask": self.with_mask,
            **meta,
        }
        (self.tmp / META).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def abort(self) -> None:
        for f in (self._tokens, self._docs, self._mask):
            if f is not None and not f.closed:
                f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Exclusive lock for building ``entry`` (a sibling ``.<name>.lock``), so concurrent jobs never build it twice."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def temp_dir_for(entry: Path) -> Path:
    """A fresh temp dir beside ``entry``; stale ones of killed builds are removed (call under :func:`locked`)."""
    for stale in entry.parent.glob(f".{entry.name}.tmp-*"):
        log.warning("removing %s (left by a killed preparation)", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return entry.parent / f".{entry.name}.tmp-{os.getpid()}"


def publish(tmp: Path, entry: Path) -> None:
    """Make a finished temp dir the entry (atomic rename; a damaged old entry is moved aside first)."""
    if entry.exists():
        shutil.rmtree(entry)
    os.replace(tmp, entry)
    fd = os.open(entry.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
