"""``ruadapt swap --model DIR --tokenizer DIR --out DIR``"""

from __future__ import annotations

import argparse

from ..mistakes import add_allow_argument
from ..vocab.init_rules import (
    DEFAULT_INPUT,
    DEFAULT_OUTPUT,
    DEFAULT_TIED,
    INPUT_RULES,
    OUTPUT_RULES,
)
from . import add_parser, add_revision, model_arg, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "swap",
        help="give a model a new vocabulary: copy known rows, init new ones from their old pieces' rows",
        description="Write a copy of --model whose input embeddings (and untied lm_head) follow --tokenizer. "
        "Rows of tokens the base has (same bytes / same special content) are copied bit-identically; a new "
        "token's row is built by an init rule from the base rows of its pieces under the base tokenizer (untied "
        "models: one rule for the input embedding, one for the lm_head; docs/init.md); padding rows get the mean "
        "row. Only the vocabulary matrices are loaded; every other tensor is copied through unchanged.",
        examples="ruadapt swap --model ./Qwen2.5-7B --tokenizer tokenizers/qwen2.5-ru48k --out runs/qwen7b-swapped\n"
        "ruadapt swap --model Qwen/Qwen2.5-7B --tokenizer tokenizers/qwen2.5-ru48k --out runs/qwen7b-swapped   # Hub repo id\n"
        "ruadapt swap --model ./Llama-3-8B --tokenizer ./llama3-ru --out ./l3-ru --init weighted --pad-to-multiple-of 128\n"
        "ruadapt swap --model ./Qwen2.5-7B --tokenizer ./qwen-ru --out ./q-ru --init-input last --init-output mean-all",
    )
    p.add_argument("--model", required=True, type=model_arg, help="base model dir (safetensors + config + its tokenizer) or Hub repo id")
    p.add_argument("--tokenizer", required=True, type=model_arg, help="new tokenizer dir (extension or replacement) or Hub repo id")
    p.add_argument("--out", required=True, type=path_arg, help="output model dir (must not exist or be empty)")
    p.add_argument("--init", choices=OUTPUT_RULES, default=None, metavar="RULE",
                   help=f"rule of a new row in every vocabulary matrix (tied models: the only one), one of "
                   f"{', '.join(OUTPUT_RULES)}; default {DEFAULT_TIED} (tied) — see docs/init.md")
    p.add_argument("--init-input", choices=INPUT_RULES, default=None, metavar="RULE",
                   help=f"untied models: rule of the input embedding's new rows ({', '.join(INPUT_RULES)}; "
                   f"default {DEFAULT_INPUT})")
    p.add_argument("--init-output", choices=OUTPUT_RULES, default=None, metavar="RULE",
                   help=f"untied models: rule of the lm_head's new rows ({', '.join(OUTPUT_RULES)}; "
                   f"default {DEFAULT_OUTPUT})")
    p.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N", help="round the row count up to N (default: the base's padding multiple)")
    p.add_argument("--max-shard-size", default=None, metavar="SIZE", help="shard byte budget, e.g. 5GB (default: the input's largest shard)")
    add_revision(p)
    add_allow_argument(p, ("same-tokenizer", "foreign-tokenizer"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.hub import TOKENIZER, resolve
    from ..swap import swap_model

    rec = swap_model(
        resolve(args.model, "--model", revision=args.revision),
        resolve(args.tokenizer, "--tokenizer", revision=args.revision, what=TOKENIZER),
        args.out,
        init=args.init,
        init_input=args.init_input,
        init_output=args.init_output,
        pad_to_multiple_of=args.pad_to_multiple_of,
        max_shard_size=args.max_shard_size,
        allow=args.allow,
        progress=not args.quiet,
    )
    r = rec["result"]
    print(f"{args.out}: {r['tokens']:,} tokens in {r['rows']:,} rows ({r['rows_by_kind']}); record: ruadapt_swap.json")
    return 0
