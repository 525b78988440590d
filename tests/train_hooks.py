"""Step callbacks for tests, loaded by the ranks through ``RUADAPT_TRAIN_CALLBACKS=train_hooks:NAME`` (with
tests/ on PYTHONPATH), so fault injection lives here and not in the production loop."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path


def kill_at_step(run, step: int) -> None:
    """``RUADAPT_TEST_KILL_AT=[OUT_NAME:]STEP``: SIGKILL rank 0 right after that optimizer step (of the run
    whose out dir has that name, when given) — a crash with no chance to clean up."""
    name, _, at = os.environ.get("RUADAPT_TEST_KILL_AT", "").rpartition(":")
    if at and step == int(at) and run.rank == 0 and (not name or name == run.cfg.out_path.name):
        logging.getLogger("ruadapt.train").warning("test hook: killing rank 0 with SIGKILL after step %d", step)
        os.kill(os.getpid(), signal.SIGKILL)


def mark_step(run, step: int) -> None:
    """Rank 0 writes the step just finished into ``RUADAPT_TEST_STEP_FILE`` and then sleeps
    ``RUADAPT_TEST_STEP_SLEEP`` seconds, so a test can signal the run at a known point of a slow-enough loop."""
    if run.rank == 0:
        path = Path(os.environ["RUADAPT_TEST_STEP_FILE"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(step))
        os.replace(tmp, path)
        time.sleep(float(os.environ.get("RUADAPT_TEST_STEP_SLEEP", "0")))
