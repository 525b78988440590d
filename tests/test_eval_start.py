"""``ruadapt eval --start-base``: the start diagnostics of a swapped model against a hand count (docs/init.md).

A tiny qwen2 base with the real Qwen2.5 tokenizer is swapped to an extension of it; the hand count takes the new
tokens to be the ids from ``len(base tokenizer)`` up (the extension contract, not the vocab map eval uses), runs
one unbatched forward pass per line and counts bytes, NLLs and greedy predictions directly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import SHARED_DATA, make_tiny_model

from ruadapt.cli import main

LN2 = math.log(2)


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> dict:
    from ruadapt.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("start")
    corpus = root / "ru.txt"
    with open(SHARED_DATA / "ru_train.txt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(2000)), encoding="utf-8")
    ext = root / "ext"
    base = make_tiny_model(root / "base", "qwen2", seed=3)
    train_tokenizer(base, [corpus], ext, mode="extend", new_tokens=200, progress=False)
    swapped = root / "swapped"
    assert (
        main(
            [
                "-q",
                "swap",
                "--model",
                str(base),
                "--tokenizer",
                str(ext),
                "--out",
                str(swapped),
                "--init-output",
                "mean-norm",
            ]
        )
        == 0
    )
    ru_all = (SHARED_DATA / "ru_eval.txt").read_text(encoding="utf-8").splitlines()
    lines = [line for line in ru_all if 40 <= len(line) <= 160][:6]
    (root / "ru.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "eval"
    assert (
        main(
            [
                "-q",
                "eval",
                "--model",
                f"base={base}",
                "--model",
                f"swapped={swapped}",
                "--start-base",
                "base",
                "--text",
                f"ru={root / 'ru.txt'}",
                "--speed-prompts",
                "0",
                "--window",
                "128",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return {"base": base, "swapped": swapped, "lines": lines, "out": out}


def test_start_diagnostics_equal_a_hand_count(start):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ruadapt.vocab.pieces import TokenCodec

    report = json.loads((start["out"] / "report.json").read_text(encoding="utf-8"))
    got = report["start"]["models"]["swapped"]["ru"]
    n_base = len(AutoTokenizer.from_pretrained(start["base"]))
    tok = AutoTokenizer.from_pretrained(start["swapped"])
    new = set(range(n_base, len(tok)))
    codec = TokenCodec(tok.backend_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(start["swapped"]).eval()
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    b_new = b_old = positions = greedy_new = 0
    nll_new = nll_old = 0.0
    predicted: set[int] = set()
    for line in start["lines"]:
        ids = tok(line, add_special_tokens=False)["input_ids"]
        assert len(ids) < 128  # one window: the whole line in one pass
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([[prefix] + ids[:-1]])).logits[0].float(), dim=-1)
        for pos, t in enumerate(ids):
            nbytes = len(codec.token_bytes(t))
            x = -float(logp[pos, t])
            g = int(logp[pos].argmax())
            predicted.add(g)
            positions += 1
            greedy_new += g in new
            if t in new:
                b_new, nll_new = b_new + nbytes, nll_new + x
            else:
                b_old, nll_old = b_old + nbytes, nll_old + x
    assert b_new > 0 and b_old > 0  # the text uses new tokens and old ones
    assert b_new + b_old == sum(len(line.encode()) for line in start["lines"])
    assert got["new_tokens"] == len(new) == 200
    assert got["positions"] == positions
    assert got["new_byte_share"] == pytest.approx(b_new / (b_new + b_old), abs=1e-12)
    assert got["bpb_new"] == pytest.approx(nll_new / (LN2 * b_new), rel=1e-4)
    assert got["bpb_old"] == pytest.approx(nll_old / (LN2 * b_old), rel=1e-4)
    assert got["new_prediction_share"] == pytest.approx(greedy_new / positions, abs=1e-12)
    assert got["new_never_predicted"] == len(new - predicted)
    # the two parts, weighted by their bytes, give the text's bits per byte; the gap is to the base's own
    assert got["bpb"] == pytest.approx(report["bpb"]["swapped"]["ru"]["bpb"], rel=1e-12)
    mixed = (got["bpb_new"] * b_new + got["bpb_old"] * b_old) / (b_new + b_old)
    assert mixed == pytest.approx(got["bpb"], rel=1e-6)
    assert got["gap"] == pytest.approx(got["bpb"] / report["bpb"]["base"]["ru"]["bpb"] - 1, rel=1e-9)
    assert "base" not in report["start"]["models"]
    md = (start["out"] / "report.md").read_text(encoding="utf-8")
    assert "## Start (new tokens = those base's tokenizer lacks)" in md


def test_start_base_must_name_a_model(start, tmp_path):
    r = main(
        [
            "-q",
            "eval",
            "--model",
            f"swapped={start['swapped']}",
            "--start-base",
            "base",
            "--text",
            f"ru={SHARED_DATA / 'ru_eval.txt'}",
            "--speed-prompts",
            "0",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert r == 2 and not (tmp_path / "e").exists()
