"""Generation speed (docs/design.md §5): characters of Russian text produced per second, and tokens per second.

Every model gets the same prompts, the same number of new tokens M (EOS is suppressed until M so every run
does exactly M decoding steps), greedy decoding, batch 1, on the same device and dtype. One warm-up generation
per model is run first and not counted. Then ``rounds`` rounds: each round runs every prompt once on every
model, the order of the models rotating from one generation to the next (A B, B A, ... across rounds too), so
drift in machine load hits all models alike. One timing on a shared machine can be off by tens of per cent
(issue 16: the same bench gave 1.44× and 1.77×), so every figure is the median over rounds and comes with its
spread and per-round values; a ratio to the first model is the median of per-round ratios (both models timed in
the same round, under the same load).

Three rates per model and round: tokens/s and chars/s of the whole ``generate`` call (prefill of the prompt + M
steps; chars/s = Σ chars / Σ seconds, tokens/s = Σ tokens / Σ seconds, so tokens/s × chars/token = chars/s), and
decode tokens/s: the M − 1 decoding steps after the first token alone, timed inside ``generate`` by a logits
processor that notes when each step's logits arrive. A decoding step's cost is what the MAC count predicts
(:mod:`ruadapt.eval.macs`, at the mean context of the measured steps), so the decode ratio is checked against
``mac_ratio`` and a disagreement beyond the spread is reported as a warning.

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
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast, get_args

import torch
from tqdm.auto import tqdm

from ..errors import RuadaptError
from ..options import SpeedMode
from .load import EvalModel
from .macs import macs_per_token

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = get_args(SpeedMode)


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


def select_prompts(
    lines: Sequence[str], models: Sequence[EvalModel], n: int, *, new_tokens: int, mode: str, prompt_chars: int = 200
) -> list[Prompt]:
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
        raise RuadaptError(
            f"--speed-mode reference: no prompt line is long enough for --new-tokens {new_tokens} "
            f"after its first {prompt_chars} characters; give longer lines with --prompts"
        )
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
        return cast(torch.FloatTensor, out)  # full_like keeps the float dtype; torch types it as Tensor


class _StepClock:
    """Logits processor that only notes the time of each call: generate calls it once per decoding step, after
    that step's forward pass, so the gap from its first call to its last is the time of the decoding steps
    alone, without the prefill of the prompt (what the MAC count of one step predicts)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _sync(self.device)
        self.times.append(time.perf_counter())
        return scores


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Generation:
    """One timed generation: the whole ``generate`` call and, inside it, the decoding steps after the first token."""

    seconds: float  # the whole call: prefill + every step
    tokens: int
    chars: int
    text: str
    prompt_tokens: int
    decode_seconds: float  # from the first token's logits to the last token's: tokens − 1 decoding steps


def generate_once(em: EvalModel, prompt: Prompt, new_tokens: int, mode: str = "greedy") -> Generation:
    """One timed greedy generation of exactly ``new_tokens`` tokens."""
    from transformers import GenerationConfig, LogitsProcessorList

    tok = em.tokenizer
    ids = tok(prompt.text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:  # empty prompt: start from BOS/EOS
        ids = torch.tensor([[em.prefix_id]])
    clock = _StepClock(em.device)
    processors = LogitsProcessorList([clock])
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
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
    )
    ids = ids.to(em.device)
    with torch.inference_mode():
        _sync(em.device)
        t0 = time.perf_counter()
        out = em.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, logits_processor=processors
        )
        _sync(em.device)
        seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1] :].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    return Generation(seconds, len(new), len(text), text, ids.shape[1], clock.times[-1] - clock.times[0])


RATES = ("tokens_per_s", "chars_per_s", "decode_tokens_per_s")
AGREEMENT = (0.8, 1.25)  # measured ÷ predicted decode ratio outside this in every round: a warning


def spread(values: Sequence[float]) -> dict[str, float]:
    """Min, max and the half-range relative to the median (``rel``: 0.031 is shown as ±3.1 %)."""
    mid = statistics.median(values)
    return {"min": min(values), "max": max(values), "rel": (max(values) - min(values)) / 2 / mid if mid else math.inf}


def measure_speed(
    models: Sequence[EvalModel],
    prompts: Sequence[Prompt],
    *,
    new_tokens: int = 64,
    mode: str = "greedy",
    warmup: int = 1,
    rounds: int = 5,
) -> dict:
    """Speed of every model over ``rounds`` rounds of every prompt; see the module docstring.

    Per model: ``tokens_per_s``, ``chars_per_s``, ``decode_tokens_per_s`` and their ``*_ratio`` to the first model
    are medians over rounds (a ratio is the median of the per-round ratios, both models timed in the same round),
    each with ``*_rounds`` (the per-round values) and ``*_spread`` (:func:`spread`); ``mac_ratio`` is the decode
    ratio the MAC count predicts (:mod:`ruadapt.eval.macs`), and ``warnings`` lists models whose measured decode
    ratio disagrees with it in every round."""
    if mode not in MODES:
        raise RuadaptError(f"--speed-mode {mode}: unknown; use {' or '.join(MODES)}")
    if not prompts:
        raise RuadaptError("speed: no prompts")
    if rounds < 1:
        raise RuadaptError(f"--speed-rounds {rounds}: must be at least 1")
    if new_tokens < 2:
        raise RuadaptError(
            f"--new-tokens {new_tokens}: the speed test needs at least 2 (decoding steps are timed "
            "between the first token and the last)"
        )
    for em in models:  # warm-up: allocator, kernels, caches; not counted
        for _ in range(warmup):
            generate_once(em, prompts[0], new_tokens, mode)
    keys = ("seconds", "tokens", "chars", "generations", "decode_seconds", "decode_steps", "prompt_tokens")
    per_round: dict[str, list[dict[str, float]]] = {
        em.name: [dict.fromkeys(keys, 0) for _ in range(rounds)] for em in models
    }
    order_log: list[list[str]] = []
    samples: dict[str, str] = {}
    bar = tqdm(total=rounds * len(prompts) * len(models), desc="speed", unit="gen", leave=False)
    for r in range(rounds):
        for i, prompt in enumerate(prompts):
            k = (r * len(prompts) + i) % len(models)  # rotate: every model in every position equally often
            order = list(models[k:]) + list(models[:k])
            order_log.append([em.name for em in order])
            for em in order:
                g = generate_once(em, prompt, new_tokens, mode)
                t = per_round[em.name][r]
                for key, value in (
                    ("seconds", g.seconds),
                    ("tokens", g.tokens),
                    ("chars", g.chars),
                    ("generations", 1),
                    ("decode_seconds", g.decode_seconds),
                    ("decode_steps", g.tokens - 1),
                    ("prompt_tokens", g.prompt_tokens),
                ):
                    t[key] += value
                samples.setdefault(em.name, g.text)
                bar.update(1)
    bar.close()
    first = models[0].name
    rates = {
        name: {
            "tokens_per_s": [t["tokens"] / t["seconds"] for t in ts],
            "chars_per_s": [t["chars"] / t["seconds"] for t in ts],
            "decode_tokens_per_s": [t["decode_steps"] / t["decode_seconds"] for t in ts],
        }
        for name, ts in per_round.items()
    }
    per_model = {}
    for em in models:
        ts = per_round[em.name]
        total = {k: sum(t[k] for t in ts) for k in keys}
        # decoding step j (j = 2..M) attends to prompt + j − 1 positions: prompt + M/2 on average
        context = total["prompt_tokens"] / total["generations"] + new_tokens / 2
        s: dict[str, Any] = {k: total[k] for k in keys if k != "prompt_tokens"}
        s["chars_per_token"] = total["chars"] / total["tokens"]
        for rate in RATES:
            values = rates[em.name][rate]
            ratios = [v / b for v, b in zip(values, rates[first][rate])]
            s.update(
                {
                    rate: statistics.median(values),
                    f"{rate}_spread": spread(values),
                    f"{rate}_rounds": values,
                    f"{rate}_ratio": statistics.median(ratios),
                    f"{rate}_ratio_spread": spread(ratios),
                    f"{rate}_ratio_rounds": ratios,
                }
            )
        s["mean_context"] = context
        s["macs_per_step"] = macs_per_token(em.model.config, _lm_head_rows(em), context)
        s["sample"] = samples.get(em.name, "")
        per_model[em.name] = s
    warnings = []
    for name, s in per_model.items():
        s["mac_ratio"] = per_model[first]["macs_per_step"]["total"] / s["macs_per_step"]["total"]
        measured, rng = s["decode_tokens_per_s_ratio"], s["decode_tokens_per_s_ratio_spread"]
        # even the round closest to the prediction is off by more than AGREEMENT allows
        if rng["min"] / s["mac_ratio"] > AGREEMENT[1] or rng["max"] / s["mac_ratio"] < AGREEMENT[0]:
            warnings.append(
                f"per-step ratio disagrees with the MAC count: {name} decodes at {measured:.3f}× {first}'s tokens/s "
                f"(rounds {rng['min']:.3f}–{rng['max']:.3f}) but its MACs per step predict {s['mac_ratio']:.3f}×: "
                "the timing is noise (a busy machine) or the models differ in more than their arithmetic "
                "(dtype, attention kernel, or per-step overhead that dominates a small model)"
            )
            log.warning("%s", warnings[-1])
    return {
        "mode": mode,
        "new_tokens": new_tokens,
        "prompts": len(prompts),
        "rounds": rounds,
        "warmup_generations": warmup,
        "order": order_log,
        "baseline": first,
        "models": per_model,
        "warnings": warnings,
    }


def _lm_head_rows(em: EvalModel) -> int:
    """Rows of the output matrix as loaded (the checkpoint's, padding included); the input rows when there is
    no separate output layer."""
    head = em.model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else em.rows
