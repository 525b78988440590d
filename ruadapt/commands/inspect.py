"""``ruadapt inspect DIR``"""

from __future__ import annotations

import argparse
import json

from ..io.hub import resolve
from . import add_parser, add_revision, model_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "inspect",
        help="describe a checkpoint's vocabulary layout (headers only, seconds even for 72B)",
        description="Show model_type, dtype, hidden size, tie setting, config.vocab_size vs matrix rows vs "
        "len(tokenizer), special tokens, chat template, shards. Reads no tensor data.",
        examples="ruadapt inspect ./Qwen2.5-7B\nruadapt inspect ./Qwen2.5-7B --json > layout.json\n"
        "ruadapt inspect Qwen/Qwen2.5-7B --revision main   # a Hub repo id: fetched into the HF cache (no weights "
        "read)",
    )
    p.add_argument(
        "model",
        type=model_arg,
        help="Hugging Face model directory (safetensors), or a Hub repo id such as Qwen/Qwen2.5-7B",
    )
    add_revision(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inspect import format_report, inspect_model

    info = inspect_model(resolve(args.model, "MODEL", revision=args.revision))
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_report(info))
    return 0
