"""Progress a user can plan with (rank 0 only): a log line every ``train.log_steps`` with loss, lr, tokens/s,
elapsed time and ETA, and the same scalars in TensorBoard / Weights & Biases when ``train.report_to`` asks.

Rates and the ETA are measured over the steps of *this* launch (a resumed run does not count the time
before the interruption), so they describe the machine the run is on now.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .config import RunConfig

log = logging.getLogger("ruadapt.train")


def hms(seconds: float) -> str:
    """``h:mm:ss`` (hours unbounded: a 30-hour run reads 30:00:00, not 1 day, 6:00:00)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Log lines and scalar writers of one run; ``start`` at the first step of this launch."""

    def __init__(self, cfg: RunConfig, *, first_step: int, enabled: bool):
        self.cfg = cfg
        self.first_step = first_step
        self.enabled = enabled  # rank 0
        self.t0 = time.perf_counter()
        self.tokens = 0  # this launch
        self.writers: list[Any] = []
        if enabled:
            self.writers = [_open_writer(name, cfg) for name in cfg.train.report_to]

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def step_done(self, step: int, *, loss: float, lr: float, tokens: int) -> None:
        """After optimizer step ``step`` (1-based): count its tokens; every log_steps (and at the first and
        last step) log a line and write the scalars."""
        self.tokens += tokens
        t = self.cfg.train
        if not self.enabled or not (step % t.log_steps == 0 or step in (self.first_step + 1, t.max_steps)):
            return
        elapsed = self.elapsed()
        rate = self.tokens / max(elapsed, 1e-9)
        eta = elapsed / max(step - self.first_step, 1) * (t.max_steps - step)
        log.info(
            "step %d/%d  loss %.4f  lr %.3g  %.0f tok/s  elapsed %s  eta %s",
            step,
            t.max_steps,
            loss,
            lr,
            rate,
            hms(elapsed),
            hms(eta),
        )
        self.scalars(
            step,
            {
                "train/loss": loss,
                "train/lr": lr,
                "train/tokens_per_s": rate,
                "train/elapsed_s": elapsed,
                "train/eta_s": eta,
            },
        )

    def eval_done(self, step: int, loss: float, message: str = "step %d  eval loss %.4f") -> None:
        if self.enabled:
            log.info(message, step, loss)
            self.scalars(step, {"eval/loss": loss})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for w in self.writers:
            w.write(step, values)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []


class _TensorBoard:
    """torch.utils.tensorboard into OUT.work/tensorboard (the output dir appears only when the run ends)."""

    def __init__(self, cfg: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = cfg.work_dir / "tensorboard"
        self.w = SummaryWriter(log_dir=str(self.dir), purge_step=None)

    def write(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()  # a watcher sees the step now, and a killed run keeps what it logged

    def close(self) -> None:
        self.w.close()


class _Wandb:
    """wandb run named after the output dir (WANDB_MODE / WANDB_PROJECT from the environment apply)."""

    def __init__(self, cfg: RunConfig):
        import os

        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ruadapt"),
            name=Path(cfg.out).name,
            config=cfg.to_dict(),
            dir=str(cfg.work_dir),
        )

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _open_writer(name: str, cfg: RunConfig) -> Any:
    return {"tensorboard": _TensorBoard, "wandb": _Wandb}[name](cfg)
