"""Final export of a run: a plain Hugging Face model dir (sharded safetensors, tie kept) + ``ruadapt_train.json``
+ ``loss.png``; for LoRA also ``adapter/`` (peft format) and, with ``lora.merge``, the merged weights.

Only the tensors the run changed are written from memory; every other tensor is streamed from the input
checkpoint (:func:`ruadapt.checkpoint.write_with_replacements`), so a body frozen during training is
byte-identical in the output. LoRA is merged tensor by tensor (``W + alpha/r · B A`` in float32), which needs
neither a second copy of the model nor peft's ``merge_and_unload`` (which un-ties a tied model whose
embedding was a ``modules_to_save`` copy).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..arch import arch_for_config
from ..checkpoint import INDEX_FILE, CheckpointReader, parse_size, read_json, write_with_replacements
from ..outdir import atomic_output_dir
from ..record import StageRecord
from .config import RunConfig
from .model import PEFT_PREFIX

log = logging.getLogger(__name__)

LORA_A, LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"


def gather_to_rank0(named: dict[str, torch.nn.Parameter], rank: int) -> dict[str, torch.Tensor]:
    """Full CPU copies of ``named`` on rank 0 (ZeRO-3 partitions are gathered one parameter at a time)."""
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    for name, p in named.items():
        if hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if rank == 0:
                    out[name] = p.detach().to("cpu", copy=True)
        elif rank == 0:
            out[name] = p.detach().to("cpu", copy=True)
    return out


def merged_lora(reader: CheckpointReader, trained: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Base weights with their LoRA deltas added, by checkpoint name."""
    out = {}
    for key, a in trained.items():
        if not key.endswith(LORA_A):
            continue
        module = key[: -len(LORA_A)]
        b = trained[module + LORA_B]
        w = reader.get(module + ".weight")
        out[module + ".weight"] = (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
    return out


def vocab_replacements(reader: CheckpointReader, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trained non-LoRA tensors cast to the checkpoint's dtype; a tied checkpoint that also stores lm_head
    gets the trained input matrix there too (a stale copy would silently break the tie on load)."""
    arch = arch_for_config(reader.config)
    out = {}
    for name, t in trained.items():
        if ".lora_" in name:
            continue
        dtype = reader.info(name).dtype if name in reader else t.dtype
        out[name] = t.to(dtype)
    if arch.tied and arch.input_name in out and arch.output_name in reader and arch.output_name not in out:
        out[arch.output_name] = out[arch.input_name]
    return out


def copy_side_files(src: Path, dst: Path) -> None:
    """config, generation config, tokenizer and chat template files (not weights, not earlier stage records)."""
    for f in sorted(Path(src).iterdir()):
        if not f.is_file() or f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name == INDEX_FILE:
            continue
        if f.name.startswith("ruadapt_"):
            continue
        shutil.copy2(f, dst / f.name)


def write_adapter(dst: Path, peft_config: Any, trained: dict[str, torch.Tensor]) -> None:
    """peft's on-disk layout: adapter_config.json + adapter_model.safetensors (keys without the adapter name;
    trained vocabulary matrices included, as peft's ``save_embedding_layers`` does)."""
    dst.mkdir(parents=True)
    peft_config.save_pretrained(str(dst))
    tensors = {PEFT_PREFIX + k.replace(".default.", "."): v.contiguous() for k, v in trained.items()}
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})


def plot_losses(history: list[dict], evals: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss", lw=1)
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export_run(cfg: RunConfig, trained: dict[str, torch.Tensor], record: StageRecord, history: list[dict],
               evals: list[dict], peft_config: Any = None) -> Path:
    """Write the run's output directory atomically (rank 0 only)."""
    model_dir = Path(cfg.model)
    reader = CheckpointReader(model_dir)
    max_shard = parse_size(cfg.max_shard_size) if cfg.max_shard_size else None
    with atomic_output_dir(cfg.out_path, [model_dir], option="out") as tmp:
        write_model = True
        repl = vocab_replacements(reader, trained)
        if peft_config is not None:
            write_adapter(tmp / "adapter", peft_config, trained)
            write_model = cfg.lora.merge
            scaling = cfg.lora.alpha / cfg.lora.r
            repl.update(merged_lora(reader, trained, scaling))
            record.set("lora_merged_tensors", sum(1 for k in trained if k.endswith(LORA_A)))
        if write_model:
            with record.timed("write_model"):
                write_with_replacements(reader, tmp, repl, max_shard_bytes=max_shard, progress=False)
            copy_side_files(model_dir, tmp)
        record.set("replaced_tensors", sorted(repl) if write_model else [])
        plot_losses(history, evals, tmp / "loss.png", f"{cfg.task} / {cfg.stage}: {model_dir.name}")
        record.write(tmp)
    reader.close()
    return cfg.out_path


def read_train_record(out: Path) -> dict:
    return read_json(Path(out) / "ruadapt_train.json")
