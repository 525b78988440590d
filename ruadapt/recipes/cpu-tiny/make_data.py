"""The demo's data: instruction skills for its tiny "instruct" model, their held-out lm-eval tasks, and
pretraining text with repeats, from ../shared/data (ru_en_parallel.tsv pairs, ru_train.txt lines).

The skills (answered in Russian, scored exactly) need the vocabulary on both sides of the model: the input
embeddings read the sentence and the lm_head writes the answer, so they show whether LEP kept what instruction
tuning taught once both matrices are new:

    copy        Повтори текст: <ru>            → the sentence itself (DaruCopy in miniature)
    first_word  Назови первое слово: <ru>      → its first word (punctuation stripped)
    question    Это вопрос? <ru>               → да / нет (held out half and half; trained on every question
                                                 and as many other sentences)
    lang        Определи язык: <ru or en>      → русский / английский

Held-out sentences are fixed by a hash split of the pairs (the same on every run) and never trained on: most
parallel pairs are Tatoeba sentences that ru_train/en_train also hold, so the demo pretrains, trains its tokenizer
and runs CPT on copies of those files without the held-out sentences.

A 200-step base cannot copy (issue 16 measured 0/20 after SFT on copying alone): copying needs attention heads
that look back to where the current text occurred before, which pretraining builds when the text repeats.
``repeats.txt`` holds such documents (a ru_train line, then the same line again) for the pretraining mix.

Outputs:

    sft_train.jsonl         {"messages": [system, user, assistant]} for `ruadapt train` (task: sft)
    heldout_chat_ru.jsonl   held-out chats with Russian answers, for `ruadapt eval --chat` (bits per byte)
    heldout_<skill>.jsonl   {"prompt", "answer"} rows;  tasks/demo_<skill>.yaml their lm-eval generate_until task
                            (exact match + chrF), for `ruadapt eval --include-path DIR/tasks --tasks demo_...`
    repeats.txt             pretraining documents with repeats
    ru_train.txt en_train.txt   the given files without the held-out sentences

    python make_data.py --pairs ru_en_parallel.tsv --ru-train ru_train.txt --en-train en_train.txt --out DIR
        [--heldout 100] [--max-chars 60]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
from pathlib import Path

from ruadapt.io.outdir import atomic_output_dir

SYSTEM = "Ты полезный ассистент."  # ruadapt eval --system-instruction gives the same one to the held-out tasks
SKILLS = ("copy", "first_word", "question", "lang")
WORD = re.compile(r"\w+(?:[-']\w+)*")

TASK_YAML = """\
# demo skill {skill}: held-out items of recipes/cpu-tiny/make_data.py, asked through the chat template
task: demo_{skill}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<|im_end|>", "\\n"]
  do_sample: false
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: chrf
    aggregation: chrf
    higher_is_better: true
metadata:
  version: 1.0
"""


def is_question(ru: str) -> bool:
    return ru.rstrip("»\"'").endswith("?")


def skill_items(ru: str, en: str, index: int) -> dict[str, tuple[str, str]]:
    """skill -> (user prompt, answer) for one pair; ``index`` alternates the language of ``lang`` and picks the
    one sentence in five that is asked ``question`` without being one (about as many as there are questions)."""
    words = WORD.findall(ru)
    text, answer = (ru, "русский") if index % 2 == 0 else (en, "английский")
    items = {
        "copy": (f"Повтори текст: {ru}", ru),
        "first_word": (f"Назови первое слово: {ru}", words[0]),
        "question": (f"Это вопрос? {ru}", "да" if is_question(ru) else "нет"),
        "lang": (f"Определи язык: {text}", answer),
    }
    if not is_question(ru) and index % 5:
        del items["question"]
    return items


def chat(prompt: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, required=True, help="ru_en_parallel.tsv (columns ru, en)")
    ap.add_argument("--ru-train", type=Path, required=True, help="ru_train.txt: copied without held-out sentences")
    ap.add_argument("--en-train", type=Path, required=True, help="en_train.txt: copied without held-out sentences")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heldout", type=int, default=100, help="held-out pairs (items per skill)")
    ap.add_argument("--max-chars", type=int, default=60, help="skip pairs with a side longer than this")
    ap.add_argument("--max-train", type=int, default=0, help="cap on training pairs (0 = all)")
    ap.add_argument("--repeats", type=int, default=40000, help="documents in repeats.txt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(args.pairs, encoding="utf-8", newline="") as f:
        rows = [(r["ru"].strip(), r["en"].strip()) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rows = [
        r
        for r in rows
        if 0 < len(r[0]) <= args.max_chars and 0 < len(r[1]) <= args.max_chars and len(WORD.findall(r[0])) >= 2
    ]
    rows = list(dict.fromkeys(rows))
    rows.sort(key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())  # a fixed shuffle
    questions = [r for r in rows if is_question(r[0])]  # held out half and half, so "нет" alone scores 0.5
    others = [r for r in rows if not is_question(r[0])]
    held = questions[: args.heldout // 2] + others[: args.heldout - args.heldout // 2]
    held.sort(key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())
    train = questions[args.heldout // 2 :] + others[args.heldout - args.heldout // 2 :]
    train.sort(key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())
    held_text = {s for pair in held for s in pair}
    train = [r for r in train if r[0] not in held_text and r[1] not in held_text]
    if args.max_train:
        train = train[: args.max_train]
    rng = random.Random(args.seed)
    sft = [chat(*item) for i, (ru, en) in enumerate(train) for item in skill_items(ru, en, i).values()]
    rng.shuffle(sft)
    given = {"ru_train.txt": args.ru_train, "en_train.txt": args.en_train}
    original = {name: path.read_text(encoding="utf-8").splitlines() for name, path in given.items()}
    corpora = {name: [line for line in lines if line.strip() not in held_text] for name, lines in original.items()}
    short = [s for s in (line.strip() for line in corpora["ru_train.txt"]) if 10 <= len(s) <= 120]
    repeats = [f"{s} {s}" for s in rng.sample(short, min(args.repeats, len(short)))]

    with atomic_output_dir(
        args.out, [args.pairs, args.ru_train, args.en_train]
    ) as tmp:  # a relaunch skips a complete folder only
        for name, lines in corpora.items():
            (tmp / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        write_jsonl(tmp / "sft_train.jsonl", sft)
        (tmp / "repeats.txt").write_text("".join(s + "\n" for s in repeats), encoding="utf-8")
        (tmp / "tasks").mkdir()
        chats = []
        for skill in SKILLS:
            items = [skill_items(ru, en, 0 if skill == "question" else i)[skill] for i, (ru, en) in enumerate(held)]
            write_jsonl(tmp / f"heldout_{skill}.jsonl", [{"prompt": p, "answer": a} for p, a in items])
            chats += [chat(p, a) for p, a in items if skill in ("copy", "first_word")]
            path = (args.out / f"heldout_{skill}.jsonl").resolve()  # where it will be after the rename
            max_gen = args.max_chars if skill == "copy" else 16  # tokens: room for the longest answer (≥ 1 char/token)
            (tmp / "tasks" / f"demo_{skill}.yaml").write_text(
                TASK_YAML.format(skill=skill, path=json.dumps(str(path), ensure_ascii=False), max_gen_toks=max_gen),
                encoding="utf-8",
            )
        write_jsonl(tmp / "heldout_chat_ru.jsonl", chats)
    removed = {name: len(original[name]) - len(corpora[name]) for name in given}
    print(
        f"{args.out}: {len(sft)} chats of {len(SKILLS)} skills from {len(train)} training pairs; "
        f"{len(held)} held-out items per skill; {len(repeats)} repeat documents; held-out lines removed from "
        + ", ".join(f"{k} {v}" for k, v in removed.items())
    )


if __name__ == "__main__":
    main()
