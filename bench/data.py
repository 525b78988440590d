"""Bench for training data at scale (issue 14): streaming parallel tokenization into token files, and training on them.

Corpora are ``../shared/data/ru_train.txt`` repeated to 100 MB, 600 MB and 1 GB (the repeats change no cost: every
line is tokenized again). The model is a tiny Qwen2 (hidden 64, 2 layers, tied) with the real Qwen2.5 tokenizer,
stage embeddings, ZeRO-2, block 128, micro-batch 1, so the training step is cheap and the data path dominates (a
bigger micro-batch adds its 152k-wide logits — ≈ 80 MB per copy per 128 tokens — to every rank). Every command runs
in a fresh process; the memory figure is the peak of the RSS *summed over the command's whole process tree* (launcher
+ every rank), sampled every 0.2 s — file-backed pages of the memory-mapped token files count in each rank that
touched them. In one run it measures:

* bare: a plain parallel ``Tokenizer.encode_batch`` pass over the file (lines in 4 MB blocks, all cores, the ids
  counted and dropped) — the reference a preparation cannot beat by much;
* prepare: ``ruadapt data prepare`` with an empty cache, at 100 MB and 1 GB (throughput vs bare, peak RSS);
* train: ``ruadapt train`` (CPT, 2 CPU processes, 2 steps) on 600 MB with an empty cache: wall vs bare, tree RSS;
* ranks: the same training with the data already prepared, at 100 MB and 1 GB: the per-rank peak RSS;
* mix: a two-source run (ru 100 MB weight 0.9, en_train weight 0.1, 50 steps) and the shares its record shows.

    python bench/data.py [--workdir runs/bench-data] [--sizes-mb 100,600,1000] [--parts prepare,train,ranks,mix]

Needs ≈ 3.5 GB of disk for corpora and token files. Prints a markdown table; writes bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, table  # noqa: E402

QWEN = SHARED / "tokenizers" / "qwen2.5"
PARTS = ("prepare", "train", "ranks", "mix")
BARE = r"""
import os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "true"
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
n = docs = 0
with open(sys.argv[2], encoding="utf-8") as f:
    while True:
        block = f.readlines(4 << 20)
        if not block:
            break
        lines = [l.rstrip("\n") for l in block if l.strip()]
        for e in tok.encode_batch(lines, add_special_tokens=False):
            n += len(e.ids)
        docs += len(lines)
print(n, docs)
"""


def measure(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, ranks: bool = False) -> dict:
    """Wall time, peak RSS summed over the process tree, and (``ranks``) the peak RSS of the biggest rank."""
    os.sync()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    peak_tree = peak_rank = 0
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    root = psutil.Process(p.pid)
    while p.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = []
            for q in procs:
                try:
                    rss.append((q.memory_info().rss, " ".join(q.cmdline())))
                except psutil.Error:
                    pass
            peak_tree = max(peak_tree, sum(r for r, _ in rss))
            peak_rank = max([peak_rank] + [r for r, c in rss if "--local_rank" in c])
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    reader.join()
    text = b"".join(out).decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{text[-3000:]}")
    res = {"wall_s": round(wall, 1), "peak_rss_tree_gb": round(peak_tree / 1e9, 2), "stdout": text}
    if ranks:
        res["peak_rss_rank_gb"] = round(peak_rank / 1e9, 3)
    return res


def corpus(work: Path, mb: int, name: str = "ru") -> Path:
    """ru_train.txt repeated to at least ``mb`` MB (whole copies)."""
    path = work / f"{name}-{mb}mb.txt"
    if path.is_file():
        return path
    src = (SHARED / "data" / "ru_train.txt").read_bytes()
    with open(path, "wb") as f:
        for _ in range(-(-mb * 10**6 // len(src))):
            f.write(src)
    return path


def tiny_model(work: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = work / "model"
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(QWEN / f, out / f)
    cfg = AutoConfig.for_model(
        "qwen2",
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=151643,
        pad_token_id=151643,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    return out


def run_yaml(work: Path, name: str, model: Path, train: list, steps: int, cache: Path) -> Path:
    import yaml

    cfg = {
        "task": "cpt",
        "model": str(model),
        "out": str(work / f"out-{name}"),
        "deepspeed": str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
        "stage": "embeddings",
        "block_size": 128,
        "data": {"train": train, "eval_blocks": 4, "cache_dir": str(cache)},
        "train": {
            "micro_batch_size": 1,
            "grad_accum": 1,
            "max_steps": steps,
            "lr": 1e-3,
            "warmup_steps": 0,
            "save_steps": steps,
            "log_steps": 10,
            "bf16": "false",
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    shutil.rmtree(work / f"out-{name}.work", ignore_errors=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-data")
    ap.add_argument("--sizes-mb", default="100,600,1000", help="small, train, large corpus sizes")
    ap.add_argument("--port", type=int, default=29561)
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="which measurements to (re)run; the others keep their "
        "figures in bench/results/data.json (ranks and mix reuse the caches that prepare made)",
    )
    args = ap.parse_args()
    small_mb, train_mb, large_mb = (int(x) for x in args.sizes_mb.split(","))
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(work)
    py = sys.executable
    ruadapt = [py, "-m", "ruadapt.cli", "-q"]
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    rows: list[dict] = []

    def bare(path: Path) -> dict:
        r = measure([py, "-c", BARE, str(QWEN / "tokenizer.json"), str(path)])
        tokens, docs = (int(x) for x in r["stdout"].split()[-2:])
        mb = path.stat().st_size / 1e6
        row = {
            "what": f"bare encode_batch, {mb:,.0f} MB",
            "wall_s": r["wall_s"],
            "MB/s": round(mb / r["wall_s"], 2),
            "peak_rss_tree_gb": r["peak_rss_tree_gb"],
            "tokens": tokens,
            "documents": docs,
        }
        rows.append(row)
        print(row, flush=True)
        return row

    def prepare(path: Path, label: str) -> dict:
        cache = work / f"cache-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        y = run_yaml(work, f"prep-{label}", model, [str(path)], 2, cache)
        r = measure(ruadapt + ["data", "prepare", "--config", str(y)], env=env)
        meta = json.loads(next(cache.glob("cpt-*/meta.json")).read_text())
        mb = path.stat().st_size / 1e6
        row = {
            "what": f"ruadapt data prepare, {mb:,.0f} MB",
            "wall_s": r["wall_s"],
            "MB/s": round(mb / r["wall_s"], 2),
            "peak_rss_tree_gb": r["peak_rss_tree_gb"],
            "tokens": meta["n_tokens"] - meta["n_docs"],
            "documents": meta["n_docs"],
        }
        rows.append(row)
        print(row, flush=True)
        return row

    def train(path_or_sources, label: str, cache: Path, steps: int = 2, fresh: bool = True) -> tuple[dict, dict]:
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        sources = path_or_sources if isinstance(path_or_sources, list) else [str(path_or_sources)]
        y = run_yaml(work, label, model, sources, steps, cache)
        r = measure(
            ruadapt + ["train", "--config", str(y), "--num-gpus", "2", "--master-port", str(args.port)],
            env=env,
            ranks=True,
        )
        rec = json.loads((work / f"out-{label}" / "ruadapt_train.json").read_text())
        return r, rec

    out = ROOT / "bench" / "results" / "data.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    results = {k: v for k, v in old.items() if k in PARTS}  # parts not rerun keep their last figures
    parts = args.parts.split(",")
    small, mid, large = corpus(work, small_mb), corpus(work, train_mb), corpus(work, large_mb)
    if "prepare" in parts:  # preparation alone vs the bare pass, small and large (the cache made here is reused)
        rows.clear()
        b_small, p_small = bare(small), prepare(small, "small")
        b_large, p_large = bare(large), prepare(large, "large")
        results["prepare"] = {
            "rows": list(rows),
            "vs_bare_small": round(b_small["wall_s"] / p_small["wall_s"], 3),
            "vs_bare_large": round(b_large["wall_s"] / p_large["wall_s"], 3),
            "peak_rss_gb_small_large": [p_small["peak_rss_tree_gb"], p_large["peak_rss_tree_gb"]],
            "same_tokens_as_bare": p_small["tokens"] == b_small["tokens"] and p_large["tokens"] == b_large["tokens"],
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        }
    if "train" in parts:  # training on the middle size with an empty cache: preparation + launch + 2 steps
        rows.clear()
        b_mid = bare(mid)
        r, rec = train(mid, "train-mid", work / "cache-mid")
        docs = json.loads(next((work / "cache-mid").glob("cpt-*/meta.json")).read_text())["n_docs"]
        rows.append(
            {
                "what": f"ruadapt train (prepare + 2 steps), {mid.stat().st_size / 1e6:,.0f} MB",
                "wall_s": r["wall_s"],
                "peak_rss_tree_gb": r["peak_rss_tree_gb"],
                "peak_rss_rank_gb": r["peak_rss_rank_gb"],
                "documents": docs,
            }
        )
        print(rows[-1], flush=True)
        results["train"] = {
            "rows": list(rows),
            "wall_s": r["wall_s"],
            "limit_s": round(1.5 * b_mid["wall_s"] + 150, 1),
            "peak_rss_tree_gb": r["peak_rss_tree_gb"],
            "every_document": docs == b_mid["documents"],
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        }
    if "ranks" in parts:  # per-rank memory with the data prepared: small vs large corpus
        rows.clear()
        peaks = {}
        for label, src in (("small", small), ("large", large)):
            r, rec = train(src, f"ranks-{label}", work / f"cache-{label}", fresh=False)
            peaks[label] = round(
                rec["result"]["peak_memory_bytes_rank0"] / 1e9, 3
            )  # rank 0's ru_maxrss: the exact peak
            rows.append(
                {
                    "what": f"ruadapt train, data prepared, {src.stat().st_size / 1e6:,.0f} MB",
                    "wall_s": r["wall_s"],
                    "peak_rss_tree_gb": r["peak_rss_tree_gb"],
                    "peak_rss_rank_gb": peaks[label],
                }
            )
            print(rows[-1], flush=True)
        results["ranks"] = {
            "rows": list(rows),
            "rank_rss_large_vs_small": round(peaks["large"] / peaks["small"], 3),
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        }
    if "mix" in parts:  # two sources with weights
        rows.clear()
        en = SHARED / "data" / "en_train.txt"
        r, rec = train(
            [{"path": str(small), "weight": 0.9}, {"path": str(en), "weight": 0.1}],
            "mix",
            work / "cache-small",
            steps=50,
            fresh=False,
        )
        for src in rec["result"]["data"]["sources"]:
            rows.append(
                {
                    "what": f"mix: {Path(src['path']).name} weight {src['weight']}",
                    "token_share": src["token_share"],
                    "target_share": src["target_share"],
                    "tokens": src["tokens"],
                }
            )
        results["mix"] = {
            "rows": list(rows),
            "sources": rec["result"]["data"]["sources"],
            "max_share_error": max(abs(x["token_share"] - x["target_share"]) for x in rec["result"]["data"]["sources"]),
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(
        table(
            [row for part in PARTS if part in results for row in results[part]["rows"]],
            [
                "what",
                "wall_s",
                "MB/s",
                "peak_rss_tree_gb",
                "peak_rss_rank_gb",
                "tokens",
                "documents",
                "token_share",
                "target_share",
            ],
        )
    )
    print()
    print(
        json.dumps({p: {k: v for k, v in results[p].items() if k != "rows"} for p in PARTS if p in results}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
