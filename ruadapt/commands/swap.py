"""``ruadapt swap --model DIR --tokenizer DIR --out DIR``"""

from __future__ import annotations

import argparse

from ..io.hub import TOKENIZER, resolve
from ..options import SwapOptions
from ..vocab.init_rules import DEFAULT_INPUT, DEFAULT_OUTPUT, DEFAULT_TIED, InputRule, OutputRule
from . import (
    add_parser,
    add_revision,
    add_vocab_output_arguments,
    choices,
    model_arg,
    path_arg,
    vocab_output_options,
)


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
        "ruadapt swap --model Qwen/Qwen2.5-7B --tokenizer tokenizers/qwen2.5-ru48k --out runs/qwen7b-swapped   # Hub "
        "repo id\n"
        "ruadapt swap --model ./Llama-3-8B --tokenizer ./llama3-ru --out ./l3-ru --init weighted --pad-to-multiple-of "
        "128\n"
        "ruadapt swap --model ./Qwen2.5-7B --tokenizer ./qwen-ru --out runs/x --dry-run   # the plan only\n"
        "ruadapt swap --model ./Qwen2.5-7B --tokenizer ./qwen-ru --out ./q-ru --init-input last --init-output mean-all",
    )
    p.add_argument(
        "--model",
        required=True,
        type=model_arg,
        help="base model dir (safetensors + config + its tokenizer) or Hub repo id",
    )
    p.add_argument(
        "--tokenizer", required=True, type=model_arg, help="new tokenizer dir (extension or replacement) or Hub repo id"
    )
    p.add_argument("--out", required=True, type=path_arg, help="output model dir (must not exist or be empty)")
    p.add_argument(
        "--init",
        choices=choices(OutputRule),
        default=None,
        metavar="RULE",
        help=f"rule of a new row in every vocabulary matrix (tied models: the only one), one of "
        f"{', '.join(choices(OutputRule))}; default {DEFAULT_TIED} (tied) — see docs/init.md",
    )
    p.add_argument(
        "--init-input",
        choices=choices(InputRule),
        default=None,
        metavar="RULE",
        help=f"untied models: rule of the input embedding's new rows ({', '.join(choices(InputRule))}; "
        f"default {DEFAULT_INPUT})",
    )
    p.add_argument(
        "--init-output",
        choices=choices(OutputRule),
        default=None,
        metavar="RULE",
        help=f"untied models: rule of the lm_head's new rows ({', '.join(choices(OutputRule))}; "
        f"default {DEFAULT_OUTPUT})",
    )
    add_vocab_output_arguments(p, mistakes=("same-tokenizer", "foreign-tokenizer"))
    add_revision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..swap import plan_swap, write_swap

    options = SwapOptions(
        model_dir=resolve(args.model, "--model", revision=args.revision),
        tokenizer_dir=resolve(args.tokenizer, "--tokenizer", revision=args.revision, what=TOKENIZER),
        out=args.out,
        init=args.init,
        init_input=args.init_input,
        init_output=args.init_output,
        **vocab_output_options(args),
    )
    plan = plan_swap(options)
    if args.dry_run:
        print(plan.figures().format())
        return 0
    rec = write_swap(plan)
    r = rec["result"]
    print(f"{args.out}: {r['tokens']:,} tokens in {r['rows']:,} rows ({r['rows_by_kind']}); record: ruadapt_swap.json")
    return 0
