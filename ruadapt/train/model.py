"""Build the model for a stage: which parameters train, and how (embeddings / LoRA / full).

The vocabulary matrices are found by name through the arch table (:func:`ruadapt.vocab.arch.arch_for_config`),
never by guessing module types. A tied model has one matrix: it appears once in ``named_parameters`` and is
trained once, so the tie holds by construction (no ``modules_to_save`` copies that would split it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import RuadaptError
from ..vocab.lora import PEFT_PREFIX
from .config import RunConfig, embedding_names

log = logging.getLogger(__name__)


def checkpoint_name(param_name: str) -> str:
    """A parameter's tensor name in the checkpoint (peft's wrapper prefix and ``base_layer`` removed)."""
    if param_name.startswith(PEFT_PREFIX):
        param_name = param_name[len(PEFT_PREFIX) :]
    return param_name.replace(".base_layer.", ".")


def load_model(cfg: RunConfig, dtype: torch.dtype):
    """``from_pretrained`` from safetensors only (under ZeRO-3 the caller has set HfDeepSpeedConfig first)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, use_safetensors=True)


def vocab_parameters(model: torch.nn.Module, model_dir: Path) -> dict[str, torch.nn.Parameter]:
    """checkpoint name -> parameter of embed_tokens (and the untied lm_head); an error if they are missing."""
    names, _tied = embedding_names(Path(model_dir))
    params = {checkpoint_name(n): p for n, p in model.named_parameters()}
    found = {n: params[n] for n in names if n in params}
    if names[0] not in found:
        raise RuadaptError(
            f"{model_dir}: the embedding {names[0]} named by the arch table is not a parameter of the loaded model"
        )
    return found


def mask_old_rows(param: torch.nn.Parameter, first_new: int) -> None:
    """Zero the gradient of rows below ``first_new``: with no weight decay on this matrix AdamW then leaves
    those rows exactly as they were (zero moments give a zero update)."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new] = 0
        return grad

    param.register_hook(hook)


def resolve_layers(layers: list[int], n_layers: int) -> list[int]:
    out = sorted({l % n_layers if l < 0 else l for l in layers})
    bad = [l for l in out if not 0 <= l < n_layers]
    if bad:
        raise RuadaptError(f"lora.layers {layers}: the model has {n_layers} layers")
    return out


def prepare_stage(model, cfg: RunConfig, zero_stage: int):
    """Freeze / wrap ``model`` for ``cfg.stage``; returns (model, {checkpoint name: trainable parameter})."""
    stage = cfg.stage
    if stage == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif stage == "embeddings":
        for p in model.parameters():
            p.requires_grad_(False)
        vocab = vocab_parameters(model, Path(cfg.model))
        for p in vocab.values():
            p.requires_grad_(True)
        if cfg.embeddings.new_rows_only:
            if zero_stage >= 3:
                raise RuadaptError(
                    f"{cfg.source}: embeddings.new_rows_only needs ZeRO stage 0-2 (the gradient mask "
                    "acts on the whole matrix); use a ZeRO-2 config, e.g. the recipes' zero2.json"
                )
            for p in vocab.values():
                mask_old_rows(p, cfg.embeddings.new_rows_from)
    elif stage == "distill":  # the vocabulary's new input rows (+ lm_head rows); see ruadapt/train/distill.py
        from .distill import prepare_distill

        prepare_distill(model, cfg, zero_stage, vocab_parameters(model, Path(cfg.model)))
    elif stage == "lora":
        from peft import LoraConfig, get_peft_model

        lc = cfg.lora
        n_layers = model.config.get_text_config().num_hidden_layers
        layers = resolve_layers(lc.layers, n_layers) if lc.layers else None
        peft_cfg = LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=list(lc.targets),
            layers_to_transform=layers,
            bias="none",
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(cfg.train.seed)  # LoRA A init independent of how loading used the RNG (ZeRO-3 does)
        try:
            model = get_peft_model(model, peft_cfg)
        except ValueError as e:
            raise RuadaptError(f"{cfg.source}: lora.targets {lc.targets}: {' '.join(str(e).split())[:200]}") from None
        if lc.train_embeddings:
            for p in vocab_parameters(model, Path(cfg.model)).values():
                p.requires_grad_(True)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = {checkpoint_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise RuadaptError(f"{cfg.source}: stage {stage} left no parameter to train")
    return model, trainable


def param_groups(trainable: dict[str, torch.nn.Parameter], cfg: RunConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices; none on norms/biases, nor on masked embeddings (see mask_old_rows)."""
    vocab = set(embedding_names(Path(cfg.model))[0])
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in trainable.items():
        masked = (cfg.embeddings.new_rows_only or cfg.stage == "distill") and name in vocab
        ndim = len(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 partition is stored flat: ask for the real shape
        (decay if ndim >= 2 and not masked else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def lr_lambda(cfg: RunConfig):
    """Warmup then cosine/linear/constant decay to ``min_lr_ratio`` (a picklable-free closure for LambdaLR)."""
    import math

    t = cfg.train
    total, warm, floor = t.max_steps, t.warmup_steps, t.min_lr_ratio

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if t.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if t.scheduler == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return f
