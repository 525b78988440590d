"""Bench for `ruadapt lep` (issue 4): synthetic checkpoints with Qwen2.5-72B vocabulary shapes.

Base, instruct and adapted checkpoints each hold untied 152,064 × 8,192 bf16 embed_tokens and lm_head (one
2.5 GB shard each; ``--tied``: embed_tokens only) plus a few small body tensors and the real Qwen2.5 tokenizer;
instruct rows = base rows · (I + a rank-32 map) + noise, adapted rows = base rows + noise. With
``--new-tokens N`` the adapted model is a real extension: its tokenizer is Qwen2.5 extended by N Russian merges
(``ruadapt tokenizer train --mode extend`` on ../shared/data/ru_train.txt) and its matrices have the padded rows
of that vocabulary (167,680 for N = 16,000), so `conversion` fits the mean-of-pieces rows of the new tokens
too. In the same run it measures

* (b) the raw read time of the six embedding tensors, chunk by chunk through CheckpointReader.get_rows;
* (a) the float64 GEMMs a direct implementation needs: XᵀX and XᵀY for embed and lm_head plus the two
  applications A·W = six products of (V×d)·(d×d); timed on a slice of rows and scaled to V rows (GEMM time
  is linear in the row count at fixed d; timing the full products would double the bench);
* wall time and peak RSS of `ruadapt lep --method M` for each method, in a fresh process each.

    nice python bench/lep.py [--methods conversion,overlap,swap] [--new-tokens 16000] [--tied] [--skip-reference]
                             [--workdir runs/bench-lep] [--keep]

~15 GB of inputs plus one ~5 GB output at a time; everything is deleted at the end unless --keep.
Prints a markdown table and writes bench/results/lep-ROWSxHIDDEN[-tied][-plusNk].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, run_measured, table  # noqa: E402

from ruadapt.io.checkpoint import CheckpointReader, CheckpointWriter  # noqa: E402
from ruadapt.io.tokdir import load_tokenizer, tokenizer_size, write_json  # noqa: E402
from ruadapt.vocab.arch import padded_rows  # noqa: E402

ROWS, D = 152064, 8192
RANK = 32
GEN_CHUNK = 8192
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _chunks(rows: int, size: int):
    for s in range(0, rows, size):
        yield s, min(s + size, rows)


def extended_tokenizer(work: Path, new_tokens: int) -> Path:
    """Qwen2.5 extended by ``new_tokens`` merges trained on the shared Russian corpus (reused when present)."""
    tok = work / f"qwen2.5-plus{new_tokens}"
    if not (tok / "tokenizer.json").is_file():
        run_measured(
            [
                sys.executable,
                "-m",
                "ruadapt",
                "-q",
                "tokenizer",
                "train",
                "--base",
                SHARED / "tokenizers" / "qwen2.5",
                "--corpus",
                SHARED / "data" / "ru_train.txt",
                "--mode",
                "extend",
                "--new-tokens",
                str(new_tokens),
                "--out",
                tok,
            ]
        )
    return tok


def make_models(work: Path, rows: int, d: int, *, tied: bool = False, new_tokens: int = 0) -> dict[str, Path]:
    """Write base/, instruct/, adapted/ under ``work`` (reused when present); ``new_tokens``: the adapted model has
    the extended tokenizer and its padded rows (the new rows are random, as CPT would have moved them)."""
    dirs = {k: work / k for k in ("base", "instruct", "adapted")}
    tok_dirs = {k: SHARED / "tokenizers" / "qwen2.5" for k in dirs}
    a_rows = rows
    if new_tokens:
        tok_dirs["adapted"] = extended_tokenizer(work.parent, new_tokens)
        a_rows = padded_rows(tokenizer_size(load_tokenizer(tok_dirs["adapted"])), 128)
    if all((p / "config.json").is_file() for p in dirs.values()):
        return dirs
    g = torch.Generator().manual_seed(0)
    base = {}
    names = (EMBED,) if tied else (EMBED, HEAD)
    for name in names:
        m = torch.empty(rows, d, dtype=torch.bfloat16)
        for s, e in _chunks(rows, GEN_CHUNK):
            m[s:e] = (torch.randn(e - s, d, generator=g) * 0.02).to(torch.bfloat16)
        base[name] = m
    maps = {
        n: (torch.randn(d, RANK, generator=g) / d**0.5, torch.randn(RANK, d, generator=g) / RANK**0.5) for n in names
    }

    def derived(kind: str, name: str) -> torch.Tensor:
        src = base[name]
        out = torch.empty_like(src)
        u, v = maps[name]
        for s, e in _chunks(rows, GEN_CHUNK):
            x = src[s:e].float()
            y = (
                x + (x @ u) @ v + 1e-3 * torch.randn(x.shape, generator=g)
                if kind == "instruct"
                else x + 2e-3 * torch.randn(x.shape, generator=g)
            )
            out[s:e] = y.to(torch.bfloat16)
        if kind == "adapted" and a_rows > rows:
            out = torch.cat([out, (0.02 * torch.randn(a_rows - rows, d, generator=g)).to(torch.bfloat16)])
        return out

    body = {
        "model.norm.weight": torch.ones(d, dtype=torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
        "model.layers.0.self_attn.k_proj.weight": (torch.randn(1024, d, generator=g) * 0.02).to(torch.bfloat16),
    }
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": d,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": rows,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }
    for kind, path in dirs.items():
        tmp = path.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        w = CheckpointWriter(tmp, max_shard_bytes=3 * 10**9)
        for name in names:
            t = base[name] if kind == "base" else derived(kind, name)
            w.add(name, t)
            if name == EMBED:
                for bn, bt in body.items():
                    w.add(bn, bt if kind != "instruct" else bt + 0.01)
            del t
        w.finish()
        write_json(tmp / "config.json", {**config, "vocab_size": a_rows if kind == "adapted" else rows})
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(tok_dirs[kind] / f, tmp / f)
        os.replace(tmp, path)
    return dirs


def raw_read_s(dirs: dict[str, Path], chunk_rows: int) -> float:
    """Seconds to read the vocabulary matrices chunk by chunk, as lep does."""
    t0 = time.perf_counter()
    for path in dirs.values():
        r = CheckpointReader(path)
        for name in (n for n in (EMBED, HEAD) if n in r):
            rows = r.info(name).shape[0]
            for s, e in _chunks(rows, chunk_rows):
                r.get_rows(name, s, e).clone()  # clone: slices may be views of the mapped file, read on touch
                r.close()
    return time.perf_counter() - t0


def gemm_s(rows: int, d: int, slice_rows: int) -> dict:
    """float64 GEMM seconds for V×d products, timed on ``slice_rows`` rows and scaled to ``rows``."""
    x = torch.randn(slice_rows, d, dtype=torch.float64)
    y = torch.randn(slice_rows, d, dtype=torch.float64)
    w = torch.randn(d, d, dtype=torch.float64)
    t0 = time.perf_counter()
    x.T @ y
    t_xty = time.perf_counter() - t0
    t0 = time.perf_counter()
    x @ w
    t_xw = time.perf_counter() - t0
    scale = rows / slice_rows
    one = (t_xty + t_xw) / 2 * scale
    return {
        "slice_rows": slice_rows,
        "xty_slice_s": round(t_xty, 2),
        "xw_slice_s": round(t_xw, 2),
        "one_product_s": round(one, 1),
        "six_products_s": round(6 * one, 1),
        "gflops": round(2 * slice_rows * d * d / ((t_xty + t_xw) / 2) / 1e9, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="conversion,overlap,swap")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-lep")
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--hidden", type=int, default=D)
    ap.add_argument("--gemm-slice", type=int, default=4096)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    ap.add_argument("--tied", action="store_true", help="tied checkpoints (embed_tokens only)")
    ap.add_argument(
        "--new-tokens", type=int, default=0, help="extend the adapted tokenizer by N merges (real new tokens)"
    )
    ap.add_argument("--skip-reference", action="store_true", help="do not time the raw read and the GEMM reference")
    args = ap.parse_args()
    variant = ("-tied" if args.tied else "") + (f"-plus{args.new_tokens // 1000}k" if args.new_tokens else "")
    work = (args.workdir / ("models" + variant)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "rows": args.rows,
        "hidden": args.hidden,
        "dtype": "bfloat16",
        "tied": args.tied,
        "new_tokens": args.new_tokens,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    a = b = 0.0
    out_json = ROOT / "bench" / "results" / f"lep-{args.rows}x{args.hidden}{variant}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if out_json.is_file():  # methods not rerun keep their last figures
        done = json.loads(out_json.read_text()).get("methods", [])
        rows += [r for r in done if r["method"] not in args.methods.split(",")]
    try:
        t0 = time.perf_counter()
        dirs = make_models(work, args.rows, args.hidden, tied=args.tied, new_tokens=args.new_tokens)
        results["make_inputs_s"] = round(time.perf_counter() - t0, 1)
        results["adapted_rows"] = CheckpointReader(dirs["adapted"]).info(EMBED).shape[0]
        if not args.skip_reference:
            chunk = max(1, 512 * 1024**2 // (args.hidden * 8))
            results["raw_read_s"] = round(raw_read_s(dirs, chunk), 1)
            print("raw read of the vocabulary matrices:", results["raw_read_s"], "s", flush=True)
            results["gemm"] = gemm_s(args.rows, args.hidden, args.gemm_slice)
            print("float64 GEMMs:", results["gemm"], flush=True)
            a, b = results["gemm"]["six_products_s"] / (2 if args.tied else 1), results["raw_read_s"]
        results["methods"] = rows
        for method in args.methods.split(","):
            out = work / f"out-{method}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "ruadapt",
                "-q",
                "lep",
                "--base",
                str(dirs["base"]),
                "--instruct",
                str(dirs["instruct"]),
                "--adapted",
                str(dirs["adapted"]),
                "--out",
                str(out),
                "--method",
                method,
            ]
            m = run_measured(cmd)
            rec = json.loads((out / "ruadapt_lep.json").read_text())
            budget = b if method == "swap" else a + b
            row = {"method": method, "tied": args.tied, "new_tokens": args.new_tokens, **m}
            if budget:
                row.update({"reference_s": round(budget, 1), "wall/reference": round(m["wall_s"] / budget, 2)})
            row.update(
                {
                    "timings_s": rec["timings_s"],
                    "fits": {
                        k: {x: v[x] for x in ("rows", "relative_residual", "condition_number_xtx")}
                        for k, v in rec["result"]["fits"].items()
                    },
                }
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            out_json.write_text(
                json.dumps(results, indent=2) + "\n"
            )  # after every method: a long run keeps what it measured
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            for k in ("base", "instruct", "adapted"):
                shutil.rmtree(work / k, ignore_errors=True)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\n{args.rows:,} × {args.hidden:,} bf16, {'tied' if args.tied else 'untied'}, adapted rows "
        f"{results['adapted_rows']:,} (+{args.new_tokens} tokens); (a) float64 GEMMs = {a:.0f} s, (b) raw read = "
        f"{b:.0f} s\n"
    )
    print(table(rows, ["method", "tied", "new_tokens", "wall_s", "peak_rss_gb", "reference_s", "wall/reference"]))


if __name__ == "__main__":
    main()
