"""Multiply-accumulates of one decoding step, from a model's config: the cost a speed measurement must match.

A measured tokens/s ratio between two models is only believable when it agrees with what their arithmetic
predicts: a model whose lm_head is 31 % larger cannot decode faster on the same body. At batch 1 a decoding step
reads every weight once and does one MAC per weight, so MACs (and bytes read) per step are what the step time
follows, plus whatever the MACs do not count (norms, activations, Python and kernel-launch overhead; these make
small models' ratios closer to 1 than predicted).

Counted per step, for the Llama-style decoders ruadapt adapts (Llama, Mistral, Qwen2/3, Gemma 2/3: gated MLP,
grouped-query attention):
- per layer: q and o projections (hidden × heads·head_dim each), k and v (hidden × kv_heads·head_dim each),
  MLP gate, up and down (hidden × intermediate each);
- per layer, attention over the context: q·kᵀ and the weighted sum of v, heads·head_dim MACs per position
  each; a sliding-window layer (``layer_types`` of the config; without them every layer is counted as full
  attention) sees at most ``sliding_window`` positions;
- the lm_head: its real rows (the checkpoint's, padding included) × hidden.
The input embedding is a row lookup, not a matmul, and is not counted; nor are biases and norms.
"""

from __future__ import annotations

from typing import Any


def macs_per_token(config: Any, lm_head_rows: int, context: float) -> dict[str, float]:
    """MACs of one decoding step attending to ``context`` positions (the new token included): the parts and
    their ``total``. ``config`` is a transformers config (a multimodal one is reduced to its text config)."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = c.hidden_size, c.num_hidden_layers
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    attn_proj = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * c.intermediate_size
    types = getattr(c, "layer_types", None) or ["full_attention"] * layers
    window = getattr(c, "sliding_window", None)
    seen = [min(context, window) if t == "sliding_attention" and window else context for t in types[:layers]]
    parts = {
        "layers": float(layers * (attn_proj + mlp)),
        "attention": float(2 * heads * head_dim * sum(seen)),
        "lm_head": float(lm_head_rows * hidden),
    }
    return {**parts, "total": sum(parts.values())}
