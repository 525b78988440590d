"""Bench for `ruadapt trim` (issue 8): a Qwen2.5-0.5B-shaped checkpoint trimmed to ru_train + en_train.

The checkpoint has Qwen2.5-0.5B's shapes (151,936 × 896 tied bf16 embedding, 24 real-size layers; synthetic
seeded weights) and the real Qwen2.5 tokenizer. Measured:

1. `ruadapt trim --model CKPT --corpus ru_train en_train --eval-text ru_eval en_eval` (every used token kept)
   and the same with `--keep-top N`: parameters and bytes on disk before/after, tokens kept and why, chars/token
   and changed segmentations, wall time and peak RSS of the command.
2. The training step time (forward + backward + AdamW, 2,048 tokens = 4 × 512, fp32, tied) of a tiny Qwen2
   model (hidden 128, 4 layers) with the full 151,936-row vocabulary vs the trimmed one, on the same text
   (identical segmentation, ids mapped), steps alternated in one process so both see the same machine load.

    nice python bench/trim.py [--keep-top 32000] [--layers 24] [--workdir runs/bench-trim]

Prints a markdown table and writes bench/results/trim.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, SHARED, run_measured, table  # noqa: E402

from ruadapt.io.checkpoint import CheckpointWriter  # noqa: E402
from ruadapt.trim import format_report  # noqa: E402

D, FF, ROWS, HEADS, KV, HEAD_DIM = 896, 4864, 151936, 14, 2, 64
DATA = SHARED / "data"


def make_checkpoint(out: Path, layers: int) -> None:
    """Qwen2.5-0.5B shapes, bf16, tied, seeded random weights, the real Qwen2.5 tokenizer; written layer by layer."""
    if (out / "config.json").exists():
        return
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    w = CheckpointWriter(tmp, max_shard_bytes=2 * 10**9)
    w.add("model.embed_tokens.weight", rnd(ROWS, D))
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (
            ("self_attn.q_proj.weight", (HEADS * HEAD_DIM, D)),
            ("self_attn.k_proj.weight", (KV * HEAD_DIM, D)),
            ("self_attn.v_proj.weight", (KV * HEAD_DIM, D)),
            ("self_attn.o_proj.weight", (D, HEADS * HEAD_DIM)),
            ("mlp.gate_proj.weight", (FF, D)),
            ("mlp.up_proj.weight", (FF, D)),
            ("mlp.down_proj.weight", (D, FF)),
        ):
            w.add(p + name, rnd(*shape))
        for name, n in (
            ("self_attn.q_proj.bias", HEADS * HEAD_DIM),
            ("self_attn.k_proj.bias", KV * HEAD_DIM),
            ("self_attn.v_proj.bias", KV * HEAD_DIM),
        ):
            w.add(p + name, rnd(n))
        w.add(p + "input_layernorm.weight", torch.ones(D, dtype=torch.bfloat16))
        w.add(p + "post_attention_layernorm.weight", torch.ones(D, dtype=torch.bfloat16))
    w.add("model.norm.weight", torch.ones(D, dtype=torch.bfloat16))
    w.finish()
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": D,
        "intermediate_size": FF,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "vocab_size": ROWS,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643})
    )
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHARED / "tokenizers" / "qwen2.5" / f, tmp / f)
    os.rename(tmp, out)


def trim_run(ckpt: Path, out: Path, keep_top: int | None, reuse: bool = False) -> dict:
    cached = out.with_name(out.name + ".result.json")
    if reuse and cached.is_file() and out.is_dir():
        return json.loads(cached.read_text())
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(ROOT / ".venv" / "bin" / "ruadapt"),
        "-q",
        "trim",
        "--model",
        str(ckpt),
        "--corpus",
        str(DATA / "ru_train.txt"),
        str(DATA / "en_train.txt"),
        "--eval-text",
        str(DATA / "ru_eval.txt"),
        str(DATA / "en_eval.txt"),
        "--out",
        str(out),
    ]
    if keep_top:
        cmd += ["--keep-top", str(keep_top)]
    m = run_measured(cmd, env={"TQDM_DISABLE": "1"})
    rec = json.loads((out / "ruadapt_trim.json").read_text())
    model, seg, tokens = rec["result"]["model"], rec["result"]["segmentation"], rec["result"]["vocabulary"]
    ev = {Path(k).name: v for k, v in seg["eval"].items()}
    result = {
        "run": f"keep-top {keep_top}" if keep_top else "all used",
        "tokens": f"{tokens['before']:,} → {tokens['after']:,}",
        "kept_by_reason": tokens["kept_by_reason"],
        "rows": f"{model['rows_before']:,} → {model['rows_after']:,}",
        "params": f"{model['parameters_before'] / 1e6:.1f}M → {model['parameters_after'] / 1e6:.1f}M",
        "disk": f"{model['bytes_on_disk_before'] / 2**20:.0f} → {model['bytes_on_disk_after'] / 2**20:.0f} MiB",
        "coverage": f"{100 * seg['corpus']['coverage_of_token_occurrences']:.2f} %",
        "corpus c/t": f"{seg['corpus']['chars_per_token_before']:.3f} → {seg['corpus']['chars_per_token_after']:.3f}",
        "ru_eval c/t": f"{ev['ru_eval.txt']['chars_per_token_before']:.3f} → "
        f"{ev['ru_eval.txt']['chars_per_token_after']:.3f}",
        "en_eval c/t": f"{ev['en_eval.txt']['chars_per_token_before']:.3f} → "
        f"{ev['en_eval.txt']['chars_per_token_after']:.3f}",
        "eval lines changed": f"{ev['ru_eval.txt']['lines_segmentation_changed']:,} / "
        f"{ev['en_eval.txt']['lines_segmentation_changed']:,}",
        "wall": f"{m['wall_s']} s",
        "peak RSS": f"{m['peak_rss_gb']} GiB",
        "record": {"model": model, "tokens": tokens, "segmentation": seg, "timings_s": rec["timings_s"]},
        "report": format_report(rec),
        "wall_s": m["wall_s"],
        "peak_rss_gib": m["peak_rss_gb"],
    }
    cached.write_text(json.dumps(result, ensure_ascii=False))
    return result


def step_times(full_dir: Path, trimmed_dir: Path, steps: int, threads: int) -> dict:
    """Median train-step seconds of a tiny Qwen2 (hidden 128, 4 layers) with each vocabulary, alternated."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tokenizers import Tokenizer

    torch.set_num_threads(threads)
    id_map = json.loads((trimmed_dir / "id_map.json").read_text())["old_to_new"]
    tok = Tokenizer.from_file(str(full_dir / "tokenizer.json"))
    lines = (DATA / "ru_train.txt").read_text(encoding="utf-8").splitlines()[:200]  # lines, as the corpus was counted
    ids = [i for e in tok.encode_batch(lines, add_special_tokens=False) for i in e.ids][:2048]
    batch_full = torch.tensor(ids).view(4, 512)
    batch_trim = torch.tensor([id_map[str(i)] for i in ids]).view(4, 512)
    out = {}
    models = {}
    for name, rows in (
        ("full", ROWS),
        ("trimmed", json.loads((trimmed_dir / "config.json").read_text())["vocab_size"]),
    ):
        cfg = AutoConfig.for_model(
            "qwen2",
            vocab_size=rows,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg)
        models[name] = (
            m,
            torch.optim.AdamW(m.parameters(), lr=1e-3),
            batch_full if name == "full" else batch_trim,
            rows,
        )
    times: dict[str, list[float]] = {k: [] for k in models}
    for k in range(steps + 1):
        for name, (m, opt, batch, _) in models.items():
            t = time.perf_counter()
            loss = m(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k:  # the first step warms up allocators
                times[name].append(time.perf_counter() - t)
    for name, (m, _, _, rows) in models.items():
        out[name] = {
            "rows": rows,
            "params": sum(p.numel() for p in m.parameters()),
            "median_step_s": round(statistics.median(times[name]), 3),
            "steps": times[name],
        }
    out["speedup"] = round(out["full"]["median_step_s"] / out["trimmed"]["median_step_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-trim")
    ap.add_argument("--layers", type=int, default=24, help="real-size transformer layers (Qwen2.5-0.5B has 24)")
    ap.add_argument("--keep-top", type=int, nargs="*", default=[32000], help="extra runs with --keep-top N")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--reuse", action="store_true", help="reuse trim results already in --workdir (re-measure only the train steps)"
    )
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = args.workdir / "qwen2.5-0.5b-shaped"
    t = time.perf_counter()
    make_checkpoint(ckpt, args.layers)
    print(f"checkpoint ready in {time.perf_counter() - t:.0f} s: {ckpt}", flush=True)
    runs = [trim_run(ckpt, args.workdir / "trimmed", None, args.reuse)]
    print(runs[-1]["report"], flush=True)
    for n in args.keep_top:
        runs.append(trim_run(ckpt, args.workdir / f"trimmed-{n}", n, args.reuse))
    steps = step_times(ckpt, args.workdir / "trimmed", args.steps, args.threads)
    cols = [
        "run",
        "tokens",
        "rows",
        "params",
        "disk",
        "coverage",
        "corpus c/t",
        "ru_eval c/t",
        "en_eval c/t",
        "eval lines changed",
        "wall",
        "peak RSS",
    ]
    md = table(runs, cols)
    print(md)
    print(
        f"\ntrain step (hidden 128, 4 layers, 2,048 tokens, fp32, {args.threads} threads): "
        f"full {steps['full']['rows']:,} rows {steps['full']['median_step_s']} s, "
        f"trimmed {steps['trimmed']['rows']:,} rows {steps['trimmed']['median_step_s']} s (×{steps['speedup']})"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "trim.json").write_text(
        json.dumps(
            {
                "layers": args.layers,
                "runs": [{k: v for k, v in r.items()} for r in runs],
                "train_step": steps,
                "table": md,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {results / 'trim.json'}")


if __name__ == "__main__":
    main()
