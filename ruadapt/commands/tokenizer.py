"""``ruadapt tokenizer train`` and ``ruadapt tokenizer report``"""

from __future__ import annotations

import argparse
import json
import os

from ..io.hub import TOKENIZER, resolve
from ..mistakes import add_allow_argument
from ..options import TokenizerMode, TokenizerTrainOptions
from . import add_dry_run, add_parser, add_revision, choices, model_arg, path_arg, resolve_named


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "tokenizer",
        help="train a Russian tokenizer (extend / replace) and report chars per token",
        description="Stage 1: a tokenizer for the new vocabulary, and its characters-per-token report.",
        examples="ruadapt tokenizer train --base ./Qwen2.5-7B --corpus ru_train.txt --mode extend --new-tokens 48000 "
        "--out tok-ru48k\n"
        "ruadapt tokenizer report --tokenizer base=./Qwen2.5-7B --tokenizer ru48k=tok-ru48k --text ru=ru_eval.txt "
        "--out report",
    )
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    t = add_parser(
        tsub,
        "train",
        help="extend a base BPE with new merges, or train a replacement BPE",
        description="extend: continue the base BPE on the corpus (same normalizer, pre-tokenizer, decoder, special "
        "tokens and chat template; every base id kept; new ids from len(base) upward; llama.cpp's check text keeps "
        "its base segmentation, so llama.cpp's own converter still recognises the tokenizer). replace: a new BPE of "
        "--vocab-size tokens with the base's pre-tokenizer family and the base's special tokens appended "
        "(old->new ids in token_id_map.json). Writes OUT/ruadapt_tokenizer.json.",
        examples="ruadapt tokenizer train --base ./Qwen2.5-7B --corpus ru_train.txt --mode extend --new-tokens 48000 "
        "--out tok-ru48k\n"
        "ruadapt tokenizer train --base ./Llama-3-8B --corpus ru.txt en.txt --new-tokens 32000 --min-frequency 5 --out "
        "tok\n"
        "ruadapt tokenizer train --base ./Qwen2.5-7B --corpus ru_train.txt --mode replace --vocab-size 64000 --out "
        "tok-ru64k\n"
        "ruadapt tokenizer train --base ./Qwen2.5-7B --corpus ru_train.txt --new-tokens 48000 --out tok-ru48k "
        "--dry-run   # the plan only",
    )
    t.add_argument(
        "--base",
        type=model_arg,
        required=True,
        help="base tokenizer dir (tokenizer.json), a model dir holding one, or a Hub repo id (only its tokenizer files "
        "are fetched)",
    )
    t.add_argument(
        "--corpus",
        type=path_arg,
        nargs="+",
        required=True,
        metavar="FILE",
        help='training corpus: UTF-8 text (a document per line), JSONL ("text" field) or Parquet ("text" column); '
        ".gz/.zst too",
    )
    t.add_argument(
        "--mode", choices=choices(TokenizerMode), default="extend", help="continue the base BPE, or train a new one"
    )
    t.add_argument("--new-tokens", type=int, default=None, metavar="N", help="extend: number of tokens to add")
    t.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        metavar="N",
        help="replace: len(new tokenizer), the base's added tokens included",
    )
    t.add_argument(
        "--min-frequency", type=int, default=2, metavar="K", help="a pair must occur at least K times to be merged"
    )
    t.add_argument("--out", type=path_arg, required=True, help="new (or empty) output directory")
    add_dry_run(t, "mode, base, corpora with their sizes, target size, output")
    add_allow_argument(t, ("json-text",))
    add_revision(t)
    t.set_defaults(func=run_train)

    r = add_parser(
        tsub,
        "report",
        help="characters per token of tokenizers on texts: report.json, report.md, a PNG",
        description="chars/token = sum len(line) / sum len(encode(line, add_special_tokens=False)) over the lines of "
        "each text; also bytes/token, tokens/word, and how many of the tokens new relative to the FIRST "
        "tokenizer each text uses. Writes OUT/report.json {NAME: {LANG: {...}}}, usage.json, report.md, "
        "chars_per_token.png.",
        examples="ruadapt tokenizer report --tokenizer base=./Qwen2.5-7B --tokenizer ru48k=tok-ru48k "
        "--text ru=ru_eval.txt --text en=en_eval.txt --out report",
    )
    r.add_argument(
        "--tokenizer",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="tokenizer dir or Hub repo id (repeat; the first is the reference)",
    )
    r.add_argument(
        "--text", action="append", required=True, metavar="LANG=FILE", help="UTF-8 text, one document per line (repeat)"
    )
    r.add_argument(
        "--top-unused", type=int, default=20, metavar="K", help="list the first K unused new tokens per text"
    )
    r.add_argument("--out", type=path_arg, required=True, help="new (or empty) output directory")
    add_allow_argument(r, ("json-text",))
    add_revision(r)
    r.set_defaults(func=run_report)


def run_train(args: argparse.Namespace) -> int:
    from ..tokenizer.train import plan_tokenizer_train, write_trained

    plan = plan_tokenizer_train(
        TokenizerTrainOptions(
            base=resolve(args.base, "--base", revision=args.revision, what=TOKENIZER),
            corpora=tuple(args.corpus),
            out=args.out,
            mode=args.mode,
            new_tokens=args.new_tokens,
            vocab_size=args.vocab_size,
            min_frequency=args.min_frequency,
            allow=tuple(args.allow),
            progress=not os.environ.get("TQDM_DISABLE"),
        )
    )
    if args.dry_run:
        print(plan.format_dry_run())
        return 0
    record = write_trained(plan)
    r = record["result"]
    print(f"{args.out}: {r['tokens']} tokens ({args.mode}); record in {args.out}/ruadapt_tokenizer.json")
    print(
        json.dumps(
            {
                k: r[k]
                for k in r
                if k
                in (
                    "new_tokens",
                    "new_merges",
                    "trained_tokens",
                    "merges",
                    "added_tokens",
                    "training_tokens_before",
                    "training_tokens_after",
                )
            }
        )
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..tokenizer.report import tokenizer_report

    tokenizers = list(resolve_named(args.tokenizer, "--tokenizer", args.revision, TOKENIZER).items())
    tokenizer_report(tokenizers, args.text, args.out, top_unused=args.top_unused, allow=args.allow)
    print((args.out / "report.md").read_text(encoding="utf-8"), end="")
    return 0
