"""Continued pretraining data: plain text / JSONL documents → EOS-separated stream → ``block_size`` blocks.

Labels are the inputs (the model shifts them); every token of every block is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..record import sha256_file
from ..tokdir import load_tokenizer, tokenizer_json_path
from .config import RunConfig
from .data import cached_arrays, concat_with_eos, eos_token_id, file_facts, pack, read_documents, split_eval

ENCODE_CHUNK = 2048


def tokenize_files(model_dir: Path, files: list[str], text_field: str, limit: int) -> list[list[int]]:
    """Token ids of every document (no BOS/EOS added here: EOS goes between documents in :func:`concat_with_eos`)."""
    tok = load_tokenizer(model_dir, "model")
    docs: list[list[int]] = []
    for f in files:
        batch: list[str] = []
        for text in read_documents(Path(f), text_field, limit):
            batch.append(text)
            if len(batch) == ENCODE_CHUNK:
                docs.extend(e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
                batch = []
        if batch:
            docs.extend(e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
    return docs


class BlockDataset:
    """Packed ``[n, block_size]`` token blocks; :meth:`collate` turns item indices into a model batch."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def collate(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.blocks[np.asarray(idx)].astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}

    def tokens(self, idx: np.ndarray) -> int:
        return int(len(idx) * self.blocks.shape[1])


def build_cpt_data(cfg: RunConfig, *, rank: int, barrier: Callable[[], None]) -> tuple[BlockDataset, BlockDataset | None]:
    """(train, eval) block datasets, tokenized once into the work dir."""
    model = Path(cfg.model)
    eos = eos_token_id(model)
    d = cfg.data
    key = {
        "kind": "cpt",
        "tokenizer": sha256_file(tokenizer_json_path(model, "model")),
        "eos": eos,
        "text_field": d.text_field,
        "max_documents": d.max_documents,
        "block_size": cfg.block_size,
    }

    def build(files: list[str]) -> Callable[[], dict[str, np.ndarray]]:
        def run() -> dict[str, np.ndarray]:
            stream = concat_with_eos(tokenize_files(model, files, d.text_field, d.max_documents), eos)
            return {"blocks": pack(stream, cfg.block_size).astype(np.int32)}
        return run

    train = cached_arrays(cfg.work_dir, "cpt-train", {**key, "files": file_facts(d.train)}, build(d.train),
                          rank=rank, barrier=barrier)["blocks"]
    if d.eval:
        ev = cached_arrays(cfg.work_dir, "cpt-eval", {**key, "files": file_facts(d.eval)}, build(d.eval),
                           rank=rank, barrier=barrier)["blocks"]
        return BlockDataset(train), BlockDataset(ev)
    if d.eval_blocks <= 0:
        return BlockDataset(train), None
    tr, ev = split_eval(len(train), d.eval_blocks, cfg.train.seed)
    return BlockDataset(train[tr]), (BlockDataset(train[ev]) if len(ev) else None)
