"""Bench for the LoRA export of `ruadapt train` (issue 15.4): peak RSS of exporting a merged LoRA run at
Qwen2.5-72B layer shapes is one weight's working set, not the body's.

A full Qwen2.5-72B body is ~140 GB in bf16 and does not fit this disk, so the synthetic checkpoint has the
72B shapes (hidden 8,192, intermediate 29,568, 64 query / 8 key-value heads, untied 152,064 × 8,192 bf16
embed_tokens and lm_head, 4 GB shards) but only L layers; the export runs for two values of L. It is the
real export path (:func:`ruadapt.train.export.export_run`) with the real recipe
``recipes/qwen2.5-72b/cpt-lora.yaml`` (r 64, alpha 128, all seven attention/MLP targets, vocabulary matrices
trained, ``merge: true``): the "trained" dict rank 0 would hold after gathering is built here, LoRA A/B
random (B not zero, so every target really changes) and the two vocabulary matrices read from the checkpoint
(5 GB, as gathered in bf16). Each export runs in a fresh process under ``/usr/bin/time``; the child checks
that the last layer's down_proj in the output is ``W + (alpha/r)·B·A``.

    nice python bench/lora_export.py [--layers 2,6] [--workdir runs/bench-lora-export] [--keep]

Up to 2 × (5 + 1.75·L) GB on disk at a time. Prints a markdown table and writes bench/results/lora_export.json.
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
from common import ROOT, SHARED, run_measured, staging_dir, table  # noqa: E402

from ruadapt.io.checkpoint import CheckpointReader, CheckpointWriter  # noqa: E402
from ruadapt.io.tokdir import write_json  # noqa: E402

ROWS, D, INTER, KV = 152064, 8192, 29568, 1024
RECIPE = ROOT / "recipes" / "qwen2.5-72b" / "cpt-lora.yaml"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# module -> (out, in) of Qwen2.5-72B
SHAPES = {
    "self_attn.q_proj": (D, D),
    "self_attn.k_proj": (KV, D),
    "self_attn.v_proj": (KV, D),
    "self_attn.o_proj": (D, D),
    "mlp.gate_proj": (INTER, D),
    "mlp.up_proj": (INTER, D),
    "mlp.down_proj": (D, INTER),
}


def _randn(shape: tuple[int, ...], g: torch.Generator, chunk: int = 8192) -> torch.Tensor:
    """bf16 N(0, 0.02²) without a float32 copy of the whole matrix."""
    out = torch.empty(shape, dtype=torch.bfloat16)
    for s in range(0, shape[0], chunk):
        e = min(s + chunk, shape[0])
        out[s:e] = (torch.randn((e - s, *shape[1:]), generator=g) * 0.02).to(torch.bfloat16)
    return out


def make_body(path: Path, layers: int) -> None:
    """A Qwen2.5-72B-shaped checkpoint with ``layers`` layers (reused when present)."""
    tmp = staging_dir(path)
    if tmp is None:
        return
    g = torch.Generator().manual_seed(0)
    w = CheckpointWriter(tmp, max_shard_bytes=4 * 10**9)
    w.add(EMBED, _randn((ROWS, D), g))
    w.flush()
    for i in range(layers):
        p = f"model.layers.{i}."
        for m, shape in SHAPES.items():
            w.add(p + m + ".weight", _randn(shape, g))
            if m.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                w.add(p + m + ".bias", _randn(shape[:1], g))
        w.add(p + "input_layernorm.weight", torch.ones(D, dtype=torch.bfloat16))
        w.add(p + "post_attention_layernorm.weight", torch.ones(D, dtype=torch.bfloat16))
    w.add("model.norm.weight", torch.ones(D, dtype=torch.bfloat16))
    w.add(HEAD, _randn((ROWS, D), g))
    w.finish()
    write_json(
        tmp / "config.json",
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": D,
            "intermediate_size": INTER,
            "num_hidden_layers": layers,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "vocab_size": ROWS,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "rms_norm_eps": 1e-6,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        },
    )
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHARED / "tokenizers" / "qwen2.5" / f, tmp / f)
    os.replace(tmp, path)


def child(run_dir: Path) -> None:
    """Export ``run_dir/cpt1`` + a synthetic trained LoRA state into ``run_dir/cpt2`` as rank 0 would."""
    from peft import LoraConfig

    from ruadapt.io.record import StageRecord
    from ruadapt.train.config import load_config
    from ruadapt.train.export import export_run

    os.environ.update(
        RUN=str(run_dir),
        DS_CONFIGS=str(ROOT / "recipes" / "deepspeed"),
        CORPUS=str(SHARED / "data" / "ru_train.txt"),
        CPT2_STEPS="10",
    )
    cfg = load_config(RECIPE, check_files=False)
    lc = cfg.lora
    reader = CheckpointReader(cfg.model)
    layers = reader.config["num_hidden_layers"]
    g = torch.Generator().manual_seed(1)
    trained: dict[str, torch.Tensor] = {}
    for i in range(layers):
        for m, (n_out, n_in) in SHAPES.items():
            if m.split(".")[1] in lc.targets:
                key = f"model.layers.{i}.{m}"
                trained[key + ".lora_A.default.weight"] = (torch.randn(lc.r, n_in, generator=g) / n_in**0.5).to(
                    torch.bfloat16
                )
                trained[key + ".lora_B.default.weight"] = (torch.randn(n_out, lc.r, generator=g) * 1e-3).to(
                    torch.bfloat16
                )
    lora_bytes = sum(t.numel() * t.element_size() for t in trained.values())
    check = f"model.layers.{layers - 1}.mlp.down_proj"
    a, b = trained[check + ".lora_A.default.weight"].clone(), trained[check + ".lora_B.default.weight"].clone()
    for name in (EMBED, HEAD):  # the gathered vocabulary matrices (train_embeddings: true)
        trained[name] = reader.get(name)
        reader.close()
    peft_config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    record = StageRecord("train", cfg.to_dict())
    t0 = time.perf_counter()
    export_run(cfg, trained, record, [{"step": 1, "loss": 1.0}], [], peft_config)
    export_s = time.perf_counter() - t0
    del trained
    out = CheckpointReader(cfg.out_path)
    want = (reader.get(check + ".weight").float() + (b.float() @ a.float()) * (lc.alpha / lc.r)).to(torch.bfloat16)
    got = out.get(check + ".weight")
    if not torch.equal(got, want):
        raise SystemExit(f"{cfg.out_path}: {check}.weight is not W + (alpha/r)·B·A")
    rec = json.loads((cfg.out_path / "ruadapt_train.json").read_text())
    write_json(
        run_dir / "child.json",
        {
            "export_s": round(export_s, 1),
            "lora_tensor_gb": round(lora_bytes / 1e9, 3),
            "merged_tensors": rec["result"]["lora_merged_tensors"],
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,6", help="layer counts to export, comma-separated")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-lora-export")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints and outputs")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    rows = []
    out_json = ROOT / "bench" / "results" / "lora_export.json"
    for layers in map(int, args.layers.split(",")):
        run_dir = (args.workdir / f"L{layers}").resolve()
        try:
            t0 = time.perf_counter()
            make_body(run_dir / "cpt1", layers)
            make_s = time.perf_counter() - t0
            shutil.rmtree(run_dir / "cpt2", ignore_errors=True)
            m = run_measured([sys.executable, __file__, "--child", run_dir], env={"PYTHONPATH": str(ROOT)})
            info = json.loads((run_dir / "child.json").read_text())
            size = CheckpointReader(run_dir / "cpt1").total_bytes
            rows.append(
                {
                    "layers": layers,
                    "checkpoint_gb": round(size / 1e9, 2),
                    **m,
                    **info,
                    "make_inputs_s": round(make_s, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
    result = {
        "shapes": "Qwen2.5-72B (hidden 8192, intermediate 29568, 64/8 heads, vocab 152064, untied, bf16)",
        "recipe": str(RECIPE.relative_to(ROOT)),
        "cpus": os.cpu_count(),
        "exports": rows,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(rows, ["layers", "checkpoint_gb", "merged_tensors", "wall_s", "export_s", "peak_rss_gb"]))


if __name__ == "__main__":
    main()
