"""Bench for `ruadapt swap` (issue 7): a synthetic checkpoint with Qwen2.5-7B vocabulary shapes.

152,064 × 3,584 bf16 embed_tokens and lm_head (untied) plus two real-size Qwen2.5-7B layers, sharded at 2 GB,
swapped to Qwen2.5 + N Russian merges. In the same run: `cp -r` of the checkpoint, `ruadapt swap`, and
mergekit's `mergekit-tokensurgeon MODEL DONOR OUT -a subword` (mergekit 0.1.5 in bench/.venv-mergekit, made
by `bash bench/setup_mergekit.sh`; skipped when absent). Also counts, for each output, the new rows that equal
the mean-of-pieces reference (tests/reference.py: an independent BPE).

    python bench/swap.py [--new-tokens 16000] [--repeat 5] [--workdir runs/bench-swap]

Prints a markdown table and writes bench/results/swap.json and swap.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import ROOT, SHARED, run_measured, table  # noqa: E402
from reference import piece_bytes, reference_pieces  # noqa: E402

from ruadapt.io.checkpoint import CheckpointReader, CheckpointWriter  # noqa: E402

D, FF, ROWS, HEADS, KV = 3584, 18944, 152064, 28, 4


def make_checkpoint(out: Path) -> None:
    """Qwen2.5-7B-shaped vocabulary matrices + 2 real-size layers, bf16, 2 GB shards, the real Qwen2.5 tokenizer."""
    if (out / "config.json").exists():
        return
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    w = CheckpointWriter(tmp, max_shard_bytes=2 * 10**9)
    w.add("model.embed_tokens.weight", rnd(ROWS, D))
    for i in range(2):
        p = f"model.layers.{i}."
        for name, shape in [
            ("self_attn.q_proj.weight", (D, D)),
            ("self_attn.q_proj.bias", (D,)),
            ("self_attn.k_proj.weight", (KV * 128, D)),
            ("self_attn.k_proj.bias", (KV * 128,)),
            ("self_attn.v_proj.weight", (KV * 128, D)),
            ("self_attn.v_proj.bias", (KV * 128,)),
            ("self_attn.o_proj.weight", (D, D)),
            ("mlp.gate_proj.weight", (FF, D)),
            ("mlp.up_proj.weight", (FF, D)),
            ("mlp.down_proj.weight", (D, FF)),
            ("input_layernorm.weight", (D,)),
            ("post_attention_layernorm.weight", (D,)),
        ]:
            w.add(p + name, rnd(*shape))
    w.add("model.norm.weight", torch.ones(D, dtype=torch.bfloat16))
    w.add("lm_head.weight", rnd(ROWS, D))
    w.finish()
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": D,
        "intermediate_size": FF,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "vocab_size": ROWS,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHARED / "tokenizers" / "qwen2.5" / f, tmp / f)
    tmp.rename(out)


def make_donor(tok_dir: Path, out: Path) -> None:
    """A tiny Qwen2 model dir that carries the new tokenizer (what mergekit-tokensurgeon wants as DONOR)."""
    if (out / "config.json").exists():
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from ruadapt.io.tokdir import load_tokenizer, tokenizer_size

    n = tokenizer_size(load_tokenizer(tok_dir))
    cfg = AutoConfig.for_model(
        "qwen2",
        vocab_size=n,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / f).exists():
            shutil.copyfile(tok_dir / f, out / f)


def count_correct(base: Path, out: Path, tok_dir: Path) -> dict:
    """New rows (ids ≥ len(base)) of embed/lm_head that equal the reference mean of pieces within bf16 rounding."""
    spec = json.loads((base / "tokenizer.json").read_text())
    new_spec = json.loads((tok_dir / "tokenizer.json").read_text())
    n_base = len(spec["model"]["vocab"]) + len(spec["added_tokens"])
    inv = {i: p for p, i in new_spec["model"]["vocab"].items()}
    new_ids = sorted(i for i in inv if i >= n_base)
    rb, ro = CheckpointReader(base), CheckpointReader(out)
    result = {}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old, new = rb.get(name), ro.get(name)
        ok = 0
        for i in new_ids:
            src = reference_pieces(spec, piece_bytes(spec, inv[i]))
            ref = old[src].float().mean(0)
            if i < new.shape[0] and torch.allclose(new[i].float(), ref, rtol=2**-7, atol=1e-4):
                ok += 1
        result[name.split(".")[-2]] = f"{ok}/{len(new_ids)}"
        del old, new
    return result


def plot(res: dict, path: Path) -> None:
    """Wall time and peak RSS per tool, from a swap.json."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = res["rows"]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        names = [r["tool"].split(" -a")[0].replace(" ", "\n").replace("-tokensurgeon", "\ntokensurgeon") for r in rows]
        ax[0].bar(names, [r["wall_s"] for r in rows])
        ax[0].set_ylabel("wall s (median)")
        ax[1].bar(names, [r["peak_rss_gb"] for r in rows])
        ax[1].axhline(2 * res["vocab_gb"], ls="--", c="r", label="2 × (embed + lm_head)")
        ax[1].set_ylabel("peak RSS GB")
        ax[1].legend()
        fig.suptitle(f"swap of a Qwen2.5-7B-shaped checkpoint (+{res['new_tokens']} tokens)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    except Exception as e:  # plotting is a nicety
        print("plot failed:", e)


def _summary(runs: list[dict]) -> dict:
    """Median wall time, largest peak RSS and every wall time of repeated runs."""
    walls = sorted(r["wall_s"] for r in runs)
    return {
        "wall_s": walls[len(walls) // 2],
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        "walls_s": [r["wall_s"] for r in runs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=16000)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-swap")
    ap.add_argument("--repeat", type=int, default=5, help="runs of cp and ruadapt (median wall time reported)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--plot-only", action="store_true", help="redraw bench/results/swap.png from swap.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(
            json.loads((ROOT / "bench" / "results" / "swap.json").read_text()), ROOT / "bench" / "results" / "swap.png"
        )
        return
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    ruadapt = [py, "-m", "ruadapt", "-q"]

    tok = work / f"qwen2.5-ru{args.new_tokens // 1000}k"
    if not (tok / "tokenizer.json").exists():
        run_measured(
            ruadapt
            + [
                "tokenizer",
                "train",
                "--base",
                str(SHARED / "tokenizers" / "qwen2.5"),
                "--corpus",
                str(SHARED / "data" / "ru_train.txt"),
                "--mode",
                "extend",
                "--new-tokens",
                str(args.new_tokens),
                "--out",
                str(tok),
            ]
        )
    src = work / "qwen7b-shapes"
    make_checkpoint(src)
    size_gb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9
    vocab_gb = 2 * ROWS * D * 2 / 1e9

    rows = []
    for out in ("cp", "ruadapt", "mergekit"):
        shutil.rmtree(work / out, ignore_errors=True)
    run_measured(["cp", "-r", str(src), str(work / "cp")])  # warm the page cache for everyone
    shutil.rmtree(work / "cp")
    # cp and ruadapt alternate --repeat times (this VM's page allocation makes single runs vary by ±30 %); the
    # table shows the median wall time and the largest peak RSS of each
    cp_runs, swap_runs = [], []
    for _k in range(args.repeat):  # each command starts with the other's output deleted (same free page cache)
        shutil.rmtree(work / "ruadapt", ignore_errors=True)
        cp_runs.append(run_measured(["cp", "-r", str(src), str(work / "cp")]))
        shutil.rmtree(work / "cp")
        swap_runs.append(
            run_measured(
                ruadapt + ["swap", "--model", str(src), "--tokenizer", str(tok), "--out", str(work / "ruadapt")]
            )
        )
    r = _summary(cp_runs)
    rows.append({"tool": "cp -r", **r, "new rows right (embed / lm_head)": "-"})
    cp_time = r["wall_s"]
    c = count_correct(src, work / "ruadapt", tok)
    rows.append(
        {
            "tool": "ruadapt swap",
            **_summary(swap_runs),
            "new rows right (embed / lm_head)": f"{c['embed_tokens']} / {c['lm_head']}",
        }
    )

    mk = ROOT / "bench" / ".venv-mergekit" / "bin" / "mergekit-tokensurgeon"
    if mk.exists():
        donor = work / "donor"
        make_donor(tok, donor)
        r = run_measured([str(mk), str(src), str(donor), str(work / "mergekit"), "-a", "subword", "--device", "cpu"])
        c = count_correct(src, work / "mergekit", tok)
        rows.append(
            {
                "tool": "mergekit-tokensurgeon -a subword",
                **r,
                "new rows right (embed / lm_head)": f"{c['embed_tokens']} / {c['lm_head']}",
            }
        )
    else:
        print(f"(mergekit not installed: bash bench/setup_mergekit.sh to compare; {mk} missing)")

    for row in rows:
        row["× cp time"] = round(row["wall_s"] / cp_time, 2)
    print(
        f"\ncheckpoint: {size_gb:.2f} GB in 2 GB shards; embed + lm_head = {vocab_gb:.2f} GB; +{args.new_tokens} "
        "tokens\n"
    )
    print(table(rows, ["tool", "wall_s", "× cp time", "peak_rss_gb", "new rows right (embed / lm_head)", "walls_s"]))
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "swap.json").write_text(
        json.dumps(
            {"checkpoint_gb": size_gb, "vocab_gb": vocab_gb, "new_tokens": args.new_tokens, "rows": rows}, indent=2
        )
    )
    plot(json.loads((res_dir / "swap.json").read_text()), res_dir / "swap.png")
    if not args.keep:
        for out in ("cp", "ruadapt", "mergekit"):
            shutil.rmtree(work / out, ignore_errors=True)


if __name__ == "__main__":
    main()
