"""Training data (issue 5, must hold 4 and the data contract): SFT labels are -100 on every non-assistant token
of a rendered Qwen2.5 chat (checked token by token against a hand-built ChatML reference); CPT blocks are the
documents' tokens with EOS between them; the token cache is reused; ranks see disjoint, step-determined data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tiny import SHARED_DATA, SHARED_TOKENIZERS, make_tiny_model

from ruadapt.train.config import load_config
from ruadapt.train.cpt import build_cpt_data
from ruadapt.train.data import StepSampler
from ruadapt.train.sft import IGNORE, ChatDataset, load_chat_tokenizer, render_example

QWEN = SHARED_TOKENIZERS / "qwen2.5"
MESSAGES = [
    {"role": "system", "content": "Ты полезный ассистент."},
    {"role": "user", "content": "Переведи на английский: «Кошка спит на диване»."},
    {"role": "assistant", "content": "The cat is sleeping on the sofa."},
    {"role": "user", "content": "А теперь 2+2?"},
    {"role": "assistant", "content": "Четыре (4)."},
]


def test_sft_labels_mask_every_non_assistant_token_of_qwen_chat():
    tok = load_chat_tokenizer(QWEN)
    ids, labels = render_example(tok, MESSAGES)
    # reference: ChatML written by hand, each piece tokenized on its own with the raw tokenizers library
    raw = Tokenizer.from_file(str(QWEN / "tokenizer.json"))
    pieces: list[tuple[str, bool]] = []
    for m in MESSAGES:
        pieces.append((f"<|im_start|>{m['role']}\n", False))
        if m["role"] == "assistant":
            pieces += [(m["content"] + "<|im_end|>", True), ("\n", False)]
        else:
            pieces.append((m["content"] + "<|im_end|>\n", False))
    ref_ids, ref_labels = [], []
    for text, trained in pieces:
        piece = raw.encode(text, add_special_tokens=False).ids
        ref_ids += piece
        ref_labels += piece if trained else [IGNORE] * len(piece)
    assert ids == ref_ids
    for k, (got, want) in enumerate(zip(labels, ref_labels)):
        assert got == want, (k, raw.id_to_token(ids[k]), got, want)
    im_end = raw.token_to_id("<|im_end|>")
    assert sum(1 for i, l in zip(ids, labels) if l == im_end) == 2  # each reply's end-of-turn is learned
    assert sum(1 for i in ids if i == im_end) == 5


def test_chat_collate_pads_with_ignored_labels():
    tok = load_chat_tokenizer(QWEN)
    a = render_example(tok, MESSAGES)
    b = render_example(tok, MESSAGES[:3])
    ids = np.array(a[0] + b[0], np.int32)
    labels = np.array(a[1] + b[1], np.int32)
    ds = ChatDataset(ids, labels, np.array([0, len(a[0]), len(a[0]) + len(b[0])]), pad_id=151643)
    batch = ds.collate(np.array([1, 0]))
    n = len(b[0])
    assert batch["input_ids"].shape == (2, len(a[0]))
    assert batch["attention_mask"][0].sum() == n and (batch["labels"][0, n:] == IGNORE).all()
    assert batch["labels"][1].tolist() == a[1]


def test_cpt_blocks_are_documents_with_eos_between_and_cached(tmp_path):
    model = make_tiny_model(tmp_path / "m", "qwen2")
    lines = (SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:40]
    text = tmp_path / "ru.jsonl"
    text.write_text("".join(json.dumps({"text": l.strip()}, ensure_ascii=False) + "\n" for l in lines), encoding="utf-8")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps({"task": "cpt", "model": str(model), "out": str(tmp_path / "out"),
                                    "deepspeed": str(Path(__file__).parents[1] / "recipes/deepspeed/zero2.json"),
                                    "block_size": 32, "data": {"train": [str(text)], "eval_blocks": 0}}))
    cfg = load_config(cfg_path)
    train, ev = build_cpt_data(cfg, rank=0, barrier=lambda: None)
    assert ev is None
    raw = Tokenizer.from_file(str(model / "tokenizer.json"))
    eos = json.loads((model / "config.json").read_text())["eos_token_id"]
    stream = []
    for l in lines:
        stream += raw.encode(l.strip(), add_special_tokens=False).ids + [eos]
    n = len(stream) // 32
    assert train.blocks.shape == (n, 32)
    assert train.blocks.reshape(-1).tolist() == stream[: n * 32]
    cache = list(cfg.work_dir.glob("cpt-train-*.npz"))
    assert len(cache) == 1
    mtime = cache[0].stat().st_mtime_ns
    again, _ = build_cpt_data(cfg, rank=0, barrier=lambda: None)
    assert cache[0].stat().st_mtime_ns == mtime and np.array_equal(again.blocks, train.blocks)
    text.write_text(text.read_text(encoding="utf-8") + json.dumps({"text": "ещё один документ"}) + "\n", encoding="utf-8")
    build_cpt_data(cfg, rank=0, barrier=lambda: None)
    assert len(list(cfg.work_dir.glob("cpt-train-*.npz"))) == 2  # changed data -> new cache entry


def test_step_sampler_shards_disjointly_and_is_a_function_of_the_step():
    world, micro, accum = 2, 3, 2
    samplers = [StepSampler(50, micro=micro, accum=accum, world=world, rank=r, seed=5) for r in range(world)]
    per_epoch = samplers[0].steps_per_epoch
    seen = []
    for step in range(per_epoch):
        items = [np.concatenate(s.micro_batches(step)) for s in samplers]
        assert not set(items[0]) & set(items[1])
        seen += [i for it in items for i in it]
    assert len(seen) == len(set(seen)) == per_epoch * micro * accum * world
    fresh = StepSampler(50, micro=micro, accum=accum, world=world, rank=1, seed=5)
    for step in (7, 3, per_epoch + 1):  # any order, as after a resume
        assert all(np.array_equal(a, b) for a, b in zip(fresh.micro_batches(step), samplers[1].micro_batches(step)))
