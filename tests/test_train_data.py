"""Training data (issues 5 and 14): SFT labels are -100 on every non-assistant token of a rendered Qwen2.5 chat
(checked token by token against a hand-built ChatML reference); CPT token files are the documents' tokens with EOS
after each (checked against the raw tokenizer), reused while file, tokenizer and options are unchanged, rebuilt
when damaged, never trusted half-written; the weighted mix is exact and every rank's items are a pure function of
the step; ranks see disjoint data."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from tiny import SHARED_DATA, SHARED_TOKENIZERS, make_tiny_model

from ruadapt.errors import RuadaptError
from ruadapt.train.config import load_config
from ruadapt.train.data import IGNORE, Items, MixSampler, apportion
from ruadapt.train.prepare import load_run_data, prepare_run
from ruadapt.train.sft import ChatSource, load_chat_tokenizer, render_example, write_chats
from ruadapt.train.tokenfile import TokenFileWriter, open_token_file
from tokenizers import Tokenizer

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


def test_chat_items_pad_with_ignored_labels(tmp_path):
    tok = load_chat_tokenizer(QWEN)
    a = render_example(tok, MESSAGES)
    b = render_example(tok, MESSAGES[:3])
    w = TokenFileWriter(tmp_path / "chats", np.dtype("<u4"), with_mask=True)
    write_chats(tok, iter([MESSAGES, MESSAGES[:3]]), w, block_size=512)
    w.finish({})
    items = Items([(ChatSource(open_token_file(tmp_path / "chats")), 0, 2)], pad_id=151643, names=["chats"])
    batch = items.collate(np.array([1, 0]))
    n = len(b[0])
    assert batch["input_ids"].shape == (2, len(a[0]))
    assert batch["input_ids"][0, :n].tolist() == b[0] and batch["input_ids"][1].tolist() == a[0]
    assert batch["attention_mask"][0].sum() == n and (batch["labels"][0, n:] == IGNORE).all()
    assert batch["labels"][1].tolist() == a[1] and batch["labels"][0, :n].tolist() == b[1]


def cpt_config(tmp_path: Path, model: Path, train, **data) -> Path:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        json.dumps(
            {
                "task": "cpt",
                "model": str(model),
                "out": str(tmp_path / "out"),
                "deepspeed": str(Path(__file__).parents[1] / "recipes/deepspeed/zero2.json"),
                "block_size": 32,
                "data": {"train": train, "eval_blocks": 0, **data},
            }
        )
    )
    return cfg_path


def reference_stream(model: Path, docs: list[str]) -> list[int]:
    raw = Tokenizer.from_file(str(model / "tokenizer.json"))
    eos = json.loads((model / "config.json").read_text())["eos_token_id"]
    return [i for d in docs for i in raw.encode(d, add_special_tokens=False).ids + [eos]]


def test_cpt_token_file_is_documents_with_eos_after_each_and_cached(tmp_path):
    model = make_tiny_model(tmp_path / "m", "qwen2")
    lines = [l.strip() for l in (SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:40] if l.strip()]
    text = tmp_path / "ru.jsonl"
    text.write_text("".join(json.dumps({"text": l}, ensure_ascii=False) + "\n" for l in lines), encoding="utf-8")
    cfg = load_config(cpt_config(tmp_path, model, [str(text)]))
    manifest = prepare_run(cfg, progress=False)
    entry = Path(manifest["train"][0]["entry"])
    tf = open_token_file(entry)
    stream = reference_stream(model, lines)
    assert tf.tokens.dtype == np.dtype("<u4")  # 151,665 ids do not fit uint16
    assert tf.tokens.tolist() == stream and tf.n_docs == len(lines)
    assert (
        tf.offsets[1]
        == len(Tokenizer.from_file(str(model / "tokenizer.json")).encode(lines[0], add_special_tokens=False).ids) + 1
    )
    train, ev, weights = load_run_data(cfg)
    n = len(stream) // 32
    assert ev is None and weights == [0.0] and len(train) == n
    assert np.concatenate([train.get(i)[0] for i in range(n)]).tolist() == stream[: n * 32]
    assert train.collate(np.array([1]))["labels"].tolist() == [stream[32:64]]
    mtime = (entry / "tokens.bin").stat().st_mtime_ns
    prepare_run(cfg, progress=False)
    assert (entry / "tokens.bin").stat().st_mtime_ns == mtime  # reused
    text.write_text(
        text.read_text(encoding="utf-8") + json.dumps({"text": "ещё один документ"}) + "\n", encoding="utf-8"
    )
    prepare_run(cfg, progress=False)
    assert len(list(cfg.token_cache.glob("cpt-ru.jsonl-*"))) == 2  # changed data -> new cache entry


def test_truncated_token_file_is_rebuilt_and_never_used(tmp_path):
    model = make_tiny_model(tmp_path / "m", "qwen2")
    text = tmp_path / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:30]), encoding="utf-8")
    cfg = load_config(cpt_config(tmp_path, model, [str(text)]))
    entry = Path(prepare_run(cfg, progress=False)["train"][0]["entry"])
    good = (entry / "tokens.bin").read_bytes()
    with open(entry / "tokens.bin", "r+b") as f:
        f.truncate(len(good) - 8)
    with pytest.raises(RuadaptError, match="tokens.bin: .* bytes, meta.json says"):
        load_run_data(cfg)  # a rank never trains on it
    prepare_run(cfg, progress=False)  # the next preparation notices and rebuilds it
    assert (entry / "tokens.bin").read_bytes() == good


def test_killed_preparation_leaves_nothing_trusted(tmp_path, monkeypatch):
    import ruadapt.train.prepare as prepare

    model = make_tiny_model(tmp_path / "m", "qwen2")
    text = tmp_path / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:30]), encoding="utf-8")
    cfg = load_config(cpt_config(tmp_path, model, [str(text)]))
    real = prepare.write_documents

    def interrupted(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt  # after every token was written, before meta.json and the rename

    monkeypatch.setattr(prepare, "write_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_run(cfg, progress=False)
    assert not [p for p in cfg.token_cache.iterdir() if not p.name.endswith(".lock")]
    monkeypatch.setattr(prepare, "write_documents", real)
    # a SIGKILLed preparation leaves its temp dir behind: the next one removes it and builds the entry
    entry = Path(prepare_run(cfg, progress=False)["train"][0]["entry"])
    good = (entry / "tokens.bin").read_bytes()
    shutil.rmtree(entry)
    stale = cfg.token_cache / f".{entry.name}.tmp-12345"
    stale.mkdir()
    (stale / "tokens.bin").write_bytes(good[:100])
    prepare_run(cfg, progress=False)
    assert not stale.exists() and (entry / "tokens.bin").read_bytes() == good


def test_apportion_is_the_merged_schedule_exact_and_monotone():
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = [Fraction(int(x)) for x in rng.integers(1, 9, size=int(rng.integers(1, 5)))]
        total = sum(w)
        w = [x / total for x in w]
        # reference: sort every slot time (j + 1/2)/w_s, ties by source
        slots = sorted(((j + Fraction(1, 2)) / ws, s) for s, ws in enumerate(w) for j in range(200))
        counts = [0] * len(w)
        for t in range(1, 150):
            counts[slots[t - 1][1]] += 1
            got = apportion(w, t)
            assert got == counts, (w, t)
            assert all(abs(c - float(ws) * t) <= 1 for c, ws in zip(got, w))


class _Fixed:
    def __init__(self, n: int, offset: int):
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def item(self, i: int):
        return np.array([self.offset + i]), None


def test_mix_sampler_shards_disjointly_and_is_a_function_of_the_step():
    world, micro, accum = 2, 3, 2
    items = Items([(_Fixed(50, 0), 0, 50)], pad_id=0, names=["a"])
    samplers = [MixSampler(items, [0.0], micro=micro, accum=accum, world=world, rank=r, seed=5) for r in range(world)]
    per_epoch = 50 // (micro * accum * world)
    seen = []
    for step in range(per_epoch):
        got = [np.concatenate(s.micro_batches(step)) for s in samplers]
        assert not set(got[0]) & set(got[1])
        seen += [i for it in got for i in it]
    assert len(seen) == len(set(seen)) == per_epoch * micro * accum * world  # no item twice within an epoch
    fresh = MixSampler(items, [0.0], micro=micro, accum=accum, world=world, rank=1, seed=5)
    for step in (7, 3, per_epoch + 1):  # any order, as after a resume
        assert all(np.array_equal(a, b) for a, b in zip(fresh.micro_batches(step), samplers[1].micro_batches(step)))


def test_weighted_mix_matches_the_weights_and_upsamples_a_small_source():
    items = Items([(_Fixed(1000, 0), 0, 1000), (_Fixed(7, 10_000), 0, 7)], pad_id=0, names=["big", "small"])
    world, micro, accum = 2, 4, 1
    samplers = [
        MixSampler(items, [0.9, 0.1], micro=micro, accum=accum, world=world, rank=r, seed=1) for r in range(world)
    ]
    counts = np.zeros(2)
    small_seen = []
    for step in range(125):
        for s in samplers:
            for idx in s.micro_batches(step):
                counts += np.bincount(items.part_of(idx), minlength=2)
                small_seen += [int(items.get(int(i))[0][0]) for i in idx if items.part_of([i])[0] == 1]
    assert counts.sum() == 125 * 8 and abs(counts[1] / counts.sum() - 0.1) <= 0.001
    assert set(small_seen) == set(range(10_000, 10_007))  # 100 draws from 7 items: every one, repeatedly
    natural = MixSampler(items, [0.0, 0.0], micro=micro, accum=accum, world=world, rank=0, seed=1)
    assert [float(x) for x in natural.weights] == pytest.approx([1000 / 1007, 7 / 1007])


def test_resuming_on_changed_data_is_refused(tmp_path):
    from ruadapt.train.rundir import COMPLETE, RUN_JSON, STATE

    model = make_tiny_model(tmp_path / "m", "qwen2")
    text = tmp_path / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:30]), encoding="utf-8")
    cfg = load_config(cpt_config(tmp_path, model, [str(text)]))
    prepare_run(cfg, progress=False)
    ckpt = cfg.work_dir / "checkpoints"  # what a launch leaves after its first complete checkpoint
    (ckpt / "step-0000002").mkdir(parents=True)
    (ckpt / "step-0000002" / STATE).write_text("{}")
    (ckpt / COMPLETE).write_text("step-0000002\n")
    (cfg.work_dir / RUN_JSON).write_text("{}")
    prepare_run(cfg, progress=False)  # same data: resumable
    text.write_text(text.read_text(encoding="utf-8") + "новая строка\n", encoding="utf-8")
    with pytest.raises(RuadaptError, match=r"ru.txt: its contents .* changed since the checkpoints .* --overwrite"):
        prepare_run(cfg, progress=False)
    prepare_run(cfg, progress=False, overwrite=True)
    assert not ckpt.exists()  # started over on the new data


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_index_permutation_is_a_seeded_bijection(n):
    from ruadapt.train.data import IndexPermutation

    p = IndexPermutation(n, (5, 0, 0))
    order = [p(j) for j in range(n)]
    assert sorted(order) == list(range(n))  # every item exactly once
    assert order == [IndexPermutation(n, (5, 0, 0))(j) for j in range(n)]  # a function of the key
    if n >= 64:
        other = [IndexPermutation(n, (5, 0, 1))(j) for j in range(n)]  # the next epoch: another order
        assert sum(a == b for a, b in zip(order, other)) < n // 8
        assert sum(a == j for j, a in enumerate(order)) < n // 8  # shuffled, not near the identity
        # a uniform shuffle puts item j in the first half about half of the time
        assert abs(sum(a < n // 2 for a in order[: n // 2]) - n // 4) < 4 * (n**0.5)


def test_sampler_memory_does_not_grow_with_the_number_of_items():
    """10**12 items (a corpus far larger than memory): the sampler still gives disjoint batches at once; a stored
    permutation would need 8 TB on every rank."""
    import tracemalloc

    items = Items([(_Fixed(10**12, 0), 0, 10**12)], pad_id=0, names=["huge"])
    tracemalloc.start()
    samplers = [MixSampler(items, [0.0], micro=4, accum=2, world=2, rank=r, seed=3) for r in range(2)]
    got = [np.concatenate(s.micro_batches(12345)) for s in samplers]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    assert not set(got[0]) & set(got[1]) and all(0 <= i < 10**12 for g in got for i in g)
