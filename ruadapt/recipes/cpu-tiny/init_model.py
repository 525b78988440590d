"""A freshly initialised (random, seeded) Qwen2 model carrying a given tokenizer: the demo's base model
before it is pretrained from scratch on CPU.

    python init_model.py --tokenizer DIR --out DIR [--hidden 192] [--layers 4] [--heads 4] [--tied] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ruadapt.io.outdir import atomic_output_dir
from ruadapt.io.tokdir import TOKENIZER_FILES
from ruadapt.vocab.arch import padded_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-positions", type=int, default=1024)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    ids = lambda t: tok.convert_tokens_to_ids(t) if t else None  # noqa: E731
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=padded_rows(len(tok), 64),
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=args.max_positions,
        tie_word_embeddings=args.tied,
        bos_token_id=ids(tok.bos_token) or ids("<|endoftext|>"),
        eos_token_id=ids(tok.eos_token),
        pad_token_id=ids(tok.pad_token),
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with atomic_output_dir(args.out, [args.tokenizer]) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (args.tokenizer / name).is_file():
                shutil.copyfile(args.tokenizer / name, tmp / name)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"{args.out}: qwen2 hidden {args.hidden} x {args.layers} layers, {len(tok)} tokens / {config.vocab_size} rows, "
        f"{n:,} parameters"
    )


if __name__ == "__main__":
    main()
