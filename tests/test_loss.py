"""The chunked next-token loss (ruadapt/train/loss.py) is the model's own loss: the same value and the same gradients
as ``model(**batch).loss`` — which computes every position's logits at once — on every architecture ruadapt
supports, tied and untied, with padding labels (-100), Gemma's final soft-capping, and chunk sizes that do and do
not divide the number of positions."""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHS, seeded_model, tiny_config

from ruadapt.train.loss import chunk_tokens, chunked_next_token_loss, final_softcap, lm_loss

ROWS = 300


def tiny(model_type: str, tied: bool) -> torch.nn.Module:
    extra = {"final_logit_softcapping": 3.0} if model_type.startswith("gemma") else {}  # bends these logits (std ≈ 4)
    config = tiny_config(model_type, rows=ROWS, positions=64, tie_word_embeddings=tied, pad_token_id=0, **extra)
    return seeded_model(config, dtype=torch.float64)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, ROWS, (3, 21), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # right padding, as the SFT collator writes it
    labels = ids.masked_fill(mask == 0, -100)
    labels[2, :9] = -100  # a prompt that is not trained on
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_equals_the_models_own_loss_and_gradients(model_type, tied):
    model = tiny(model_type, tied)
    b = batch()
    ref = model(**b).loss
    ref_grads = grads(model, ref)
    assert (final_softcap(model) is not None) == model_type.startswith("gemma")
    for chunk in (1, 7, 4096):  # 4096: all positions in one piece, without checkpointing
        mb = chunk * 4 * ROWS / 2**20  # the budget that gives chunks of `chunk` positions
        assert chunk_tokens(mb, ROWS) == chunk
        got = lm_loss(model, b, logits_mb=mb)
        # both paths cast the logits to float32 (as transformers' loss does), so they agree to float32's precision
        assert torch.allclose(got, ref, rtol=1e-6, atol=0), (chunk, got.item(), ref.item())
        got_grads = grads(model, got)
        assert got_grads.keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            assert torch.allclose(got_grads[name], g, rtol=1e-5, atol=1e-7), (chunk, name)
    assert lm_loss(model, b, logits_mb=0).item() == ref.item()  # 0: the model's own path


def test_no_labelled_position_gives_zero_with_a_graph_through_the_head():
    """A micro-batch whose labels are all -100 (a prompt longer than the block) still runs the head forward and
    backward, with zero gradients: under ZeRO every rank must run the same collectives."""
    model = tiny("qwen2", False)
    hidden = torch.randn(2, 5, 16, dtype=torch.float64)
    loss = chunked_next_token_loss(model.lm_head, hidden, torch.full((2, 5), -100), 4)
    assert loss.item() == 0.0
    loss.backward()
    assert model.lm_head.weight.grad is not None and not model.lm_head.weight.grad.any()
