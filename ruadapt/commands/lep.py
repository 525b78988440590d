"""``ruadapt lep --base B --instruct I --adapted A --out O``"""

from __future__ import annotations

import argparse

from ..io.hub import resolve
from ..options import LepMethod, LepOptions
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
        "lep",
        help="Learned Embedding Propagation: put the adapted base's new embeddings into the instruct model",
        description="Fit d×d maps (float64, streamed over row chunks) from the base's vocabulary rows to the "
        "instruct model's, apply them to the adapted base's rows and write the instruct model with the new "
        "vocabulary: body, norms and chat-token rows are the instruct model's; tokenizer = the adapted one with "
        "the instruct chat template. Writes ruadapt_lep.json (residuals, conditioning, row norms, timings).",
        examples="ruadapt lep --base ./Qwen2.5-7B --instruct ./Qwen2.5-7B-Instruct --adapted ./runs/cpt --out "
        "./runs/lep\n"
        "ruadapt lep --base Qwen/Qwen2.5-7B --instruct Qwen/Qwen2.5-7B-Instruct --adapted ./runs/cpt --out ./runs/lep  "
        " # Hub repo ids\n"
        "ruadapt lep --base B --instruct I --adapted A --out O --method overlap\n"
        "ruadapt lep --base B --instruct I --adapted A --out O --lora-deltas ./runs/cpt-lora --alpha-scale 2\n"
        "ruadapt lep --base B --instruct I --adapted A --out O --dry-run   # the plan only: no fit, nothing written",
    )
    p.add_argument(
        "--base",
        type=model_arg,
        required=True,
        help="the original base model directory (B); a directory or a Hub repo id",
    )
    p.add_argument(
        "--instruct",
        type=model_arg,
        required=True,
        help="the instruct model of that base (I); a directory or a Hub repo id",
    )
    p.add_argument(
        "--adapted",
        type=model_arg,
        required=True,
        help="the swapped (and continued-pretrained) base (A); a directory or a Hub repo id",
    )
    p.add_argument("--out", type=path_arg, required=True, help="new output directory")
    p.add_argument(
        "--method",
        choices=choices(LepMethod),
        default="conversion",
        help="rows that fit W: conversion = T·E over the new vocabulary; overlap = tokens in both; swap = W is the "
        "identity",
    )
    p.add_argument(
        "--lora-deltas",
        type=model_arg,
        default=None,
        metavar="PEFT_DIR",
        help="peft LoRA adapter (safetensors) trained on the base's body during CPT: add its deltas to I's body",
    )
    p.add_argument("--alpha-scale", type=float, default=1.0, metavar="S", help="divide the LoRA deltas by S")
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="rows per chunk of the streamed fit and apply; default: about 512 MiB of float64 per chunk (2,048 rows "
        "for an untied d=8192 model)",
    )
    add_vocab_output_arguments(
        p, mistakes=("same-model", "adapted-is-base"), pad=False, shard_default="the largest shard of --instruct"
    )
    add_revision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lep import plan_lep, write_lep

    rev = args.revision
    plan = plan_lep(
        LepOptions(
            base=resolve(args.base, "--base", revision=rev),
            instruct=resolve(args.instruct, "--instruct", revision=rev),
            adapted=resolve(args.adapted, "--adapted", revision=rev),
            out=args.out,
            method=args.method,
            lora_deltas=None if args.lora_deltas is None else resolve(args.lora_deltas, "--lora-deltas", revision=rev),
            alpha_scale=args.alpha_scale,
            chunk_rows=args.chunk_rows,
            **vocab_output_options(args),
        )
    )
    if args.dry_run:
        print(plan.figures().format())
        return 0
    rec = write_lep(plan)
    r = rec["result"]
    fits = ", ".join(
        f"{f['tensor']}: {f['rows']:,} rows, residual {f['relative_residual']:.3g}" for f in r["fits"].values()
    )
    print(f"{args.out}: {r['method']} ({fits or 'identity'}); record: ruadapt_lep.json")
    return 0
