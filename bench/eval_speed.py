"""Bench for `ruadapt eval` speed (issue 6): Russian generation chars/s, base Qwen2.5 tokenizer vs the +48k
Russian extension, on one body.

The body is a Qwen2.5-0.5B-shaped Qwen2 model (hidden 896, 24 layers, FFN 4864, 14 heads / 2 KV heads, tied
embeddings) with random weights: its per-token cost is dominated by the transformer layers (≈358M MACs per
token in the layers vs 136M in the 151,936-row lm_head). The same body gets the extended tokenizer through
`ruadapt swap` (new rows = mean of their base pieces; every layer byte-identical). Both models then produce
real held-out Russian (shared/data/ru_eval.txt) by greedy decoding forced to each model's own tokenization
of the reference continuation (`ruadapt eval --speed-mode reference`): each step is a full forward pass and
full-vocabulary argmax, exactly like free generation, but a random body still yields Russian text. Prompts
are the first 200 characters of a line; every generation makes exactly --new-tokens tokens, one warm-up
generation per model is excluded, then --rounds rounds of every prompt on every model in rotating order
(ruadapt.eval.speed.measure_speed). One timing on a shared machine is off by tens of per cent (issue 16: this
bench gave 1.44× and 1.77× chars/s), so every figure is the median over rounds with its spread, a ratio is the
median of per-round ratios, and the decode (per-step) tokens/s ratio is checked against the MAC count of one
step (ruadapt.eval.macs: the +48k model's 31 % larger lm_head predicts ≈ 0.92×); a disagreement is printed as a
warning. The tokens/s and chars/s of the whole ``generate`` call include the prefill of the prompt, which the +48k
model runs on about a third fewer tokens (the same 200 characters); that is a real saving, but its share depends
on prompt length and --new-tokens, so the per-step figures are printed too (decode tokens/s ratio, and "decoding
alone" chars/s = that ratio × the ratio of generated chars/token).

    nice .venv/bin/python bench/eval_speed.py [--tokenizer tokenizers/qwen2.5-ru48k] [--new-tokens 24]
        [--prompts 4] [--rounds 5] [--workdir runs/bench-eval-speed] [--keep]

Without --tokenizer it uses tokenizers/qwen2.5-ru48k when present, else trains the +48k extension on
shared/data/ru_train.txt with ruadapt.tokenizer.train.train_tokenizer into the workdir (cached there).
Prints a markdown table and writes bench/results/eval_speed.json (per-round values included) and
bench/results/eval_speed.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common import SHARED  # noqa: E402  (RUADAPT_TEST_DATA, else ../shared: the tests' data)

BODY = dict(
    hidden_size=896,
    num_hidden_layers=24,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def build_base(out: Path, body: dict, seed: int = 0) -> Path:
    """A random Qwen2 body with the real Qwen2.5 tokenizer and the released 151,936-row embedding."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHARED / "tokenizers" / "qwen2.5" / f, tmp / f)
    config = AutoConfig.for_model(
        "qwen2", vocab_size=151936, bos_token_id=None, eos_token_id=151645, pad_token_id=151643, **body
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02)
    model.save_pretrained(tmp, max_shard_size="1GB")
    tmp.rename(out)
    return out


def extension(args: argparse.Namespace) -> Path:
    if args.tokenizer:
        return Path(args.tokenizer)
    committed = ROOT / "tokenizers" / "qwen2.5-ru48k"
    if (committed / "tokenizer.json").is_file():
        return committed
    from ruadapt.tokenizer.train import train_tokenizer

    out = args.workdir / "qwen2.5-ru48k"
    if not (out / "tokenizer.json").is_file():
        logging.info("training the +48k extension on ru_train.txt into %s", out)
        train_tokenizer(
            SHARED / "tokenizers" / "qwen2.5", [SHARED / "data" / "ru_train.txt"], out, mode="extend", new_tokens=48000
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", help="extended tokenizer dir (default: tokenizers/qwen2.5-ru48k or train it)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-eval-speed")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every prompt on every model; medians over them")
    ap.add_argument("--layers", type=int, default=BODY["num_hidden_layers"], help="shrink the body for a quick try")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the model dirs in --workdir")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    from ruadapt.eval.load import load_model
    from ruadapt.eval.report import markdown_table, median_spread, ratio_range
    from ruadapt.eval.speed import measure_speed, select_prompts
    from ruadapt.io.corpus import read_documents as read_lines
    from ruadapt.swap import swap_model
    from ruadapt.vocab.measure import chars_per_token

    args.workdir.mkdir(parents=True, exist_ok=True)
    body = {**BODY, "num_hidden_layers": args.layers}
    t0 = time.perf_counter()
    base_dir = build_base(args.workdir / f"base-L{args.layers}", body)
    tok_dir = extension(args)
    ru_dir = args.workdir / f"ru48k-L{args.layers}"
    if not (ru_dir / "config.json").is_file():
        swap_model(base_dir, tok_dir, ru_dir, progress=False)
    prep_s = time.perf_counter() - t0

    models = [load_model("qwen2.5", base_dir), load_model("qwen2.5-ru48k", ru_dir)]
    eval_file = SHARED / "data" / "ru_eval.txt"
    prompts = select_prompts(read_lines(eval_file), models, args.prompts, new_tokens=args.new_tokens, mode="reference")
    t1 = time.perf_counter()
    speed = measure_speed(models, prompts, new_tokens=args.new_tokens, mode="reference", rounds=args.rounds)
    measure_s = time.perf_counter() - t1

    rows, results = [], {}
    for em in models:
        s = speed["models"][em.name]
        cpt = chars_per_token(em.path, eval_file)["chars_per_token"]
        macs = s["macs_per_step"]
        layer_share = (macs["layers"] + macs["attention"]) / macs["total"]
        results[em.name] = {
            **{k: v for k, v in s.items() if k != "sample"},
            "embedding_rows": em.rows,
            "ru_eval_chars_per_token": cpt,
            "layer_share_of_step_macs": layer_share,
        }
        rows.append(
            {
                "model": em.name,
                "rows": f"{em.rows:,}",
                "layers' share of MACs": f"{layer_share:.2f}",
                "ru_eval chars/token": f"{cpt:.3f}",
                "generated chars/token": f"{s['chars_per_token']:.3f}",
                "tokens/s": median_spread(s, "tokens_per_s"),
                "chars/s": median_spread(s, "chars_per_s"),
                "chars/s ratio": ratio_range(s, "chars_per_s_ratio"),
                "decode tokens/s ratio": ratio_range(s, "decode_tokens_per_s_ratio"),
                "MAC-predicted ratio": f"{s['mac_ratio']:.3f}",
            }
        )
    print("\n".join(markdown_table(list(rows[0]), [list(r.values()) for r in rows])))
    ru, base = speed["models"]["qwen2.5-ru48k"], speed["models"]["qwen2.5"]
    ratio = ru["chars_per_s_ratio"]
    # the same text at the per-step rate, without the prefill (whose share differs: fewer prompt tokens for +48k)
    decode_chars_ratio = ru["decode_tokens_per_s_ratio"] * ru["chars_per_token"] / base["chars_per_token"]
    print(
        f"\nRussian generation speed, +48k extension vs base: {ratio_range(ru, 'chars_per_s_ratio')}x chars/s "
        f"(median [lowest-highest] of {args.rounds} rounds; target >= 1.4x); per step "
        f"{ratio_range(ru, 'decode_tokens_per_s_ratio')}x tokens/s, the MAC count predicts {ru['mac_ratio']:.3f}x; "
        f"decoding alone {decode_chars_ratio:.3f}x chars/s"
    )
    for w in speed["warnings"]:
        print(f"warning: {w}")
    round_s = sum(s["seconds"] for s in speed["models"].values()) / args.rounds
    print(f"measured in {measure_s:.0f} s with the warm-up; one round {round_s:.0f} s")

    args.results.mkdir(parents=True, exist_ok=True)
    out = {
        "claim": "Russian generation chars/s, Qwen2.5 + 48k Russian extension vs base tokenizer, same body",
        "body": {
            "model_type": "qwen2",
            **body,
            "parameters": models[0].facts["parameters"],
            "weights": "random N(0, 0.02)",
            "dtype": "float32",
            "device": "cpu",
            "threads": torch.get_num_threads(),
        },
        "tokenizer": str(tok_dir),
        "prompts_from": str(eval_file),
        "speed": {k: v for k, v in speed.items() if k != "models"},
        "models": results,
        "chars_per_s_ratio": ratio,
        "decode_chars_per_s_ratio": decode_chars_ratio,
        "warnings": speed["warnings"],
        "prep_s": round(prep_s, 1),
        "measure_s": round(measure_s, 1),
        "round_s": round(round_s, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        "samples": {name: s["sample"] for name, s in speed["models"].items()},
    }
    (args.results / "eval_speed.json").write_text(
        json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    plot(results, args.results / "eval_speed.png", args.new_tokens, args.layers, args.rounds)
    print(f"wrote {args.results / 'eval_speed.json'} and eval_speed.png")
    if not args.keep:
        for d in (base_dir, ru_dir):
            shutil.rmtree(d, ignore_errors=True)


def plot(results: dict, path: Path, new_tokens: int, layers: int, rounds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, key, title in (
        (axes[0], "chars_per_s", "Russian chars / s"),
        (axes[1], "tokens_per_s", "tokens / s"),
        (axes[2], "chars_per_token", "chars / generated token"),
    ):
        mid = [results[n][key] for n in names]
        sp = [results[n].get(key + "_spread") for n in names]
        err = None if None in sp else [[m - s["min"] for m, s in zip(mid, sp)], [s["max"] - m for m, s in zip(mid, sp)]]
        bars = ax.bar(names, mid, yerr=err, capsize=3, color=["C0", "C1"])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"Qwen2 body (hidden 896, {layers} layers), greedy decoding of held-out Russian, {new_tokens} tokens/prompt, "
        f"CPU; median and range of {rounds} rounds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
