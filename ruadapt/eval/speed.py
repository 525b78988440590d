"""Generation speed (docs/design.md §5): characters of Russian text produced per second, and tokens per second.

Every model gets the same prompts, the same number of new tokens M (EOS is suppressed until M so every run
does exactly M decoding steps), greedy decoding, batch 1, on the same device and dtype. Models run in one
process in alternating order (A B, then B A, ...) so drift in machine load hits all models alike; one warm-up
generation per model is run first and not counted. The time of a generation is the whole ``generate`` call
(prefill of the prompt + M steps).

chars/s = Σ chars / Σ seconds, tokens/s = Σ tokens / Σ seconds, chars/token = Σ chars / Σ tokens, so
tokens/s × chars/token = chars/s holds exactly.

Two modes:
- ``greedy``: the model's own greedy continuation; the characters are those of the decoded new tokens.
  Right for trained models.
- ``reference``: the continuation is forced to the model's own tokenization of a reference text (a logits
  processor leaves only the next reference token, then greedy picks it). Each step costs the same as free
  greedy decoding (full forward and full-vocabulary logits), but the text produced is real Russian whatever
  the weights: the way to measure a tokenizer's effect on speed with an untrained or freshly swapped body.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import RuadaptError
from .load import EvalModel

log = logging.getLogger(__name__)

MODES = ("greedy", "reference")


@dataclass
class Prompt:
    """A prompt and, for ``reference`` mode, the text the generation is forced to produce."""

    text: str
    continuation: str = ""


def split_prompts(lines: Sequence[str], n: int, prompt_chars: int = 200) -> list[Prompt]:
    """The first ``n`` lines as prompts, each cut at a word boundary near ``prompt_chars``; the rest of a line is
    its reference continuation."""
    out = []
    for line in lines[:n]:
        cut = line.rfind(" ", 0, prompt_chars) if len(line) > prompt_chars else len(line)
        cut = cut if cut > 0 else min(len(line), prompt_chars)
        out.append(Prompt(line[:cut], line[cut:]))
    return out


def select_prompts(lines: Sequence[str], models: Sequence[EvalModel], n: int, *, new_tokens: int, mode: str,
                   prompt_chars: int = 200) -> list[Prompt]:
    """``n`` prompts from ``lines``; in ``reference`` mode only lines whose continuation gives every model at
    least ``new_tokens`` tokens, so all models produce the same text span's worth of steps."""
    if mode != "reference":
        return split_prompts(lines, n, prompt_chars)
    out = []
    for p in split_prompts(lines, len(lines), prompt_chars):
        if all(len(em.tokenizer(p.continuation, add_special_tokens=False)["input_ids"]) >= new_tokens for em in models):
            out.append(p)
            if len(out) == n:
                break
    if not out:
        raise RuadaptError(f"--speed-mode reference: no prompt line is long enough for --new-tokens {new_tokens} "
                           f"after its first {prompt_chars} characters; give longer lines with --prompts")
    return out


class _ForceTokens:
    """Logits processor that leaves only the next token of a fixed sequence (reference mode)."""

    def __init__(self, prompt_len: int, forced: list[int]):
        self.prompt_len = prompt_len
        self.forced = forced

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        out = torch.full_like(scores, float("-inf"))
        out[:, self.forced[step]] = 0.0
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_once(em: EvalModel, prompt: Prompt, new_tokens: int, mode: str = "greedy") -> tuple[float, int, int, str]:
    """One timed greedy generation of exactly ``new_tokens`` tokens: (seconds, tokens, chars, text)."""
    from transformers import GenerationConfig, LogitsProcessorList

    tok = em.tokenizer
    ids = tok(prompt.text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:  # empty prompt: start from BOS/EOS
        ids = torch.tensor([[em.prefix_id]])
    processors = LogitsProcessorList()
    if mode == "reference":
        forced = tok(prompt.continuation, add_special_tokens=False)["input_ids"][:new_tokens]
        if len(forced) < new_tokens:
            raise RuadaptError(
                f"speed prompt {prompt.text[:40]!r}...: its continuation has only {len(forced)} tokens for model "
                f"{em.name}, fewer than --new-tokens {new_tokens}; use longer lines or fewer new tokens"
            )
        processors.append(_ForceTokens(ids.shape[1], forced))
    eos = tok.eos_token_id if tok.eos_token_id is not None else em.prefix_id
    config = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
    )
    ids = ids.to(em.device)
    with torch.inference_mode():
        _sync(em.device)
        t0 = time.perf_counter()
        out = em.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                logits_processor=processors)
        _sync(em.device)
        seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    return seconds, len(new), len(text), text


def measure_speed(models: Sequence[EvalModel], prompts: Sequence[Prompt], *, new_tokens: int = 64,
                  mode: str = "greedy", warmup: int = 1) -> dict:
    """Speed of every model on every prompt, models alternating order per prompt; see the module docstring."""
    if mode not in MODES:
        raise RuadaptError(f"--speed-mode {mode}: unknown; use {' or '.join(MODES)}")
    if not prompts:
        raise RuadaptError("speed: no prompts")
    for em in models:  # warm-up: allocator, kernels, caches; not counted
        for _ in range(warmup):
            generate_once(em, prompts[0], new_tokens, mode)
    totals = {em.name: {"seconds": 0.0, "tokens": 0, "chars": 0, "generations": 0} for em in models}
    order_log: list[list[str]] = []
    samples: dict[str, str] = {}
    bar = tqdm(total=len(prompts) * len(models), desc="speed", unit="gen", leave=False)
    for i, prompt in enumerate(prompts):
        order = list(models) if i % 2 == 0 else list(reversed(models))
        order_log.append([em.name for em in order])
        for em in order:
            seconds, tokens, chars, text = generate_once(em, prompt, new_tokens, mode)
            t = totals[em.name]
            t["seconds"] += seconds
            t["tokens"] += tokens
            t["chars"] += chars
            t["generations"] += 1
            samples.setdefault(em.name, text)
            bar.update(1)
    bar.close()
    first = models[0].name
    per_model = {}
    for name, t in totals.items():
        per_model[name] = {
            **t,
            "tokens_per_s": t["tokens"] / t["seconds"],
            "chars_per_s": t["chars"] / t["seconds"],
            "chars_per_token": t["chars"] / t["tokens"],
            "sample": samples.get(name, ""),
        }
    for name, r in per_model.items():
        r["chars_per_s_ratio"] = r["chars_per_s"] / per_model[first]["chars_per_s"]
        r["tokens_per_s_ratio"] = r["tokens_per_s"] / per_model[first]["tokens_per_s"]
    return {
        "mode": mode,
        "new_tokens": new_tokens,
        "prompts": len(prompts),
        "warmup_generations": warmup,
        "order": order_log,
        "baseline": first,
        "models": per_model,
    }
