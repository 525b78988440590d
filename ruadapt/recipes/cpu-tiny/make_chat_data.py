"""Chat-format tasks for the demo's tiny "instruct" model, built from ../shared/data/ru_en_parallel.tsv.

Three tasks per pair (translate ru→en, translate en→ru, repeat a Russian sentence), as `{"messages": [...]}`
JSONL that `ruadapt train` (SFT) renders with the model's own chat template. A fixed, hash-based split keeps
the same pairs held out on every run; the held-out file holds only tasks whose answer is Russian, for
Russian bits-per-byte on assistant turns.

    python make_chat_data.py --pairs ../shared/data/ru_en_parallel.tsv --out DIR [--heldout 300] [--max-chars 300]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

from ruadapt.outdir import atomic_output_dir

SYSTEM = "Ты полезный ассистент."


def tasks(ru: str, en: str) -> list[list[dict]]:
    def chat(user: str, answer: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    return [
        chat(f"Переведи на английский: {ru}", en),
        chat(f"Translate into Russian: {en}", ru),
        chat(f"Повтори текст: {ru}", ru),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heldout", type=int, default=300, help="pairs held out for evaluation")
    ap.add_argument("--max-chars", type=int, default=300, help="skip pairs with a side longer than this")
    ap.add_argument("--max-train", type=int, default=0, help="cap on training pairs (0 = all)")
    args = ap.parse_args()
    with open(args.pairs, encoding="utf-8", newline="") as f:
        rows = [(r["ru"], r["en"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rows = [r for r in rows if 0 < len(r[0]) <= args.max_chars and 0 < len(r[1]) <= args.max_chars]
    rows.sort(key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())  # a fixed shuffle
    held, train = rows[: args.heldout], rows[args.heldout :]
    if args.max_train:
        train = train[: args.max_train]
    with atomic_output_dir(args.out, [args.pairs]) as tmp:  # a relaunch skips a complete folder only
        with open(tmp / "sft_train.jsonl", "w", encoding="utf-8") as f:
            for ru, en in train:
                for messages in tasks(ru, en):
                    f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        with open(tmp / "heldout_ru.jsonl", "w", encoding="utf-8") as f:
            for ru, en in held:
                for messages in tasks(ru, en)[1:]:  # the two tasks whose answer is Russian
                    f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(train)} training pairs x 3 tasks, {len(held)} held-out pairs x 2 Russian-answer tasks")


if __name__ == "__main__":
    main()
