"""The training run shared by CPT and SFT, as a class whose steps a reader can find by name (torchtune's
recipe style): :meth:`TrainingRun.setup` → :meth:`~TrainingRun._setup_data` → :meth:`~TrainingRun._setup_model`
→ :meth:`~TrainingRun._resume` → :meth:`~TrainingRun.train` (with :meth:`~TrainingRun.save_checkpoint`) →
:meth:`~TrainingRun.export`. ``deepspeed.initialize`` with torch AdamW, eval loss, final export on rank 0.

A checkpoint counts as complete only after every rank returned from ``save_checkpoint`` and rank 0 wrote
``ruadapt_state.json`` into it and then atomically replaced ``checkpoints/complete`` with its tag; a run
killed (even with SIGKILL) in the middle of a save resumes from the previous one. Data order is a pure
function of the step (:class:`ruadapt.train.data.MixSampler`), so a resumed run repeats exactly the batches
the uninterrupted run would have seen.

Stopping: SIGTERM/SIGINT only set a flag (:func:`install_stop_handlers`); the ranks agree on it in the
all-reduce every step already does, so all of them stop after the same optimizer step, write nothing (no
half checkpoint, no export) and raise :class:`StopRequested`. The last complete checkpoint stays valid.

Extensions (and the tests' fault injection) hook in without code paths in the loop: ``RUADAPT_TRAIN_CALLBACKS``
names ``module:function`` entries (comma-separated), each called as ``function(run, step)`` after every step.
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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..errors import RuadaptError
from ..io.checkpoint import CheckpointReader
from ..io.record import StageRecord
from ..vocab.arch import model_fingerprint
from .config import RunConfig, deepspeed_for_world
from .data import MixSampler, normalized_weights
from .loss import lm_loss
from .prepare import load_run_data, manifest_path
from .progress import Progress
from .rundir import COMPLETE, RUN_JSON, STARTED_ENV, STATE, check_world_size, comparable, last_complete
from .supervise import STOP_SIGNAL_ENV

log = logging.getLogger("ruadapt.train")

CALLBACKS_ENV = "RUADAPT_TRAIN_CALLBACKS"
StepCallback = Callable[["TrainingRun", int], None]

_stop_signal: list[int] = []  # the signal that asked this rank to stop (set by the handler, read by the loop)


class StopRequested(Exception):
    """Every rank stopped after the same optimizer step because of SIGTERM/SIGINT; nothing was written."""

    def __init__(self, step: int, checkpoint: str | None, signum: int):
        super().__init__(f"stopped after step {step}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


def _request_stop(signum: int, frame: Any) -> None:
    if not _stop_signal:
        _stop_signal.append(signum)


def install_stop_handlers() -> None:
    """Turn SIGTERM/SIGINT into a request to stop at the end of the current step (a KeyboardInterrupt inside
    a collective would leave the other ranks waiting until the process-group timeout)."""
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


def stop_signal_name(signum: int) -> str:
    """The signal the user sent, for the log. ``ruadapt train`` turns every stop into SIGTERM to the launcher's
    group (a SIGINT would make DeepSpeed's runner print a KeyboardInterrupt traceback), so what this rank got is
    SIGTERM even after a Ctrl-C; the supervisor writes the signal it received into the file named by
    ``RUADAPT_STOP_SIGNAL_FILE``. Without that file (a direct ``deepspeed`` launch, another node) the rank's own."""
    note = os.environ.get(STOP_SIGNAL_ENV, "")
    try:
        name = Path(note).read_text().strip() if note else ""
    except OSError:
        name = ""
    return name if name.startswith("SIG") else signal.Signals(signum).name


def load_callbacks(spec: str | None = None) -> list[StepCallback]:
    """``module:function`` entries of ``RUADAPT_TRAIN_CALLBACKS``; a bad entry is a one-line error."""
    spec = os.environ.get(CALLBACKS_ENV, "") if spec is None else spec
    out = []
    for entry in filter(None, (s.strip() for s in spec.split(","))):
        module, _, name = entry.partition(":")
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError, ValueError) as e:
            raise RuadaptError(f"{CALLBACKS_ENV}={spec}: cannot load {entry!r} ({e})") from None
    return out


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def evaluate(
    engine, dataset, *, rank: int, world: int, micro: int, device: torch.device, objective: Callable = lm_loss
) -> float:
    """Mean token loss over the held-out set; every rank runs the same number of forwards (ZeRO-3 needs it)."""
    n = len(dataset)
    per_rank = -(-n // world)
    mine = range(rank, n, world)  # a range, not a list: no per-item memory, whatever the size of data.eval
    total = count = 0.0
    engine.eval()
    with torch.no_grad():
        for k in range(0, per_rank, micro):
            # a rank short of items repeats item 0 with weight 0, so every rank runs the same forwards
            sel = [mine[i] if i < len(mine) else 0 for i in range(k, min(k + micro, per_rank))]
            w = [1.0 if i < len(mine) else 0.0 for i in range(k, min(k + micro, per_rank))]
            batch = {key: v.to(device) for key, v in dataset.collate(sel).items()}
            loss = objective(engine, batch).float().item()
            tokens = float((batch["labels"][:, 1:] != -100).sum().item())
            frac = sum(w) / len(w)
            total += loss * tokens * frac
            count += tokens * frac
    engine.train()
    total, count = _all_reduce_sum([total, count], device)
    return total / max(count, 1.0)


class TrainingRun:
    """One run (one YAML) in this rank. :meth:`run` calls the steps in order; each is usable on its own."""

    def __init__(
        self, cfg: RunConfig, *, deepspeed: dict, resume: bool = False, callbacks: list[StepCallback] | None = None
    ):
        self.cfg, self.t = cfg, cfg.train
        self.deepspeed = deepspeed  # filled and validated by the launcher (launch.json); the world is added here
        self.require_checkpoint = resume
        self.on_step_end: list[StepCallback] = load_callbacks() if callbacks is None else callbacks
        self.ckpt_dir = cfg.work_dir / "checkpoints"
        self.history: list[dict] = []  # per optimizer step: loss, lr, tokens, time
        self.evals: list[dict] = []
        self.start = 0  # first step of this launch (the resumed checkpoint's step)
        self.tokens_done = 0  # over the whole run, resumed launches included
        self.elapsed = 0.0
        # when the user started the run: the launcher's time (STARTED_ENV), or the first launch's, kept in checkpoints
        self.started = float(os.environ.get(STARTED_ENV, time.time()))

    def run(self) -> Path | None:
        """setup → data → model → resume → train → export; returns the output dir on rank 0."""
        for phase in (self.setup, self._setup_data, self._setup_model, self._resume):
            phase()
            self._stop_if_signalled()  # a stop before training leaves nothing to finish
        self.train()
        out = self.export()
        self.close()
        return out

    def _stop_if_signalled(self) -> None:
        if _stop_signal:
            raise StopRequested(self.start, last_complete(self.ckpt_dir), _stop_signal[0])

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Process group, device, logging, the DeepSpeed config for this world; rank 0 records run.json."""
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        deepspeed.init_distributed()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.barrier = dist.barrier
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.acc = acc = get_accelerator()
        self.device = torch.device(acc.device_name(local_rank)) if acc.device_name() != "cpu" else torch.device("cpu")
        if self.device.type != "cpu":
            acc.set_device(local_rank)
        logging.basicConfig(
            level=logging.INFO if self.rank == 0 else logging.WARNING,
            format=f"%(asctime)s [rank {self.rank}] %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        self.bf16 = {"true": True, "false": False}.get(
            self.t.bf16, self.device.type != "cpu" and acc.is_bf16_supported()
        )
        self.ds_cfg = deepspeed_for_world(self.deepspeed, self.cfg, world_size=self.world, bf16=self.bf16)
        self.zero_stage = int(self.ds_cfg.get("zero_optimization", {}).get("stage", 0))
        if self.rank == 0:
            work = self.cfg.work_dir
            work.mkdir(parents=True, exist_ok=True)
            (work / RUN_JSON).write_text(json.dumps(comparable(self.cfg), indent=2) + "\n")
        self.barrier()
        if self.require_checkpoint and last_complete(self.ckpt_dir) is None:
            raise RuadaptError(f"{self.ckpt_dir}: --resume given but there is no complete checkpoint")

    # ------------------------------------------------------------------------------------------- data
    def _setup_data(self) -> None:
        """The token files prepared before launch, memory-mapped (no rank tokenizes, none waits for another), and
        the sampler of the weighted mix."""
        self.train_ds, self.eval_ds, self.weights = load_run_data(self.cfg)
        self.sampler = MixSampler(
            self.train_ds,
            self.weights,
            micro=self.t.micro_batch_size,
            accum=self.t.grad_accum,
            world=self.world,
            rank=self.rank,
            seed=self.t.seed,
        )
        self.source_seen = np.zeros((2, len(self.train_ds.parts)))  # sequences, tokens per source (all ranks)
        if self.rank == 0:
            shares = ", ".join(
                f"{Path(n).name} {float(w):.1%}" for n, w in zip(self.train_ds.names, self.sampler.weights)
            )
            log.info("data: %s training sequences; target shares of the mix: %s", f"{len(self.train_ds):,}", shares)

    # ------------------------------------------------------------------------------------------ model
    def _setup_model(self) -> None:
        """Load the model, pick what trains (stage), AdamW + schedule, ``deepspeed.initialize``."""
        import deepspeed

        torch.manual_seed(self.t.seed)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        keep_alive = None
        if self.zero_stage == 3:
            importlib.import_module("torch._dynamo")  # zero.Init patches module classes; dynamo must come first
            from transformers.integrations import HfDeepSpeedConfig

            keep_alive = HfDeepSpeedConfig(self.ds_cfg)  # makes from_pretrained partition weights while loading
        from .model import load_model, lr_lambda, param_groups, prepare_stage

        model = load_model(self.cfg, self.dtype)
        model.config.use_cache = False
        model, self.trainable = prepare_stage(model, self.cfg, self.zero_stage)
        self.n_trainable = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.trainable.values())
        log.info("stage %s: %d trainable tensors, %d parameters", self.cfg.stage, len(self.trainable), self.n_trainable)
        optimizer = torch.optim.AdamW(
            param_groups(self.trainable, self.cfg),
            lr=self.t.lr,
            betas=cast(tuple[float, float], tuple(self.t.betas)),
            eps=1e-8,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_cfg
        )
        del keep_alive
        self.objective: Callable = partial(lm_loss, logits_mb=self.t.logits_mb)
        if self.cfg.stage == "distill":  # the loss is selected by stage; its logic lives in distill.py
            from .distill import DistillObjective

            self.objective = DistillObjective(self.cfg, self.engine)

    # ----------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        """Load the last complete checkpoint, if any (``--resume`` insists on one)."""
        tag = last_complete(self.ckpt_dir)
        if tag is None:
            return
        check_world_size(self.cfg, self.world, self.zero_stage)  # before DeepSpeed's 36-line failure
        load_path, _ = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag, load_module_strict=False)
        if load_path is None:
            raise RuadaptError(f"{self.ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
        st = json.loads((self.ckpt_dir / tag / STATE).read_text())
        self.start, self.history, self.evals, self.tokens_done = st["step"], st["history"], st["evals"], st["tokens"]
        self.source_seen = np.array(st.get("source_seen", self.source_seen), dtype=np.float64)
        self.started = st.get("started", self.started)
        log.info("resumed from %s (step %d)", self.ckpt_dir / tag, self.start)

    # ------------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        """Optimizer steps from the resumed one to ``max_steps``: eval and checkpoint on schedule; raises
        :class:`StopRequested` when a stop signal arrived (after the step every rank agreed on)."""
        t = self.t
        self.progress = Progress(self.cfg, first_step=self.start, enabled=self.rank == 0)
        if self.eval_ds is not None and self.start == 0:
            self._evaluate(0, "eval loss before training (step %d) %.4f")
        self.engine.train()
        self.progress.start()
        try:
            for step in range(self.start + 1, t.max_steps + 1):
                self._train_step(step)
                if self.eval_ds is not None and t.eval_steps and step % t.eval_steps == 0 and step < t.max_steps:
                    self._evaluate(step)
                if step % t.save_steps == 0 or step == t.max_steps:
                    self.save_checkpoint(step)
                for callback in self.on_step_end:
                    callback(self, step)
            self.elapsed = self.progress.elapsed()
            if self.eval_ds is not None:
                self._evaluate(t.max_steps, "final eval loss (step %d) %.4f")
        finally:
            self.progress.close()

    def _train_step(self, step: int) -> None:
        """One optimizer step (grad_accum micro-batches); its all-reduce also carries the stop flag."""
        loss_sum = 0.0
        seen: np.ndarray = np.zeros_like(self.source_seen)  # this rank's sequences and tokens per source
        lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else self.t.lr  # the lr this step uses
        for idx in self.sampler.micro_batches(step - 1):
            batch = self.train_ds.collate(idx)
            if "attention_mask" in batch:  # padded chats: real tokens only
                n_tok = batch["attention_mask"].sum(1)
            else:
                n_tok = torch.full((len(idx),), batch["input_ids"].shape[1])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            loss = self.objective(self.engine, batch)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().float().item()
            parts = self.train_ds.part_of(idx)
            seen[0] += np.bincount(parts, minlength=seen.shape[1])
            seen[1] += np.bincount(parts, weights=n_tok.numpy(), minlength=seen.shape[1])
        stop = float(_stop_signal[0]) if _stop_signal else 0.0
        reduced = _all_reduce_sum([loss_sum, stop, *seen.ravel().tolist()], self.device)
        loss_sum, stop_any = reduced[0], reduced[1]
        seen = np.array(reduced[2:]).reshape(seen.shape)
        tokens_all = seen[1].sum()
        if stop_any:  # some rank was signalled: all stop here, before this step could be checkpointed
            signum = _stop_signal[0] if _stop_signal else signal.SIGTERM
            tag = last_complete(self.ckpt_dir)
            if self.rank == 0:
                log.warning(
                    "stopping after step %d (%s); last complete checkpoint: %s; nothing else written",
                    step,
                    stop_signal_name(signum),
                    tag or "none",
                )
            raise StopRequested(step, tag, signum)
        loss = loss_sum / (self.t.grad_accum * self.world)
        self.tokens_done += int(tokens_all)
        self.source_seen += seen
        self.history.append(
            {
                "step": step,
                "loss": round(loss, 6),
                "lr": lr,
                "tokens": int(tokens_all),
                "time_s": round(self.progress.elapsed(), 4),
            }
        )  # since this launch's loop started
        self.progress.step_done(step, loss=loss, lr=lr, tokens=int(tokens_all))

    def _evaluate(self, step: int, message: str = "step %d  eval loss %.4f") -> None:
        ev = evaluate(
            self.engine,
            self.eval_ds,
            rank=self.rank,
            world=self.world,
            micro=self.t.micro_batch_size,
            device=self.device,
            objective=self.objective,
        )
        self.evals.append({"step": step, "loss": round(ev, 6)})
        self.progress.eval_done(step, ev, message)

    # ------------------------------------------------------------------------------------------- save
    def save_checkpoint(self, step: int) -> None:
        """DeepSpeed checkpoint of every rank, then rank 0 marks it complete (atomically) and prunes old ones."""
        tag = f"step-{step:07d}"
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False)
        self.barrier()
        if self.rank == 0:
            state = {
                "step": step,
                "history": self.history,
                "evals": self.evals,
                "tokens": self.tokens_done,
                "source_seen": self.source_seen.tolist(),
                "started": self.started,
                "world_size": self.world,
                "zero_stage": self.zero_stage,
            }
            (self.ckpt_dir / tag / STATE).write_text(json.dumps(state) + "\n")
            tmp = self.ckpt_dir / f".{COMPLETE}.tmp"
            tmp.write_text(tag + "\n")
            os.replace(tmp, self.ckpt_dir / COMPLETE)
            old = sorted(p for p in self.ckpt_dir.glob("step-*") if p.is_dir() and p.name != tag)
            for p in old[: max(0, len(old) - (self.t.keep_checkpoints - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        self.barrier()

    # ----------------------------------------------------------------------------------------- export
    def export(self) -> Path | None:
        """Gather the trained tensors to rank 0, which writes the output dir and deletes the checkpoints."""
        from .export import export_run, gather_to_rank0

        self.trained = gather_to_rank0(self.trainable, self.rank)
        out = None
        if self.rank == 0:
            record = self._record()
            peft_config = self.engine.module.peft_config["default"] if self.cfg.stage == "lora" else None
            for line in mix_lines(record.data["result"]["data"]["sources"]):
                log.info(line)
            out = export_run(self.cfg, self.trained, record, self.history, self.evals, peft_config)
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # the export is complete; optimizer states are not needed
            log.info("wrote %s", out)
        self.barrier()
        return out

    def _record(self) -> StageRecord:
        cfg, t, h = self.cfg, self.t, self.history
        record = StageRecord("train", cfg.to_dict(), started=self.started)
        if cfg.source:
            record.input_file("config", cfg.source)
        reader = CheckpointReader(cfg.model)
        record.input_model("model", reader, model_fingerprint(reader))
        manifest = json.loads(manifest_path(cfg).read_text(encoding="utf-8"))
        record.input("tokenizer", Path(cfg.model) / "tokenizer.json", sha256=manifest.get("tokenizer_sha256"))
        for section in ("train", "eval"):
            for e in manifest[section]:
                record.input(
                    f"data.{section}:{e['path']}",
                    e["path"],
                    sha256=e.get("file_sha256"),
                    documents=e["n_docs"],
                    tokens=e["n_tokens"],
                )
        record.set("data", self._mix_record())
        peak = self.acc.max_memory_allocated() if self.device.type != "cpu" else _peak_rss()
        tokens_this_run = sum(x["tokens"] for x in h if x["step"] > self.start)
        record.update(
            {
                "world_size": self.world,
                "zero_stage": self.zero_stage,
                "dtype": str(self.dtype).replace("torch.", ""),
                "steps": t.max_steps,
                "resumed_from_step": self.start,
                "trainable_parameters": self.n_trainable,
                "tokens": self.tokens_done,
                "tokens_this_run": tokens_this_run,
                "seconds_this_run": round(self.elapsed, 3),
                "tokens_per_s": round(tokens_this_run / max(self.elapsed, 1e-9), 2),
                "train_sequences": len(self.train_ds),
                "eval_sequences": len(self.eval_ds) if self.eval_ds is not None else 0,
                "first_loss": h[0]["loss"] if h else None,
                "last_loss": h[-1]["loss"] if h else None,
                "eval_loss": self.evals[-1]["loss"] if self.evals else None,
                "peak_memory_bytes_rank0": peak,
            }
        )
        if hasattr(self.objective, "record"):
            record.set("distill", self.objective.record(self.tokens_done))
        record.set("losses", h)
        record.set("eval_losses", self.evals)
        return record

    def _mix_record(self) -> dict:
        """Target share of each source and the shares of sequences and tokens the run actually trained on."""
        ds, (seqs, toks) = self.train_ds, self.source_seen
        target = normalized_weights(self.weights, [int(n) for n in ds.sizes])
        return {
            "sources": [
                {
                    "path": name,
                    "weight": w,
                    "target_share": round(float(share), 6),
                    "sequences": int(seqs[k]),
                    "tokens": int(toks[k]),
                    "sequence_share": round(float(seqs[k] / max(seqs.sum(), 1)), 6),
                    "token_share": round(float(toks[k] / max(toks.sum(), 1)), 6),
                    "available_sequences": int(ds.sizes[k]),
                }
                for k, (name, w, share) in enumerate(zip(ds.names, self.weights, target))
            ]
        }

    def close(self) -> None:
        """Free the engine and the model before the next run in the same processes."""
        self.engine.destroy()
        del self.engine, self.trainable, self.trained
        gc.collect()


def mix_lines(sources: list[dict]) -> list[str]:
    """The console view of ``ruadapt_train.json`` → ``data.sources``: per source the share it should have had and
    the shares of sequences and tokens it got (a mix that drifted from its weights is seen without opening JSON)."""
    lines = [f"data mix over {len(sources)} source{'s' if len(sources) != 1 else ''}:"]
    for s in sources:
        lines.append(
            f"  {Path(s['path']).name}: target {s['target_share']:.1%}, trained {s['sequence_share']:.1%} of "
            f"sequences ({s['sequences']:,}), {s['token_share']:.1%} of tokens ({s['tokens']:,}); "
            f"{s['available_sequences']:,} available"
        )
    return lines


def run(cfg: RunConfig, *, deepspeed: dict, resume: bool = False) -> Path | None:
    """Train according to ``cfg`` with the launcher's filled DeepSpeed config in this process (one of the
    launcher's ranks); rank 0 exports."""
    return TrainingRun(cfg, deepspeed=deepspeed, resume=resume).run()


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
