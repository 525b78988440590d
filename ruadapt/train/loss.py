"""The next-token loss without the whole logits tensor in memory.

A causal LM's own loss (``model(**batch).loss``) materialises the logits of every position at once: for Qwen's
151,936-row vocabulary that is ``micro × block × 151,936 × 4`` bytes in float32 (1.2 GB at 4 × 512 tokens), and the
backward holds the log-softmax and two gradients of the same size. ``train.logits_mb`` (default 128) caps that: the
model runs with ``logits_to_keep=1`` and the loss is computed from its last hidden states a chunk of positions at a
time — as many as make ``logits_mb`` of float32 logits — each chunk under activation checkpointing, so only one
chunk's logits exist at any moment, in the forward and again in the backward, which recomputes them (one more
lm_head matmul, the trade Liger's and Apple's cut cross-entropy make). A micro-batch whose logits fit the budget is
computed in one piece without checkpointing: no recompute, the model's own cost (the demo's 16,000-row models).

The value is the model's own loss (mean over the positions whose label is not -100, labels shifted by one, logits in
float32, Gemma's final soft-capping applied); tests/test_loss.py checks the value and the gradients against
``model(**batch).loss`` on each architecture of vocab/archs.yaml.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _chunk_loss(
    head: torch.nn.Module, softcap: float | None, hidden: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy of one chunk of positions (the logits exist only inside this call)."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def chunked_next_token_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``labels`` (already aligned: position i predicts labels[i]),
    over the labels that are not -100; 0 (with a graph through the head) when there are none. ``hidden``: (..., d)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1).to(flat.device)
    keep = y != IGNORE
    h, y = flat[keep], y[keep]  # positions without a label cost no lm_head matmul at all
    fn = partial(_chunk_loss, head, softcap)
    if y.numel() == 0:  # still through the head, weight 0: every rank runs the same forward/backward under ZeRO
        return 0.0 * fn(flat[:1], torch.zeros(1, dtype=torch.long, device=flat.device))
    if y.numel() <= chunk_tokens:  # fits: one piece, nothing to recompute
        return fn(h, y) / y.numel()
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, y.numel(), chunk_tokens):
        total = total + checkpoint(fn, h[s : s + chunk_tokens], y[s : s + chunk_tokens], use_reentrant=False)
    return total / y.numel()


def final_softcap(model: Any) -> float | None:
    """Gemma 2/3's ``final_logit_softcapping`` (None for every other architecture ruadapt supports)."""
    text = model.config.get_text_config()
    return getattr(text, "final_logit_softcapping", None)


def chunk_tokens(logits_mb: float, rows: int) -> int:
    """Positions whose float32 logits over ``rows`` vocabulary rows take at most ``logits_mb`` MiB (at least 1);
    ``logits_mb`` 0: no limit (every position at once)."""
    if logits_mb <= 0:
        return 1 << 62
    return max(1, int(logits_mb * 2**20) // (4 * rows))


def lm_loss(engine, batch: dict[str, torch.Tensor], logits_mb: float = 128) -> torch.Tensor:
    """The next-token loss of every stage but ``distill``: the model's own loss with at most ``logits_mb`` MiB of
    float32 logits at a time (see the module docstring); ``logits_mb=0`` calls ``model(**batch).loss``."""
    if logits_mb <= 0:
        return engine(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = engine(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    module = getattr(engine, "module", engine)
    return chunked_next_token_loss(
        module.get_output_embeddings(),
        out.hidden_states[-1][:, :-1],
        batch["labels"][:, 1:],
        chunk_tokens(logits_mb, module.config.get_text_config().vocab_size),
        final_softcap(module),
    )
