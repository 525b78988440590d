"""Run a written GGUF in llama.cpp (llama-cpp-python) next to transformers: ids per line, logits on a few lines.

The structural check (:mod:`.readback`) proves the file holds the right vocabulary; this proves llama.cpp
*uses* it as transformers does — its pre-tokenizer for the name given, its BPE on the merges — and that the
weights came through. Optional: it needs ``llama_cpp`` (a C++ build) and, for logits, the model in float32.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import RuadaptError

log = logging.getLogger(__name__)

LOGIT_TOKENS = 64  # tokens per line whose logits are compared


def have_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def read_lines(paths: list[Path], max_lines: int | None = None) -> list[str]:
    """Non-empty lines of UTF-8 texts (one document per line)."""
    lines: list[str] = []
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RuadaptError(f"{p}: --verify-text must be a readable UTF-8 text file ({e})") from None
        lines.extend(x for x in text.splitlines() if x.strip())
    return lines[:max_lines] if max_lines else lines


def compare_ids(gguf_path: Path, model_dir: Path, lines: list[str]) -> dict[str, Any]:
    """Tokenize every line with llama.cpp and with transformers (no BOS/EOS; added tokens recognised by both)."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    want = hf(lines, add_special_tokens=False)["input_ids"]
    differing, first = 0, None
    for line, w in zip(lines, want):
        got = llm.tokenize(line.encode("utf-8"), add_bos=False, special=True)
        if got != w:
            differing += 1
            if first is None:
                k = next((k for k, (a, b) in enumerate(zip(got, w)) if a != b), min(len(got), len(w)))
                first = {"line": line[:200], "position": k, "llama_cpp": got[k : k + 5], "transformers": w[k : k + 5]}
    llm.close()
    return {"lines": len(lines), "lines_differing": differing, "first_difference": first, "tokens": sum(map(len, want))}


def compare_logits(gguf_path: Path, model_dir: Path, lines: list[str]) -> dict[str, Any]:
    """Max |logit difference| between llama.cpp and transformers (float32) on the first ``LOGIT_TOKENS`` ids of
    each line, with the special tokens the tokenizer adds (the same ids go into both)."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    import llama_cpp

    # float32 KV cache: llama.cpp's default f16 cache alone moves logits by ~1e-2 (4e-6 with f32 on tiny models)
    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=LOGIT_TOKENS + 8,
        n_batch=LOGIT_TOKENS + 8,
        logits_all=True,
        verbose=False,
        n_threads=max(1, min(8, os.cpu_count() or 1)),
        flash_attn=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )
    worst, agree, total = 0.0, 0, 0
    for line in lines:
        ids = hf(line)["input_ids"][:LOGIT_TOKENS]
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].float().numpy()
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)[:, : want.shape[1]]
        worst = max(worst, float(np.abs(got - want).max()))
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(ids)
    llm.close()
    return {"lines": len(lines), "tokens": total, "max_abs_diff": worst, "argmax_agreement": agree / max(total, 1)}
