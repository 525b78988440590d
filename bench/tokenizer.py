"""Bench: Qwen2.5 extended by N new tokens (continued BPE on ru_train) — training time and chars/token.

    .venv/bin/python bench/tokenizer.py                     # N = 8k 16k 32k 48k 64k, writes bench/results/
    .venv/bin/python bench/tokenizer.py --sizes 8000 16000  # a subset

Every N is a separate, timed ``train_tokenizer`` run (the same code as ``ruadapt tokenizer train``), so the
times include reading and counting the corpus, learning the merges, writing and the id checks; the table also
shows the merge-learning step alone (the ≤ 30 s acceptance for 48k), the process CPU time and the load average
(other jobs on a shared machine inflate wall times; CPU time much less). chars/token is ``chars_per_token``
(docs/design.md §5) on ru_eval and en_eval, which no training step ever reads.
Prints a Markdown table and writes ``tokenizer.json`` / ``tokenizer.md`` / ``tokenizer.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common import SHARED  # noqa: E402  (RUADAPT_TEST_DATA, else ../shared: the tests' data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, default=SHARED / "tokenizers" / "qwen2.5")
    p.add_argument("--corpus", type=Path, default=SHARED / "data" / "ru_train.txt")
    p.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000, 32000, 48000, 64000])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()

    from ruadapt.tokenizer.train import train_tokenizer
    from ruadapt.vocab.measure import chars_per_token

    ru, en = SHARED / "data" / "ru_eval.txt", SHARED / "data" / "en_eval.txt"
    rows = [
        {
            "new_tokens": 0,
            "ru_eval": chars_per_token(args.base, ru)["chars_per_token"],
            "en_eval": chars_per_token(args.base, en)["chars_per_token"],
        }
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    try:
        for n in args.sizes:
            out = work / f"ru{n}"
            load = os.getloadavg()[0]
            t, cpu = time.perf_counter(), time.process_time()
            record = train_tokenizer(args.base, [args.corpus], out, mode="extend", new_tokens=n, progress=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            tim = record["timings_s"]
            rows.append(
                {
                    "new_tokens": n,
                    "train_s": round(wall, 2),
                    "train_cpu_s": round(cpu, 2),
                    "load_avg_1min": round(load, 1),
                    "count_words_s": tim["count_words"],
                    "learn_merges_s": tim["learn_merges"],
                    "write_verify_s": round(tim["write"] + tim["verify"], 2),
                    "ru_eval": chars_per_token(out, ru)["chars_per_token"],
                    "en_eval": chars_per_token(out, en)["chars_per_token"],
                }
            )
            print(f"N={n}: {rows[-1]}", flush=True)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base_ru, base_en = rows[0]["ru_eval"], rows[0]["en_eval"]
    lines = [
        f"Qwen2.5 + N new tokens, continued BPE on `{args.corpus.name}`; chars/token on ru_eval / en_eval "
        f"(ratio to the base). Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| N new | train wall s | train CPU s | load avg | count words s | learn merges s | write+verify s | ru_eval "
        "chars/token | en_eval chars/token |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["new_tokens"] == 0:
            lines.append(f"| 0 (base) | – | – | – | – | – | – | {r['ru_eval']:.3f} | {r['en_eval']:.3f} |")
            continue
        lines.append(
            f"| {r['new_tokens']:,} | {r['train_s']:.1f} | {r['train_cpu_s']:.1f} | {r['load_avg_1min']:.1f} | "
            f"{r['count_words_s']:.1f} | {r['learn_merges_s']:.1f} | "
            f"{r['write_verify_s']:.1f} | {r['ru_eval']:.3f} ({r['ru_eval'] / base_ru:.2f}×) | "
            f"{r['en_eval']:.3f} ({r['en_eval'] / base_en:.3f}×) |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokenizer.md").write_text(table, encoding="utf-8")
    (args.out / "tokenizer.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.out / "tokenizer.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["new_tokens"] / 1000 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ns, [r["ru_eval"] for r in rows], "o-", label="ru_eval")
    a.plot(ns, [r["en_eval"] for r in rows], "s-", label="en_eval")
    a.set_xlabel("new tokens (thousands)")
    a.set_ylabel("characters per token")
    a.set_title("Qwen2.5 + N Russian tokens")
    a.grid(alpha=0.3)
    a.legend()
    trained = [r for r in rows if r["new_tokens"]]
    b.plot([r["new_tokens"] / 1000 for r in trained], [r["train_s"] for r in trained], "o-", label="whole run, wall")
    b.plot([r["new_tokens"] / 1000 for r in trained], [r["train_cpu_s"] for r in trained], "^-", label="whole run, CPU")
    b.plot(
        [r["new_tokens"] / 1000 for r in trained],
        [r["learn_merges_s"] for r in trained],
        "s-",
        label="learn merges, wall",
    )
    b.set_xlabel("new tokens (thousands)")
    b.set_ylabel("seconds")
    b.set_title(f"training time (shared 2-core machine, load ≈ {rows[-1].get('load_avg_1min', 0):.0f})")
    b.grid(alpha=0.3)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
