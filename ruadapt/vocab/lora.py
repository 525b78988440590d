"""The one LoRA merge of ruadapt: a peft LoRA adapter added to a checkpoint's weights, one tensor at a time.

Used by the train export (``lora.merge``) and by ``ruadapt lep --lora-deltas``. Each merged weight is
``W + s·(B·A)`` computed in float32 and cast back to W's dtype, with ``s = lora_alpha / r`` (or
``lora_alpha / √r`` with ``use_rslora``), ``r`` and ``lora_alpha`` resolved per module from ``rank_pattern`` and
``alpha_pattern`` exactly as peft does (:func:`pattern_value`). The result is what peft's ``merge_and_unload``
gives, without loading the model: :func:`merge_replacements` returns zero-argument callables for
:func:`ruadapt.io.checkpoint.write_with_replacements`, which calls each one only when its shard is written, so
memory holds one merged weight (plus its A and B), never the body (≈ 140 GB for a 72B model in bf16).

What this cannot merge exactly is refused with a one-line error before any output exists: DoRA, fan_in_fan_out
(Conv1D) layers, LoRA biases, embedding LoRA, non-LORA peft types, shapes that do not fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import RuadaptError
from ..io.checkpoint import CheckpointReader, read_json
from ..io.record import sha256_file

# how peft prefixes module names in a saved adapter (PeftModel -> LoraModel -> the transformers model)
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PARTS = ("lora_A", "lora_B")
MERGE_BLOCK_BYTES = 256 * 1024**2


def pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """peft's per-module override (peft 0.21 ``utils.other.get_pattern_key``): the first key, in the pattern's
    order, such that ``module`` matches the regex ``(.*\\.)?(key)$``; ``default`` when none does. ``module`` is
    the name inside the transformers model (``model.layers.0.self_attn.q_proj``), as peft matches it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear layer: its weight in the checkpoint, its A/B tensors in the adapter, r, alpha, scaling."""

    module: str
    target: str
    key_a: str
    key_b: str
    r: int
    alpha: float
    scaling: float


@dataclass
class LoraAdapter:
    """A peft LoRA adapter on disk: config, weights file and its modules by checkpoint weight name."""

    path: Path
    weights: Path
    config: dict
    modules: dict[str, LoraModule]

    def summary(self) -> dict:
        return {
            "adapter": str(self.path),
            "r": self.config.get("r"),
            "lora_alpha": self.config.get("lora_alpha"),
            "use_rslora": bool(self.config.get("use_rslora")),
            "rank_pattern": self.config.get("rank_pattern") or {},
            "alpha_pattern": self.config.get("alpha_pattern") or {},
            "sha256": sha256_file(self.weights),
        }


def adapter_dir(path: Path) -> Path:
    """``path`` itself, or its ``adapter/`` folder (where a `ruadapt train` LoRA output keeps the adapter)."""
    path = Path(path).expanduser()
    if not (path / ADAPTER_CONFIG).is_file() and (path / "adapter" / ADAPTER_CONFIG).is_file():
        return path / "adapter"
    return path


def read_adapter(path: Path) -> LoraAdapter:
    """Read and check a peft LoRA adapter dir (config + safetensors header only; no tensor is loaded)."""
    path = adapter_dir(path)
    cfg_path, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise RuadaptError(f"{cfg_path}: not found; a peft LoRA adapter directory holds {ADAPTER_CONFIG}")
    if not weights.is_file():
        raise RuadaptError(f"{weights}: not found; LoRA adapters are read as safetensors only")
    cfg = read_json(cfg_path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RuadaptError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LORA adapters can be merged")
    for key, what in (
        ("use_dora", "DoRA adapters (the magnitude vector needs the merged weight's norms)"),
        ("fan_in_fan_out", "fan_in_fan_out adapters (Conv1D models)"),
        ("lora_bias", "adapters with LoRA biases"),
        ("target_parameters", "adapters on nn.Parameter targets (target_parameters)"),
    ):
        if cfg.get(key):
            raise RuadaptError(f"{cfg_path}: {what} are not supported by ruadapt's LoRA merge")
    r0, alpha0, rslora = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8)), bool(cfg.get("use_rslora"))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    try:
        with safe_open(weights, framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:
        raise RuadaptError(f"{weights}: not a readable safetensors file ({e})") from None
    found: dict[str, dict[str, str]] = {}
    for key in keys:
        if ".lora_embedding_" in key or ".lora_magnitude_vector" in key:
            raise RuadaptError(
                f"{weights}: {key} is an embedding/DoRA LoRA tensor; ruadapt merges LoRA on linear layers only"
            )
        for part in _PARTS:
            marker = f".{part}."
            if marker in key:
                found.setdefault(key.split(marker)[0], {})[part] = key
    if not found:
        raise RuadaptError(f"{weights}: no lora_A/lora_B tensors found")
    modules = {}
    for name, parts in sorted(found.items()):
        if set(parts) != set(_PARTS):
            raise RuadaptError(f"{weights}: {name} has only {', '.join(parts)}")
        module = name.removeprefix(PEFT_PREFIX)
        r = int(pattern_value(rank_pattern, module, r0))
        alpha = float(pattern_value(alpha_pattern, module, alpha0))
        scaling = alpha / (math.sqrt(r) if rslora else r)
        modules[module + ".weight"] = LoraModule(
            module, module + ".weight", parts["lora_A"], parts["lora_B"], r, alpha, scaling
        )
    return LoraAdapter(path, weights, cfg, modules)


def merged_weight(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``W + scaling·(B·A)``, every element summed in float32 and rounded once to W's dtype, written into ``w``
    (overwritten: the caller's own copy) over row blocks of ~256 MiB float32. Merging a 29,568 × 8,192 bf16
    weight then needs W and one block (0.7 GB), not float32 copies of the whole matrix (1.9 GB and more)."""
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    rows = max(1, MERGE_BLOCK_BYTES // (4 * w.shape[1]))
    for s in range(0, w.shape[0], rows):
        delta = b32[s : s + rows] @ a32
        delta.mul_(scaling)
        delta.add_(w[s : s + rows])  # W promoted exactly: the same sum as W.float() + delta
        w[s : s + rows] = delta
    return w


def merge_replacements(
    adapter: LoraAdapter, reader: CheckpointReader, *, divide: float = 1.0, skip: Iterable[str] = ()
) -> tuple[dict[str, Callable[[], torch.Tensor]], list[str]]:
    """``{weight name: callable}`` merging every module of ``adapter`` into ``reader``'s weights (deltas divided by
    ``divide``), each built only when called; and the targets left out because they are in ``skip``.

    Every target and shape is checked here, before anything is written."""
    if not divide > 0:
        raise RuadaptError(f"LoRA delta divisor must be positive, got {divide}")
    skip = set(skip)
    skipped, plan = [], {}
    with safe_open(adapter.weights, framework="pt") as f:
        for target, m in adapter.modules.items():
            if target in skip:
                skipped.append(target)
                continue
            if target not in reader:
                raise RuadaptError(
                    f"{adapter.weights}: adapter module {m.module} has no weight {target} in {reader.path}"
                )
            a_shape, b_shape = tuple(f.get_slice(m.key_a).get_shape()), tuple(f.get_slice(m.key_b).get_shape())
            want = tuple(reader.info(target).shape)
            if len(a_shape) != 2 or len(b_shape) != 2 or (b_shape[0], a_shape[1]) != want or a_shape[0] != b_shape[1]:
                raise RuadaptError(
                    f"{adapter.weights}: {m.module} lora_B {b_shape} · lora_A {a_shape} does not fit {target} {want} "
                    f"of {reader.path}"
                )
            if a_shape[0] != m.r:
                raise RuadaptError(
                    f"{adapter.weights}: {m.module} has rank {a_shape[0]} but {ADAPTER_CONFIG} (r, rank_pattern) gives "
                    f"{m.r}"
                )
            plan[target] = m

    def build(m: LoraModule) -> Callable[[], torch.Tensor]:
        def merged() -> torch.Tensor:
            with safe_open(adapter.weights, framework="pt") as f:
                a, b = f.get_tensor(m.key_a), f.get_tensor(m.key_b)
            w = reader.get(m.target)  # a copy, merged in place
            reader.close()  # unmap: touched pages of a memory-mapped shard count as resident memory
            return merged_weight(w, a, b, m.scaling / divide)

        return merged

    return {t: build(m) for t, m in plan.items()}, skipped
