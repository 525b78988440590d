"""``ruadapt trim --model DIR --corpus FILE [FILE ...] --out DIR [--keep-top N | --min-count K]``"""

from __future__ import annotations

import argparse

from ..mistakes import add_allow_argument
from . import add_parser, add_revision, model_arg, path_arg
from ..io.hub import TOKENIZER, resolve
from ..errors import RuadaptError


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
""",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=model_arg, help="Hugging Face model directory (safetensors + tokenizer.json) or Hub repo id")
    src.add_argument("--tokenizer", type=model_arg, help="trim only this tokenizer directory (no weights), or a Hub repo id's tokenizer")
    p.add_argument("--corpus", type=path_arg, nargs="+", required=True, help="corpus files: UTF-8 text (a document per line), JSONL (\"text\" field) or Parquet (\"text\" column); .gz/.zst too")
    p.add_argument("--out", type=path_arg, required=True, help="new directory for the trimmed model (must not exist or be empty)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--keep-top", type=int, metavar="N", help="vocabulary size to keep: must-keep tokens, then the most frequent used tokens with their closure (default: every used token)")
    how.add_argument("--min-count", type=int, metavar="K", help="keep used tokens that occur at least K times (default 1)")
    p.add_argument("--keep-tokens", type=path_arg, metavar="FILE", help="tokens to keep regardless of the corpus, one per line, spelled as in tokenizer.json")
    p.add_argument("--eval-text", type=path_arg, nargs="+", default=[], metavar="FILE", help="also report chars/token and changed segmentations on these texts")
    p.add_argument("--pad-to-multiple-of", type=int, metavar="N", help="round the rows up to N (default: the base checkpoint's padding multiple)")
    p.add_argument("--max-shard-size", help="shard byte budget, e.g. 2GB (default: the input's largest shard)")
    add_allow_argument(p, ("json-text",))
    add_revision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..trim import format_report, trim_model, trim_tokenizer

    progress = not args.quiet
    common = dict(keep_top=args.keep_top, min_count=args.min_count, keep_tokens=args.keep_tokens, eval_texts=args.eval_text, allow=args.allow, progress=progress)
    if args.model is not None:
        data = trim_model(resolve(args.model, "--model", revision=args.revision), args.corpus, args.out, pad_to_multiple_of=args.pad_to_multiple_of, max_shard_size=args.max_shard_size, **common)
    else:
        if args.pad_to_multiple_of is not None or args.max_shard_size is not None:
            raise RuadaptError("--pad-to-multiple-of and --max-shard-size need --model (there are no weights with --tokenizer)")
        data = trim_tokenizer(resolve(args.tokenizer, "--tokenizer", revision=args.revision, what=TOKENIZER), args.corpus, args.out, **common)
    print(format_report(data))
    print(f"wrote {args.out}")
    return 0
