"""Final export of a run: a plain Hugging Face model dir (sharded safetensors, tie kept) + ``ruadapt_train.json``
+ ``loss.png``; for LoRA also ``adapter/`` (peft format) and, with ``lora.merge``, the merged weights.

Only the tensors the run changed are written from memory; every other tensor is streamed from the input
checkpoint (:func:`ruadapt.io.checkpoint.write_with_replacements`), so a body frozen during training is
byte-identical in the output. LoRA is merged from the adapter just written, by :mod:`ruadapt.vocab.lora` (the merge
``ruadapt lep --lora-deltas`` uses too): each merged weight is built only when its shard is written, so rank 0
holds one weight, not the body (≈ 140 GB for Qwen2.5-72B in bf16), and needs neither a second copy of the model
nor peft's ``merge_and_unload`` (which un-ties a tied model whose embedding was a ``modules_to_save`` copy).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..io.checkpoint import (
    INDEX_FILE,
    CheckpointReader,
    CheckpointWriter,
    Replacement,
    parse_size,
    read_json,
    write_with_replacements,
)
from ..io.model_card import write_model_card
from ..io.outdir import atomic_output_dir
from ..io.record import StageRecord
from ..vocab.arch import INPUT, arch_for_config
from ..vocab.lora import ADAPTER_WEIGHTS, PEFT_PREFIX, merge_replacements, read_adapter
from .config import RunConfig

log = logging.getLogger(__name__)


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


def vocab_replacements(reader: CheckpointReader, trained: dict[str, torch.Tensor]) -> dict[str, Replacement]:
    """Trained non-LoRA tensors cast to the checkpoint's dtype; every stored tensor the tie rule gives the input
    matrix (:meth:`ruadapt.vocab.arch.Arch.matrix_roles`: tied copies, a tied lm_head stored anyway) gets the trained
    input matrix too (a stale copy would silently break the tie on load)."""
    arch = arch_for_config(reader.config)
    out: dict[str, Replacement] = {}
    for name, t in trained.items():
        if ".lora_" in name:
            continue
        dtype = reader.info(name).dtype if name in reader else t.dtype
        out[name] = t.to(dtype)
    if arch.input_name in out:
        for name, role in arch.matrix_roles(reader.infos).items():
            if role == INPUT and name not in out:
                out[name] = out[arch.input_name]
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
    trained vocabulary matrices included, as peft's ``save_embedding_layers`` does).

    Written by :class:`ruadapt.io.checkpoint.CheckpointWriter` from the tensors' own buffers: ``save_file`` would
    first copy them all into one ``bytes`` (1.7 GB of r = 64 LoRA on 80 layers of Qwen2.5-72B, plus 5 GB of
    trained vocabulary matrices)."""
    dst.mkdir(parents=True)
    peft_config.save_pretrained(str(dst))
    writer = CheckpointWriter(dst, max_shard_bytes=sum(v.numel() * v.element_size() for v in trained.values()) + 1)
    for k, v in trained.items():
        writer.add(PEFT_PREFIX + k.replace(".default.", "."), v)
    (single,) = writer.finish()
    single.rename(dst / ADAPTER_WEIGHTS)


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


def export_run(
    cfg: RunConfig,
    trained: dict[str, torch.Tensor],
    record: StageRecord,
    history: list[dict],
    evals: list[dict],
    peft_config: Any = None,
) -> Path:
    """Write the run's output directory atomically (rank 0 only).

    The LoRA tensors are removed from ``trained`` once the adapter is written: the merge reads them back from it
    one module at a time, and at 72B they are 1.7 GB that would otherwise sit beside every merged weight."""
    model_dir = Path(cfg.model)
    reader = CheckpointReader(model_dir)
    max_shard = parse_size(cfg.max_shard_size) if cfg.max_shard_size else None
    with atomic_output_dir(cfg.out_path, [model_dir], option="out") as tmp:
        write_model = True
        repl = vocab_replacements(reader, trained)
        if peft_config is not None:
            write_adapter(tmp / "adapter", peft_config, trained)
            for k in [k for k in trained if ".lora_" in k]:
                del trained[k]
            write_model = cfg.lora.merge
            if write_model:  # lazy: each merged weight is built when its shard is written
                merged, _ = merge_replacements(read_adapter(tmp / "adapter"), reader)
                repl.update(merged)
                record.set("lora_merged_tensors", len(merged))
        if write_model:
            with record.timed("write_model"):
                write_with_replacements(reader, tmp, repl, max_shard_bytes=max_shard, progress=False)
            copy_side_files(model_dir, tmp)
        record.set("replaced_tensors", sorted(repl) if write_model else [])
        plot_losses(history, evals, tmp / "loss.png", f"{cfg.task} / {cfg.stage}: {model_dir.name}")
        record.write(tmp)
        if write_model:
            write_model_card(tmp, record.data, started_from=model_dir)
    reader.close()
    return cfg.out_path


def read_train_record(out: Path) -> dict:
    return read_json(Path(out) / "ruadapt_train.json")
