"""SFT / calibration data: chat JSONL (``{"messages": [...]}``) rendered with the model's own chat template.

Only assistant tokens are trained: every other token (system, user, the template's role headers) gets label
-100. Which characters belong to an assistant turn is found by rendering the conversation twice per turn —
up to the turn with the generation prompt, and through the turn — so whatever the template writes around a
message, the difference is exactly what the model must produce (the reply and its end-of-turn token).
Trailing whitespace after the end-of-turn token is not trained (it is template formatting, not output).
A token is trained when its characters lie entirely inside an assistant span.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..chatdata import read_chats
from ..errors import RuadaptError
from ..record import sha256_file
from ..tokdir import tokenizer_json_path
from .config import RunConfig
from .data import cached_arrays, file_facts, split_eval

IGNORE = -100


def load_chat_tokenizer(model_dir: Path):
    """The transformers tokenizer (for the Jinja chat template and offsets); a one-line error without a template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not tok.chat_template:
        raise RuadaptError(f"{model_dir}: the tokenizer has no chat template (SFT renders conversations with it)")
    return tok


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn in it."""
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(through) or not through.startswith(before):
            raise RuadaptError("the chat template does not render conversations incrementally; cannot locate assistant turns")
        end = len(through.rstrip())
        spans.append((len(before), end))
    return full, spans


def render_example(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are the ids on assistant tokens, -100 elsewhere."""
    text, spans = assistant_spans(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = []
    for tid, (a, b) in zip(ids, enc["offset_mapping"]):
        inside = any(s <= a and b <= e for s, e in spans) and b > a
        labels.append(tid if inside else IGNORE)
    return ids, labels


class ChatDataset:
    """Variable-length conversations (truncated to block_size), padded per micro-batch."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, pad_id: int):
        self.ids, self.labels, self.offsets, self.pad_id = ids, labels, offsets, pad_id

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, idx: np.ndarray) -> "ChatDataset":
        ids, labels, offs = [], [], [0]
        for i in idx:
            a, b = self.offsets[i], self.offsets[i + 1]
            ids.append(self.ids[a:b])
            labels.append(self.labels[a:b])
            offs.append(offs[-1] + b - a)
        return ChatDataset(np.concatenate(ids), np.concatenate(labels), np.array(offs), self.pad_id)

    def collate(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        rows = [(self.ids[self.offsets[i]:self.offsets[i + 1]], self.labels[self.offsets[i]:self.offsets[i + 1]]) for i in idx]
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, (a, b) in enumerate(rows):
            ids[k, : len(a)] = torch.from_numpy(a.astype(np.int64))
            labels[k, : len(b)] = torch.from_numpy(b.astype(np.int64))
            mask[k, : len(a)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def tokens(self, idx: np.ndarray) -> int:
        return int(sum(self.offsets[i + 1] - self.offsets[i] for i in idx))


def build_sft_data(cfg: RunConfig, *, rank: int, barrier: Callable[[], None]) -> tuple[ChatDataset, ChatDataset | None]:
    model = Path(cfg.model)
    key = {
        "kind": "sft",
        "tokenizer": sha256_file(tokenizer_json_path(model, "model")),
        "tokenizer_config": sha256_file(model / "tokenizer_config.json") if (model / "tokenizer_config.json").is_file() else "",
        "block_size": cfg.block_size,
        "max_documents": cfg.data.max_documents,
    }
    tok_holder: list = []

    def build(files: list[str]) -> Callable[[], dict[str, np.ndarray]]:
        def run() -> dict[str, np.ndarray]:
            if not tok_holder:
                tok_holder.append(load_chat_tokenizer(model))
            tok = tok_holder[0]
            ids, labels, offs = [], [], [0]
            for f in files:
                for msgs in read_chats(f, max_lines=cfg.data.max_documents or None, what="data.train"):
                    i, l = render_example(tok, msgs)
                    i, l = i[: cfg.block_size], l[: cfg.block_size]
                    if all(x == IGNORE for x in l[1:]):
                        continue  # truncation left nothing to learn
                    ids.extend(i)
                    labels.extend(l)
                    offs.append(len(ids))
            if len(offs) == 1:
                raise RuadaptError(f"{files[0]}: no conversation with assistant tokens within block_size {cfg.block_size}")
            return {"ids": np.array(ids, np.int32), "labels": np.array(labels, np.int32), "offsets": np.array(offs, np.int64)}
        return run

    pad = _pad_id(model)
    a = cached_arrays(cfg.work_dir, "sft-train", {**key, "files": file_facts(cfg.data.train)}, build(cfg.data.train),
                      rank=rank, barrier=barrier)
    train = ChatDataset(a["ids"], a["labels"], a["offsets"], pad)
    if cfg.data.eval:
        b = cached_arrays(cfg.work_dir, "sft-eval", {**key, "files": file_facts(cfg.data.eval)}, build(cfg.data.eval),
                          rank=rank, barrier=barrier)
        return train, ChatDataset(b["ids"], b["labels"], b["offsets"], pad)
    if cfg.data.eval_blocks <= 0:
        return train, None
    tr, ev = split_eval(len(train), cfg.data.eval_blocks, cfg.train.seed)
    return train.subset(tr), (train.subset(ev) if len(ev) else None)


def _pad_id(model: Path) -> int:
    from .data import eos_token_id

    cfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
    pad = cfg.get("pad_token_id")
    return pad if isinstance(pad, int) else eos_token_id(model)
