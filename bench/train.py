"""Bench: tokens/s of CPT stage `embeddings` vs stage `full` on the same small model and data, and peak memory.

Claim (issue 5): stage `embeddings` trains ≥ 1.3× the tokens/s of `full` — the body's weight gradients and
its AdamW update are skipped (its activation gradients are still needed, to reach the input embeddings).

The model is a Qwen2-architecture model with the real Qwen2.5 tokenizer, trimmed (``ruadapt trim``) to the
tokens of the training text so that vocabulary and body have the proportions of a real checkpoint (a full
152k-row matrix on a 512-wide toy body would make the lm_head the whole cost, which no real model has).
Both stages run through the real launcher (``ruadapt train``, DeepSpeed ZeRO-2, torch AdamW), one launch
each so that each peak memory is its own. Steady-state tokens/s skips the first ``--skip`` steps.

    DS_ACCELERATOR=cpu .venv/bin/python bench/train.py --workdir /tmp/bench-train          # 2 CPU processes
    .venv/bin/python bench/train.py --num-gpus 1 --hidden 2048 --layers 16 --block 1024   # on a GPU node

Prints a markdown table and writes WORKDIR/train_bench.json and WORKDIR/train_bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common import SHARED  # noqa: E402  (RUADAPT_TEST_DATA, else ../shared: the tests' data)


def build_model(work: Path, hidden: int, layers: int, keep_top: int, corpus: Path) -> Path:
    """A seeded Qwen2 body with the real tokenizer, then `ruadapt trim` to the corpus' ``keep_top`` tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    full, trimmed = work / "model-full-vocab", work / "model"
    if trimmed.is_dir():
        return trimmed
    shutil.rmtree(full, ignore_errors=True)
    full.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHARED / "tokenizers" / "qwen2.5" / f, full / f)
    heads = max(2, hidden // 64)
    cfg = AutoConfig.for_model(
        "qwen2",
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=151643,
        pad_token_id=151643,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(full, max_shard_size="200MB")
    from ruadapt.cli import main as ruadapt

    rc = ruadapt(
        [
            "-q",
            "trim",
            "--model",
            str(full),
            "--corpus",
            str(corpus),
            "--keep-top",
            str(keep_top),
            "--out",
            str(trimmed),
        ]
    )
    if rc != 0:
        raise SystemExit(f"ruadapt trim failed ({rc})")
    shutil.rmtree(full)
    return trimmed


def run_stage(work: Path, model: Path, corpus: Path, stage: str, args: argparse.Namespace) -> dict:
    import yaml

    out = work / f"out-{stage}"
    for p in (out, work / f"out-{stage}.work"):
        shutil.rmtree(p, ignore_errors=True)
    cfg = {
        "task": "cpt",
        "model": str(model),
        "out": str(out),
        "stage": stage,
        "deepspeed": str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
        "block_size": args.block,
        "data": {"train": [str(corpus)], "eval_blocks": 0},
        "train": {
            "micro_batch_size": args.micro,
            "grad_accum": 1,
            "max_steps": args.steps,
            "lr": 1e-4,
            "warmup_steps": 0,
            "save_steps": 10**6,
            "log_steps": 1,
            "seed": 1,
        },
    }
    path = work / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    cmd = [
        sys.executable,
        "-m",
        "ruadapt.cli",
        "train",
        "--config",
        str(path),
        "--num-gpus",
        str(args.num_gpus),
        "--master-port",
        str(args.port),
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    rec = json.loads((out / "ruadapt_train.json").read_text())
    hist = rec["result"]["losses"]
    steady = hist[args.skip :]
    dt = steady[-1]["time_s"] - hist[args.skip - 1]["time_s"] if args.skip else steady[-1]["time_s"]
    tokens = sum(h["tokens"] for h in steady)
    res = rec["result"]
    return {
        "stage": stage,
        "trainable_params_M": round(res["trainable_parameters"] / 1e6, 2),
        "tokens_per_s": round(tokens / dt, 1),
        "tokens_per_s_incl_first": res["tokens_per_s"],
        "peak_rss_rank0_GB": round(res["peak_memory_bytes_rank0"] / 1024**3, 3),
        "first_loss": res["first_loss"],
        "last_loss": res["last_loss"],
        "launch_wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ruadapt-bench-train"))
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--keep-top", type=int, default=8000, help="vocabulary rows after trim")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of tokens/s")
    ap.add_argument("--lines", type=int, default=4000, help="lines of ru_train.txt used")
    ap.add_argument("--num-gpus", type=int, default=2, help="processes (CPU: DS_ACCELERATOR=cpu)")
    ap.add_argument("--port", type=int, default=29655)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "ru.txt"
    with open(SHARED / "data" / "ru_train.txt", encoding="utf-8") as f:
        corpus.write_text("".join(l for _, l in zip(range(args.lines), f)), encoding="utf-8")
    model = build_model(work, args.hidden, args.layers, args.keep_top, corpus)
    from ruadapt.io.checkpoint import CheckpointReader

    reader = CheckpointReader(model)
    vocab = sum(reader.info(n).nbytes for n in ("model.embed_tokens.weight", "lm_head.weight")) // 4
    total = reader.total_bytes // 4
    rows = [run_stage(work, model, corpus, s, args) for s in ("embeddings", "full")]
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    result = {
        "model": {
            "hidden": args.hidden,
            "layers": args.layers,
            "rows": reader.info("model.embed_tokens.weight").shape[0],
            "params_M": round(total / 1e6, 2),
            "vocab_share": round(vocab / total, 3),
        },
        "block": args.block,
        "micro": args.micro,
        "processes": args.num_gpus,
        "steps": args.steps,
        "skip": args.skip,
        "device": os.environ.get("DS_ACCELERATOR", "auto"),
        "rows": rows,
        "ratio_embeddings_vs_full": round(ratio, 2),
    }
    (work / "train_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = [
        "stage",
        "trainable_params_M",
        "tokens_per_s",
        "tokens_per_s_incl_first",
        "peak_rss_rank0_GB",
        "first_loss",
        "last_loss",
    ]
    print(
        f"model: {result['model']}, block {args.block}, micro {args.micro} × {args.num_gpus} processes, {args.steps} "
        "steps"
    )
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"tokens/s ratio embeddings / full: {ratio:.2f} (target >= 1.3)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = [r["stage"] for r in rows]
    axes[0].bar(names, [r["tokens_per_s"] for r in rows], color=["tab:green", "tab:gray"])
    axes[0].set_title(f"tokens/s (ratio {ratio:.2f}×)")
    axes[1].bar(names, [r["peak_rss_rank0_GB"] for r in rows], color=["tab:green", "tab:gray"])
    axes[1].set_title("peak memory, rank 0 (GB)")
    fig.suptitle(f"CPT stage embeddings vs full: {result['model']['params_M']}M params, {args.num_gpus} procs")
    fig.tight_layout()
    fig.savefig(work / "train_bench.png", dpi=110)


if __name__ == "__main__":
    main()
