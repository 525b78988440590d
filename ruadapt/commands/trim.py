"""``ruadapt trim --model DIR --corpus FILE [FILE ...] --out DIR [--keep-top N | --min-count K]``"""

from __future__ import annotations

import argparse

from ..errors import RuadaptError
from ..io.hub import TOKENIZER, resolve
from ..options import TrimOptions
from . import (
    add_parser,
    add_revision,
    add_vocab_output_arguments,
    model_arg,
    path_arg,
    vocab_output_options,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "trim",
        help="shrink a model's vocabulary to the tokens a corpus uses",
        description="Count the tokens a corpus uses with the model's own tokenizer; keep those (or the most "
        "frequent up to --keep-top), every special/added token, the byte alphabet and the BPE merge closure; "
        "renumber them compactly in the old order (id_map.json), copy their embedding/lm_head rows bit-identically, "
        "pad rows like swap, remap special ids in config.json, generation_config.json and tokenizer_config.json. "
        "Text still round-trips: dropped tokens split into smaller kept pieces. With --tokenizer instead of "
        "--model only a tokenizer directory is trimmed.",
        examples="""
ruadapt trim --model ./Qwen2.5-0.5B --corpus ru_train.txt en_train.txt --out ./qwen-trim
ruadapt trim --model ./Qwen2.5-0.5B --corpus ru_train.txt --keep-top 32000 --eval-text ru_eval.txt --out ./qwen-32k
ruadapt trim --model ./mt5-small --corpus ru_train.txt --min-count 3 --out ./rut5-small
ruadapt trim --tokenizer ./Qwen2.5-0.5B --corpus ru_train.txt en_train.txt --out ./tok-trim   # tokenizer only
ruadapt trim --model ./Qwen2.5-0.5B --corpus ru_train.txt --keep-top 32000 --out ./qwen-32k --dry-run   # the plan only
""",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", type=model_arg, help="Hugging Face model directory (safetensors + tokenizer.json) or Hub repo id"
    )
    src.add_argument(
        "--tokenizer",
        type=model_arg,
        help="trim only this tokenizer directory (no weights), or a Hub repo id's tokenizer",
    )
    p.add_argument(
        "--corpus",
        type=path_arg,
        nargs="+",
        required=True,
        help='corpus files: UTF-8 text (a document per line), JSONL ("text" field) or Parquet ("text" column); '
        ".gz/.zst too",
    )
    p.add_argument(
        "--out", type=path_arg, required=True, help="new directory for the trimmed model (must not exist or be empty)"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--keep-top",
        type=int,
        metavar="N",
        help="vocabulary size to keep: must-keep tokens, then the most frequent used tokens with their closure "
        "(default: every used token)",
    )
    how.add_argument(
        "--min-count", type=int, metavar="K", help="keep used tokens that occur at least K times (default 1)"
    )
    p.add_argument(
        "--keep-tokens",
        type=path_arg,
        metavar="FILE",
        help="tokens to keep regardless of the corpus, one per line, spelled as in tokenizer.json",
    )
    p.add_argument(
        "--eval-text",
        type=path_arg,
        nargs="+",
        default=[],
        metavar="FILE",
        help="also report chars/token and changed segmentations on these texts",
    )
    add_vocab_output_arguments(p, mistakes=("json-text",))
    add_revision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..trim import format_report, plan_trim, trim_tokenizer, write_trim

    select = dict(keep_top=args.keep_top, min_count=args.min_count, keep_tokens=args.keep_tokens)
    if args.model is not None:
        plan = plan_trim(
            TrimOptions(
                model_dir=resolve(args.model, "--model", revision=args.revision),
                corpora=tuple(args.corpus),
                out=args.out,
                eval_texts=tuple(args.eval_text),
                **select,
                **vocab_output_options(args),
            )
        )
        if args.dry_run:
            print(plan.figures().format())
            return 0
        data = write_trim(plan)
    else:
        if args.pad_to_multiple_of is not None or args.max_shard_size is not None:
            raise RuadaptError(
                "--pad-to-multiple-of and --max-shard-size need --model (there are no weights with --tokenizer)"
            )
        if args.dry_run:
            raise RuadaptError("--dry-run needs --model: it prints the plan of a model's rows")
        tokenizer_dir = resolve(args.tokenizer, "--tokenizer", revision=args.revision, what=TOKENIZER)
        data = trim_tokenizer(
            tokenizer_dir,
            args.corpus,
            args.out,
            eval_texts=args.eval_text,
            allow=args.allow,
            progress=not args.quiet,
            **select,
        )
    print(format_report(data))
    print(f"wrote {args.out}")
    return 0
