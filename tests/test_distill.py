"""Stage ``distill`` (ruadapt/train/distill.py, issue 23 point 3): the new input rows of a swapped tiny Qwen2 trained
so its hidden states on the new tokens match the base's on the old pieces.

Without DeepSpeed: the teacher sequence (new tokens replaced by their pieces) is the base tokenizer's own encoding,
and the objective equals a reference computed another way (the *base* model on the base tokenizer's ids, positions
aligned by byte offsets). Through the real launcher (2 CPU processes): the objective on the trained text goes down,
only new input rows move (exported body, lm_head and old rows bit-identical), a run killed after its step-2 checkpoint
resumes to the weights of an uninterrupted one, and the next-token option moves only new lm_head rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import SHARED_DATA, SHARED_TOKENIZERS, dir_hash, make_tiny_model, tensor_hashes

from ruadapt.cli import main
from ruadapt.io.record import check_record
from ruadapt.vocab.pieces import TokenCodec
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
FIRST_NEW = 151665  # len(Qwen2.5 tokenizer): the first id of an extension
STEPS = 8


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def swapped(tmp_path_factory) -> dict:
    """base (tiny untied Qwen2, Qwen2.5 tokenizer) → +300 Russian merges → swap (mean of pieces)."""
    from ruadapt.swap import swap_model
    from ruadapt.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("distill")
    corpus = root / "ru_tok.txt"
    with open(SHARED_DATA / "ru_train.txt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(3000)]
    corpus.write_text("".join(lines), encoding="utf-8")
    train_tokenizer(
        SHARED_TOKENIZERS / "qwen2.5", [corpus], root / "ext", mode="extend", new_tokens=300, progress=False
    )
    base = smooth(make_tiny_model(root / "base", "qwen2", tied=False))
    swap_model(base, root / "ext", root / "swapped", init="mean", progress=False)  # FVT: a start with a gap to close
    text = root / "ru.txt"  # the training text: short enough that 8 steps see each of its blocks a few times
    text.write_text("".join(lines[:40]), encoding="utf-8")
    return {
        "root": root,
        "base": base,
        "model": root / "swapped",
        "text": text,
        "lines": [x.strip()[:200] for x in lines[:40]],
        "hash": dir_hash(root / "swapped"),
    }


def smooth(model_dir: Path, scale: float = 0.1) -> Path:
    """The body's matrices × ``scale``: tiny.py's N(0, 0.5) weights make a chaotic function of the input rows, in
    which 8 steps of any optimiser wander; a pretrained-like scale gives the objective a slope to follow."""
    from safetensors.torch import save_file

    for f in sorted(Path(model_dir).glob("*.safetensors")):
        t = load_file(f)
        t = {n: v * scale if v.ndim == 2 and n not in (EMBED, HEAD) else v for n, v in t.items()}
        save_file(t, f, metadata={"format": "pt"})
    return Path(model_dir)


def byte_ends(codec: TokenCodec, ids: list[int]) -> np.ndarray:
    return np.cumsum([len(codec.token_bytes(i)) for i in ids])


def reference_objective(base_dir: Path, model_dir: Path, lines: list[str]) -> float:
    """The AweDist loss computed another way: the base model on the base tokenizer's ids, the model on its own
    tokenizer's ids, a new-vocabulary position aligned with the base position that ends at the same byte; squared
    error of the last hidden states, mean over the width and over the positions from the first new token on."""
    from transformers import AutoModelForCausalLM

    base_tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    new_tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    base_codec, new_codec = TokenCodec(base_tok), TokenCodec(new_tok)
    total, count = 0.0, 0
    for line in lines:
        b_ids = base_tok.encode(line, add_special_tokens=False).ids
        n_ids = new_tok.encode(line, add_special_tokens=False).ids
        new = [k for k, i in enumerate(n_ids) if i >= FIRST_NEW]
        if not new:
            continue
        b_end, n_end = byte_ends(base_codec, b_ids), byte_ends(new_codec, n_ids)
        align = [int(np.flatnonzero(b_end == e)[-1]) for e in n_end]
        with torch.no_grad():
            hb = base(input_ids=torch.tensor([b_ids]), output_hidden_states=True).hidden_states[-1][0]
            hn = model(input_ids=torch.tensor([n_ids]), output_hidden_states=True).hidden_states[-1][0]
        err = (hn - hb[align]).pow(2).mean(-1)[new[0] :]
        total += float(err.sum())
        count += len(err)
    return total / count


class Engine:
    """What DistillObjective needs of a DeepSpeed engine: ``module`` and a forward."""

    def __init__(self, model):
        self.module = model

    def __call__(self, **kw):
        return self.module(**kw)


def test_pieces_are_the_base_tokenization_and_the_objective_matches_the_reference(swapped):
    from transformers import AutoModelForCausalLM

    from ruadapt.train.distill import DistillObjective

    model_dir, base_dir = swapped["model"], swapped["base"]
    lines = [x[:200] for x in (SHARED_DATA / "ru_eval.txt").read_text(encoding="utf-8").splitlines()[:60] if x.strip()]
    cfg = SimpleNamespace(
        model=str(model_dir),
        embeddings=SimpleNamespace(new_rows_from=FIRST_NEW),
        distill=SimpleNamespace(base=str(base_dir), layer=-1, next_token_weight=0.0),
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    objective = DistillObjective(cfg, Engine(model))
    base_tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    new_tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    total = count = 0.0
    with_new = 0
    for line in lines:
        n_ids = new_tok.encode(line, add_special_tokens=False).ids
        pieces, _ = objective.table.expand(np.array(n_ids))
        assert pieces.tolist() == base_tok.encode(line, add_special_tokens=False).ids, line
        first = next((k for k, i in enumerate(n_ids) if i >= FIRST_NEW), None)
        if first is None:
            continue
        with_new += 1
        with torch.no_grad():
            loss = objective(Engine(model), {"input_ids": torch.tensor([n_ids])})
        n = len(n_ids) - first
        total += float(loss) * n
        count += n
    assert with_new >= 20
    ref = reference_objective(base_dir, model_dir, lines)
    assert ref > 1e-3  # mean-of-pieces rows do not reproduce the base's states
    assert total / count == pytest.approx(ref, rel=1e-5)


def test_model_that_is_not_the_swap_of_base_is_refused(swapped, tmp_path, capsys):
    other = make_tiny_model(tmp_path / "other", "qwen2", tied=False, seed=1)
    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "task": "cpt",
                "model": str(swapped["model"]),
                "out": str(tmp_path / "out"),
                "stage": "distill",
                "block_size": 64,
                "deepspeed": str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
                "distill": {"base": str(other)},
                "data": {"train": [str(swapped["text"])]},
            }
        )
    )
    rc = main(["train", "--config", str(cfg), "--num-gpus", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "row 0 of model.embed_tokens.weight differs" in err[0] and str(other) in err[0]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the real launcher
def launch(configs: list[Path], port: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env_extra or {})
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "ruadapt.cli", "train", "--num-gpus", "2", "--master-port", str(port)]
    for c in configs:
        cmd += ["--config", str(c)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(swapped) -> dict:
    """Launch 1: the uninterrupted run · a next-token run · the same run SIGKILLed (rank 0) after step 3.
    Launch 2: the killed run relaunched (resumes from its step-2 checkpoint)."""
    root = swapped["root"]
    train = dict(
        micro_batch_size=2,
        max_steps=STEPS,
        lr=0.05,
        warmup_steps=0,
        weight_decay=0.0,
        save_steps=STEPS,
        log_steps=1,
        seed=5,
    )
    common = dict(
        task="cpt",
        model=str(swapped["model"]),
        deepspeed=str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
        stage="distill",
        block_size=64,
        distill={"base": str(swapped["base"])},
        data={"train": [str(swapped["text"])], "eval_blocks": 2},
        train=train,
    )

    def write(name: str, **changes) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**common, "out": str(root / f"out_{name}"), **changes}, sort_keys=False))
        return path

    cfg = {
        "ref": write("ref"),
        "killed": write("killed", train={**train, "save_steps": 2}),
        "head": write(
            "head",
            distill={"base": str(swapped["base"]), "next_token_weight": 1.0},
            train={**train, "max_steps": 3, "save_steps": 3},
        ),
    }
    first = launch(
        [cfg["ref"], cfg["head"], cfg["killed"]],
        29741,
        {"RUADAPT_TRAIN_CALLBACKS": "train_hooks:kill_at_step", "RUADAPT_TEST_KILL_AT": "out_killed:3"},
    )
    assert (root / "out_head" / "ruadapt_train.json").is_file(), first.stdout[-3000:] + first.stderr[-3000:]
    ckpt = root / "out_killed.work" / "checkpoints"
    killed = {
        "rc": first.returncode,
        "out_exists": (root / "out_killed").exists(),
        "complete": (ckpt / "complete").read_text().strip() if (ckpt / "complete").is_file() else None,
    }
    second = launch([cfg["killed"]], 29742)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"root": root, "killed": killed, "log2": second.stdout + second.stderr}


def record(out: Path) -> dict:
    return check_record(json.loads((out / "ruadapt_train.json").read_text()))


@pytest.mark.slow
def test_distill_lowers_its_objective_and_moves_only_new_input_rows(swapped, runs):
    src, out = swapped["model"], runs["root"] / "out_ref"
    before = reference_objective(swapped["base"], src, swapped["lines"])
    after = reference_objective(swapped["base"], out, swapped["lines"])
    assert after < 0.7 * before, (before, after)
    a, b = tensors(src), tensors(out)
    assert set(a) == set(b)
    h_in, h_out = tensor_hashes(src), tensor_hashes(out)
    assert all(h_in[n] == h_out[n] for n in a if n != EMBED)  # body and lm_head bit-identical
    assert torch.equal(a[EMBED][:FIRST_NEW], b[EMBED][:FIRST_NEW])  # old rows bit-identical
    moved = set((FIRST_NEW + (a[EMBED][FIRST_NEW:] != b[EMBED][FIRST_NEW:]).any(-1).nonzero().flatten()).tolist())
    new_tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    used = {
        i
        for x in swapped["text"].read_text(encoding="utf-8").splitlines()
        for i in new_tok.encode(x, add_special_tokens=False).ids
        if i >= FIRST_NEW
    }
    assert len(moved) >= 10 and moved <= used  # rows of new tokens the text uses moved, no other row did
    rec = record(out)["result"]
    assert rec["zero_stage"] == 2 and rec["world_size"] == 2 and rec["steps"] == STEPS
    d = rec["distill"]
    assert d["student_tokens"] == rec["tokens"] == STEPS * 2 * 2 * 64
    assert d["teacher_tokens_per_token"] > 1 and d["cpt_equivalent_tokens"] == rec["tokens"] + d["teacher_tokens"]
    assert dir_hash(src) == swapped["hash"]  # the input checkpoint is untouched


@pytest.mark.slow
def test_next_token_option_moves_only_new_lm_head_rows(swapped, runs):
    a, b = tensors(swapped["model"]), tensors(runs["root"] / "out_head")
    for n in (EMBED, HEAD):
        assert torch.equal(a[n][:FIRST_NEW], b[n][:FIRST_NEW]), n
        assert not torch.equal(a[n][FIRST_NEW:], b[n][FIRST_NEW:]), n


@pytest.mark.slow
def test_killed_distill_resumes_to_the_uninterrupted_weights(runs):
    k = runs["killed"]
    assert k["rc"] != 0 and k["complete"] == "step-0000002" and not k["out_exists"]
    assert "resumed from" in runs["log2"]
    ref, res = tensors(runs["root"] / "out_ref"), tensors(runs["root"] / "out_killed")
    for n in ref:
        assert torch.equal(ref[n][:FIRST_NEW], res[n][:FIRST_NEW]), n
        assert torch.allclose(ref[n], res[n], atol=1e-6, rtol=0), n
    ra, rb = record(runs["root"] / "out_ref")["result"], record(runs["root"] / "out_killed")["result"]
    assert rb["resumed_from_step"] == 2 and [x["step"] for x in rb["losses"]] == list(range(1, STEPS + 1))
    assert [x["loss"] for x in ra["losses"]] == pytest.approx([x["loss"] for x in rb["losses"]], abs=1e-6)
