"""``ruadapt gguf --model DIR --llama-cpp SRC --out X.gguf [--outtype T] [--pre NAME] [--verify-text FILE ...]``"""

from __future__ import annotations

import argparse
import json

from ..options import GgufOptions, GgufOutType
from . import add_dry_run, add_parser, choices, path_arg


def register(sub: argparse._SubParsersAction) -> None:

    p = add_parser(
        sub,
        "gguf",
        help="convert a model to GGUF for llama.cpp / Ollama / LM Studio (with llama.cpp's own converter)",
        description="Runs llama.cpp's convert_hf_to_gguf.py from --llama-cpp in a child process, telling it the "
        "base's pre-tokenizer name (qwen2, llama-bpe, tekken, ...), which its check-text hash cannot find for a "
        "replaced or trimmed vocabulary (--pre, else ruadapt's table keyed by the tokenizer's normalizer + "
        "pre-tokenizer). Before the file is renamed into place it is read back and compared with the model: "
        "pre-tokenizer name, the token string of every id, merges, rows, special ids; with --verify-text and "
        "llama-cpp-python installed also the ids of every line and the logits of a few lines against "
        "transformers. Writes OUT and OUT.ruadapt_gguf.json.",
        examples="""
pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d . && tar xzf llama_cpp_python-0.3.36.tar.gz
ruadapt gguf --model ./qwen-ru-lep --llama-cpp ./llama_cpp_python-0.3.36 --out qwen-ru-f16.gguf --outtype f16
ruadapt gguf --model ./qwen-trim --llama-cpp ~/src/llama.cpp --out qwen-trim.gguf --verify-text ru_eval.txt en_eval.txt
ruadapt gguf --model ./my-model --llama-cpp ~/src/llama.cpp --out my.gguf --pre llama-bpe   # name given by hand
ruadapt gguf --model ./qwen-ru-lep --llama-cpp ~/src/llama.cpp --out qwen-ru.gguf --dry-run   # the plan only
""",
    )
    p.add_argument(
        "--model",
        type=path_arg,
        required=True,
        help="Hugging Face model directory (config.json, safetensors, tokenizer.json)",
    )
    p.add_argument(
        "--llama-cpp",
        type=path_arg,
        required=True,
        metavar="SRC",
        help="llama.cpp checkout, or an unpacked llama-cpp-python sdist (its vendor/llama.cpp is used)",
    )
    p.add_argument("--out", type=path_arg, required=True, help="GGUF file to write (must not exist unless --overwrite)")
    p.add_argument(
        "--outtype",
        choices=choices(GgufOutType),
        default="auto",
        help="tensor type, as the converter's --outtype (auto: the highest-fidelity 16-bit type)",
    )
    p.add_argument(
        "--pre",
        metavar="NAME",
        help="llama.cpp pre-tokenizer name to write (default: from ruadapt's table for the tokenizer's normalizer + "
        "pre-tokenizer)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (whole, on success only)")
    p.add_argument(
        "--verify-text",
        type=path_arg,
        nargs="+",
        default=[],
        metavar="FILE",
        help="UTF-8 texts (a document per line) tokenized by llama.cpp and transformers: every line must give the same "
        "ids (needs llama-cpp-python)",
    )
    p.add_argument(
        "--verify-lines",
        type=int,
        metavar="N",
        help="use only the first N lines of the --verify-text files (default: all)",
    )
    p.add_argument(
        "--logit-lines",
        type=int,
        default=3,
        metavar="N",
        help="with --verify-text: compare logits (float32 model in transformers) on the first N lines; 0: none",
    )
    p.add_argument(
        "--logits-tolerance",
        type=float,
        metavar="X",
        help="largest |logit difference| accepted (default: 0.01 for --outtype f32; for 16-bit and quantized types the "
        "difference is only recorded)",
    )
    add_dry_run(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..llamacpp.export import plan_gguf, record_path, write_gguf

    plan = plan_gguf(
        GgufOptions(
            model_dir=args.model,
            llama_cpp=args.llama_cpp,
            out=args.out,
            outtype=args.outtype,
            pre=args.pre,
            overwrite=args.overwrite,
            verify_texts=tuple(args.verify_text),
            verify_lines=args.verify_lines,
            logit_lines=args.logit_lines,
            logits_tolerance=args.logits_tolerance,
        )
    )
    if args.dry_run:
        print(plan.figures().format())
        return 0
    data = write_gguf(plan)
    r = data["result"]
    print(
        f"{args.out}: {r['gguf']['tokens']} tokens, {r['gguf']['rows']} rows, pre-tokenizer {r['pre']['name']!r} "
        f"({r['pre']['source']}); record in {record_path(args.out)}"
    )
    summary = {k: r[k] for k in ("verify_ids", "verify_logits") if k in r}
    if summary:
        print(json.dumps(summary))
    return 0
