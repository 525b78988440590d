"""Bench for the checkpoint fingerprint (issue 17): what telling models apart costs at Qwen2.5-7B shapes.

Writes a synthetic checkpoint with the tensor shapes of Qwen2.5-7B (28 layers, hidden 3,584, intermediate 18,944,
untied 152,064-row embed_tokens and lm_head; bf16, ≈ 15.2 GB in 4 shards; contents are arbitrary, the cost does
not depend on them) and times, each with a cold page cache (``/proc/sys/vm/drop_caches``, when allowed) and warm:

* ``fingerprint``: :func:`ruadapt.vocab.arch.model_fingerprint` (config, index, headers, the two
  vocabulary matrices in full, 64 windows of 64 KiB per shard);
* ``headers only``: what the fingerprint hashed before (equal for a base and its fine-tuned instruct model);
* ``every byte``: sha256 of every shard, the cost of hashing whole checkpoints.

    python bench/fingerprint.py [--workdir runs/bench-fingerprint] [--keep]

Prints a markdown table and writes bench/results/fingerprint-qwen2.5-7b.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, staging_dir, table  # noqa: E402

from ruadapt.io.checkpoint import CheckpointReader, CheckpointWriter, read_header  # noqa: E402
from ruadapt.vocab.arch import model_fingerprint  # noqa: E402

ROWS, D, FF, LAYERS, KV = 152064, 3584, 18944, 28, 512


def layer_shapes() -> dict[str, tuple[int, ...]]:
    return {
        "self_attn.q_proj.weight": (D, D),
        "self_attn.q_proj.bias": (D,),
        "self_attn.k_proj.weight": (KV, D),
        "self_attn.k_proj.bias": (KV,),
        "self_attn.v_proj.weight": (KV, D),
        "self_attn.v_proj.bias": (KV,),
        "self_attn.o_proj.weight": (D, D),
        "mlp.gate_proj.weight": (FF, D),
        "mlp.up_proj.weight": (FF, D),
        "mlp.down_proj.weight": (D, FF),
        "input_layernorm.weight": (D,),
        "post_attention_layernorm.weight": (D,),
    }


def make_model(out: Path) -> Path:
    tmp = staging_dir(out)
    if tmp is None:
        return out
    writer = CheckpointWriter(tmp, max_shard_bytes=4 * 1024**3)
    gen = torch.Generator().manual_seed(0)

    def t(shape):  # a random slab repeated: distinct contents without generating 15 GB of random numbers
        base = torch.randn(min(shape[0], 64), *shape[1:], generator=gen).to(torch.bfloat16)
        return base.repeat(-(-shape[0] // base.shape[0]), *([1] * (len(shape) - 1)))[: shape[0]].contiguous()

    writer.add("model.embed_tokens.weight", t((ROWS, D)))
    for k in range(LAYERS):
        for name, shape in layer_shapes().items():
            writer.add(f"model.layers.{k}.{name}", t(shape))
    writer.add("model.norm.weight", t((D,)))
    writer.add("lm_head.weight", t((ROWS, D)))
    writer.finish()
    (tmp / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "hidden_size": D,
                "intermediate_size": FF,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": ROWS,
                "tie_word_embeddings": False,
                "torch_dtype": "bfloat16",
            }
        )
        + "\n"
    )
    tmp.rename(out)
    return out


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def headers_only(reader: CheckpointReader) -> str:
    h = hashlib.sha256()
    for shard in reader.shards:
        h.update(read_header(shard)[0])
    return h.hexdigest()


def every_byte(reader: CheckpointReader) -> str:
    h = hashlib.sha256()
    for shard in reader.shards:
        with open(shard, "rb") as f:
            while block := f.read(16 << 20):
                h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-fingerprint")
    ap.add_argument("--keep", action="store_true", help="keep the 15 GB checkpoint for the next run")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = make_model(args.workdir / "qwen2.5-7b-shapes")
    make_s = time.perf_counter() - t0
    reader = CheckpointReader(model)
    size = sum(s.stat().st_size for s in reader.shards)
    vocab = sum(reader.info(n).nbytes for n in ("model.embed_tokens.weight", "lm_head.weight"))
    rows, can_drop = [], None
    for label, fn in (("fingerprint", model_fingerprint), ("headers only", headers_only), ("every byte", every_byte)):
        for cache in ("cold", "warm"):
            if cache == "cold":
                can_drop = drop_caches()
                if not can_drop:
                    continue
            else:
                fn(reader)  # make it warm
            t = time.perf_counter()
            fn(reader)
            rows.append({"hash": label, "page_cache": cache, "seconds": round(time.perf_counter() - t, 2)})
    result = {
        "shape": "Qwen2.5-7B (untied, bf16)",
        "checkpoint_bytes": size,
        "vocabulary_bytes": vocab,
        "shards": len(reader.shards),
        "cpus": os.cpu_count(),
        "make_model_s": round(make_s, 1),
        "cold_cache_measured": bool(can_drop),
        "rows": rows,
    }
    print(f"{size / 1e9:.1f} GB in {len(reader.shards)} shards, vocabulary matrices {vocab / 1e9:.2f} GB")
    print(table(rows, ["hash", "page_cache", "seconds"]))
    path = ROOT / "bench" / "results" / "fingerprint-qwen2.5-7b.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(model)


if __name__ == "__main__":
    main()
