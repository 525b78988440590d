"""The training loop shared by CPT and SFT: ``deepspeed.initialize`` with torch AdamW, checkpoints every N
steps, automatic resume from the last *complete* checkpoint, eval loss, final export on rank 0.

A checkpoint counts as complete only after every rank returned from ``save_checkpoint`` and rank 0 wrote
``ruadapt_state.json`` into it and then atomically replaced ``checkpoints/complete`` with its tag; a run
killed (even with SIGKILL) in the middle of a save resumes from the previous one. Data order is a pure
function of the step (:class:`ruadapt.train.data.StepSampler`), so a resumed run repeats exactly the batches
the uninterrupted run would have seen.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import RuadaptError
from ..record import StageRecord
from .config import RunConfig, fill_deepspeed_config, load_deepspeed_json, validate_deepspeed_config
from .data import MixSampler
from .prepare import load_run_data

log = logging.getLogger("ruadapt.train")

COMPLETE = "complete"
STATE = "ruadapt_state.json"
# settings that may differ between the interrupted and the resumed run (bookkeeping only)
_RESUME_FREE = ("save_steps", "eval_steps", "log_steps", "keep_checkpoints")
# fault injection for the resume test: "[OUT_NAME:]STEP" SIGKILLs rank 0 right after that optimizer step
# (of the run whose out dir has that name, when given)
KILL_ENV = "RUADAPT_TRAIN_KILL_AT_STEP"


def _kill_step(cfg: RunConfig) -> int:
    value = os.environ.get(KILL_ENV, "")
    if not value:
        return 0
    name, _, step = value.rpartition(":")
    return int(step) if not name or name == cfg.out_path.name else 0


def _comparable(cfg: RunConfig) -> dict:
    d = cfg.to_dict()
    for k in _RESUME_FREE:
        d["train"].pop(k, None)
    return d


def last_complete(ckpt_dir: Path) -> str | None:
    p = ckpt_dir / COMPLETE
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if (ckpt_dir / tag / STATE).is_file() else None


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def evaluate(engine, dataset, *, rank: int, world: int, micro: int, device: torch.device) -> float:
    """Mean token loss over the held-out set; every rank runs the same number of forwards (ZeRO-3 needs it)."""
    n = len(dataset)
    per_rank = -(-n // world)
    idx = [i for i in range(rank, n, world)]
    weights = [1.0] * len(idx) + [0.0] * (per_rank - len(idx))
    idx += [0] * (per_rank - len(idx))
    total = count = 0.0
    engine.eval()
    with torch.no_grad():
        for k in range(0, per_rank, micro):
            sel, w = idx[k:k + micro], weights[k:k + micro]
            batch = {key: v.to(device) for key, v in dataset.collate(sel).items()}
            loss = engine(**batch).loss.float().item()
            tokens = float((batch["labels"][:, 1:] != -100).sum().item())
            frac = sum(w) / len(w)
            total += loss * tokens * frac
            count += tokens * frac
    engine.train()
    total, count = _all_reduce_sum([total, count], device)
    return total / max(count, 1.0)


def run(cfg: RunConfig, *, resume: bool = False) -> Path | None:
    """Train according to ``cfg`` in this process (one of the launcher's ranks); rank 0 exports."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    acc = get_accelerator()
    device = torch.device(acc.device_name(local_rank)) if acc.device_name() != "cpu" else torch.device("cpu")
    if device.type != "cpu":
        acc.set_device(local_rank)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")

    t = cfg.train
    bf16 = {"true": True, "false": False}.get(t.bf16, device.type != "cpu" and acc.is_bf16_supported())
    ds_cfg = fill_deepspeed_config(load_deepspeed_json(Path(cfg.deepspeed)), cfg, world_size=world, bf16=bf16)
    validate_deepspeed_config(ds_cfg, cfg.deepspeed)
    zero_stage = int(ds_cfg.get("zero_optimization", {}).get("stage", 0))

    work = cfg.work_dir
    ckpt_dir = work / "checkpoints"
    run_json = work / "run.json"
    barrier = dist.barrier
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        if run_json.is_file() and last_complete(ckpt_dir):
            old = json.loads(run_json.read_text())
            if old != _comparable(cfg):
                raise RuadaptError(f"{work}: holds checkpoints of a run with another config; remove it to start over")
        run_json.write_text(json.dumps(_comparable(cfg), indent=2) + "\n")
    barrier()
    tag = last_complete(ckpt_dir)
    if resume and tag is None:
        raise RuadaptError(f"{ckpt_dir}: --resume given but there is no complete checkpoint")

    # data: token files prepared before launch, memory-mapped here (no rank tokenizes, none waits for another)
    train_ds, eval_ds, weights = load_run_data(cfg)
    sampler = MixSampler(train_ds, weights, micro=t.micro_batch_size, accum=t.grad_accum, world=world, rank=rank, seed=t.seed)
    n_sources = len(train_ds.parts)
    source_seen = np.zeros((2, n_sources))  # sequences, tokens per source (all ranks), for the record of the mix

    # model
    torch.manual_seed(t.seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    keep_alive = None
    if zero_stage == 3:
        importlib.import_module("torch._dynamo")  # zero.Init patches module classes; dynamo must come first
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_cfg)  # makes from_pretrained partition weights while loading
    from .model import load_model, lr_lambda, param_groups, prepare_stage

    model = load_model(cfg, dtype)
    model.config.use_cache = False
    model, trainable = prepare_stage(model, cfg, zero_stage)
    n_trainable = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainable.values())
    log.info("stage %s: %d trainable tensors, %d parameters", cfg.stage, len(trainable), n_trainable)
    optimizer = torch.optim.AdamW(param_groups(trainable, cfg), lr=t.lr, betas=tuple(t.betas), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_cfg)
    del keep_alive

    history: list[dict] = []
    evals: list[dict] = []
    start = 0
    tokens_done = 0
    if tag:
        load_path, state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_strict=False)
        if load_path is None:
            raise RuadaptError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
        st = json.loads((ckpt_dir / tag / STATE).read_text())
        start, history, evals, tokens_done = st["step"], st["history"], st["evals"], st["tokens"]
        source_seen = np.array(st.get("source_seen", source_seen), dtype=np.float64)
        log.info("resumed from %s (step %d)", ckpt_dir / tag, start)

    def save(step: int) -> None:
        tag_ = f"step-{step:07d}"
        engine.save_checkpoint(str(ckpt_dir), tag=tag_, save_latest=False)
        barrier()
        if rank == 0:
            state = {"step": step, "history": history, "evals": evals, "tokens": tokens_done,
                     "source_seen": source_seen.tolist()}
            (ckpt_dir / tag_ / STATE).write_text(json.dumps(state) + "\n")
            tmp = ckpt_dir / f".{COMPLETE}.tmp"
            tmp.write_text(tag_ + "\n")
            os.replace(tmp, ckpt_dir / COMPLETE)
            old = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir() and p.name != tag_)
            for p in old[: max(0, len(old) - (t.keep_checkpoints - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        barrier()

    kill_at = _kill_step(cfg)
    if eval_ds is not None and start == 0:
        ev = evaluate(engine, eval_ds, rank=rank, world=world, micro=t.micro_batch_size, device=device)
        evals.append({"step": 0, "loss": round(ev, 6)})
        if rank == 0:
            log.info("eval loss before training %.4f", ev)
    engine.train()
    t0 = time.perf_counter()
    tokens_this_run = 0
    for step in range(start, t.max_steps):
        loss_sum = 0.0
        tokens = 0
        seen = np.zeros((2, n_sources))
        lr = scheduler.get_last_lr()[0] if scheduler is not None else t.lr  # the lr this step uses
        for idx in sampler.micro_batches(step):
            batch = {k: v.to(device) for k, v in train_ds.collate(idx).items()}
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
            loss_sum += out.loss.detach().float().item()
            n_tok = batch["attention_mask"].sum(1) if "attention_mask" in batch else torch.full((len(idx),), batch["input_ids"].shape[1])
            parts = train_ds.part_of(idx)
            seen[0] += np.bincount(parts, minlength=n_sources)
            seen[1] += np.bincount(parts, weights=n_tok.numpy(), minlength=n_sources)
            tokens += int(n_tok.sum())
        reduced = _all_reduce_sum([loss_sum, float(tokens), *seen.ravel().tolist()], device)
        loss_sum, tokens_all = reduced[0], reduced[1]
        source_seen += np.array(reduced[2:]).reshape(2, n_sources)
        loss = loss_sum / (t.grad_accum * world)
        tokens_done += int(tokens_all)
        tokens_this_run += int(tokens_all)
        history.append({"step": step + 1, "loss": round(loss, 6), "lr": lr, "tokens": int(tokens_all),
                        "time_s": round(time.perf_counter() - t0, 4)})  # since this process's loop started
        if rank == 0 and ((step + 1) % t.log_steps == 0 or step + 1 in (1, t.max_steps)):
            rate = tokens_this_run / max(time.perf_counter() - t0, 1e-9)
            log.info("step %d/%d  loss %.4f  lr %.3g  %.0f tok/s", step + 1, t.max_steps, loss, lr, rate)
        if eval_ds is not None and t.eval_steps and (step + 1) % t.eval_steps == 0 and step + 1 < t.max_steps:
            ev = evaluate(engine, eval_ds, rank=rank, world=world, micro=t.micro_batch_size, device=device)
            evals.append({"step": step + 1, "loss": round(ev, 6)})
            if rank == 0:
                log.info("step %d  eval loss %.4f", step + 1, ev)
        if (step + 1) % t.save_steps == 0 or step + 1 == t.max_steps:
            save(step + 1)
        if kill_at and step + 1 == kill_at and rank == 0:
            log.warning("%s=%d: killing rank 0 with SIGKILL", KILL_ENV, kill_at)
            os.kill(os.getpid(), signal.SIGKILL)
    elapsed = time.perf_counter() - t0
    if eval_ds is not None:
        ev = evaluate(engine, eval_ds, rank=rank, world=world, micro=t.micro_batch_size, device=device)
        evals.append({"step": t.max_steps, "loss": round(ev, 6)})
        if rank == 0:
            log.info("final eval loss %.4f", ev)

    from .export import gather_to_rank0

    trained = gather_to_rank0(trainable, rank)
    out = None
    if rank == 0:
        from .export import export_run

        record = StageRecord("train", cfg.to_dict())
        record.input("model", cfg.model)
        for src in cfg.data.train:
            record.input(f"data:{src.path}", src.path)
        record.set("data", mix_record(train_ds, weights, source_seen))
        peak = acc.max_memory_allocated() if device.type != "cpu" else _peak_rss()
        record.set("result", {
            "world_size": world, "zero_stage": zero_stage, "dtype": str(dtype).replace("torch.", ""),
            "steps": t.max_steps, "resumed_from_step": start, "trainable_parameters": n_trainable,
            "tokens": tokens_done, "tokens_this_run": tokens_this_run, "seconds_this_run": round(elapsed, 3),
            "tokens_per_s": round(tokens_this_run / max(elapsed, 1e-9), 2),
            "train_sequences": len(train_ds), "eval_sequences": len(eval_ds) if eval_ds is not None else 0,
            "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
            "eval_loss": evals[-1]["loss"] if evals else None, "peak_memory_bytes_rank0": peak,
        })
        record.set("losses", history)
        record.set("eval_losses", evals)
        peft_config = engine.module.peft_config["default"] if cfg.stage == "lora" else None
        out = export_run(cfg, trained, record, history, evals, peft_config)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the export is complete; optimizer states are no longer needed
        log.info("wrote %s", out)
    barrier()
    engine.destroy()
    del engine, optimizer, model, trainable, trained
    gc.collect()
    return out


def mix_record(train_ds, weights: list[float], seen: np.ndarray) -> dict:
    """Target share of each source and the share of sequences / tokens the run actually trained on."""
    from .data import normalized_weights

    target = normalized_weights(weights, [int(n) for n in train_ds.sizes])
    seqs, toks = seen[0], seen[1]
    return {"sources": [
        {"path": name, "weight": w, "target_share": round(float(share), 6), "sequences": int(seqs[k]),
         "tokens": int(toks[k]), "sequence_share": round(float(seqs[k] / max(seqs.sum(), 1)), 6),
         "token_share": round(float(toks[k] / max(toks.sum(), 1)), 6), "available_sequences": int(train_ds.sizes[k])}
        for k, (name, w, share) in enumerate(zip(train_ds.names, weights, target))]}


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
