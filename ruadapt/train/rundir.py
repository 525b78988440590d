"""What a run leaves on disk between launches, and whether a relaunch may continue it (no torch imported).

``OUT.work/run.json`` records the config of an unfinished run, ``OUT/ruadapt_train.json`` the config of a
finished one. A relaunch with a different config must not silently resume someone else's checkpoints, nor
silently skip a finished run the user meant to change (issue 15): :func:`check_rerun` compares the two and
names the keys that differ. Bookkeeping keys (how often to log, save, evaluate, how many checkpoints to keep,
where to report) may change between launches because they do not change the weights.

A run owns its folder (issue 25): :func:`hold_runs` takes an exclusive ``flock`` on ``OUT.work/lock`` before
anything is prepared or discarded, and keeps it until ``ruadapt train`` (or ``ruadapt data prepare``) ends. A
second launch on the same ``out`` is refused in one line naming the holder's pid and host; the kernel releases
the lock when the holder dies, however it dies, so a crashed run never blocks its own relaunch.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import RuadaptError
from ..schema import build
from .config import RunConfig, TrainConfig

COMPLETE = "complete"
STATE = "ruadapt_state.json"
RUN_JSON = "run.json"
LOCK = "lock"  # in OUT.work: held (flock) by the live launch of the run; its text names the holder
TRAIN_RECORD = "ruadapt_train.json"
STARTED_ENV = "RUADAPT_TRAIN_STARTED"  # set by `ruadapt train` for the ranks: when the user launched the run
# train.* settings that may differ between launches of one run (they do not change the weights)
RESUME_FREE = ("save_steps", "eval_steps", "log_steps", "keep_checkpoints", "report_to")


def last_complete(ckpt_dir: Path) -> str | None:
    """Tag of the newest checkpoint every rank finished writing, or None."""
    p = Path(ckpt_dir) / COMPLETE
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if (Path(ckpt_dir) / tag / STATE).is_file() else None


def comparable(cfg: RunConfig) -> dict[str, Any]:
    """The config as recorded in run.json: everything that decides the weights."""
    d = cfg.to_dict()
    for k in RESUME_FREE:
        d["train"].pop(k, None)
    d["data"].pop("cache_dir", None)  # where token files live changes no token (a changed file is caught by its hash)
    return d


def _normalised(recorded: dict[str, Any]) -> dict[str, Any] | None:
    """A recorded config with today's defaults filled in (a key added since is not a difference), or None
    when it no longer parses (a key removed since): then the whole config counts as changed."""
    try:
        train_keys = {f for f in TrainConfig.__dataclass_fields__}
        raw = json.loads(json.dumps(recorded))
        raw["train"] = {k: v for k, v in raw.get("train", {}).items() if k in train_keys}
        return comparable(build(RunConfig, raw, ""))
    except (RuadaptError, TypeError, AttributeError):
        return None


def config_diff(recorded: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Dotted names of the keys whose values differ between a recorded config and ``cfg`` (sorted)."""
    old, new = _normalised(recorded), comparable(cfg)
    if old is None:
        return ["(all: the recorded config cannot be read by this ruadapt version)"]

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [k for key in sorted(set(a) | set(b)) for k in walk(a.get(key), b.get(key), f"{prefix}{key}.")]
        return [] if a == b else [prefix.rstrip(".")]

    return walk(old, new, "")


def recorded_config(cfg: RunConfig) -> tuple[Path, dict[str, Any]] | None:
    """(file, config) of what an earlier launch of this run recorded: the finished run's record, else the
    unfinished run's run.json when it left a complete checkpoint (without one nothing would be resumed)."""
    if cfg.done:
        path = cfg.out_path / TRAIN_RECORD
        return path, _read(path).get("options", {})
    run_json = cfg.work_dir / RUN_JSON
    if run_json.is_file() and last_complete(cfg.work_dir / "checkpoints"):
        return run_json, _read(run_json)
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # unreadable: counts as another config (see config_diff), so --overwrite can replace it
    return data if isinstance(data, dict) else {}


def check_rerun(cfg: RunConfig) -> None:
    """One-line error when an earlier launch of ``cfg.out`` used another config (finished or not)."""
    found = recorded_config(cfg)
    if found is None:
        return
    path, recorded = found
    keys = config_diff(recorded, cfg)
    if keys:
        state = "finished" if cfg.done else "has checkpoints"
        shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        raise RuadaptError(
            f"{cfg.source or path}: out {cfg.out} {state} with another config ({path} differs in {shown}); "
            "add --overwrite to discard that run and start over, or choose another out"
        )


def discard_run(cfg: RunConfig) -> list[Path]:
    """Delete an earlier run's output, checkpoints and logs (``--overwrite``) after checking they are
    ruadapt's; the token cache stays (it is keyed by content, so it is still valid)."""
    out, work = cfg.out_path, cfg.work_dir
    if out.exists() and not (out / TRAIN_RECORD).is_file():
        raise RuadaptError(
            f"{out}: --overwrite refuses to delete it: it holds no {TRAIN_RECORD} (not a ruadapt train output)"
        )
    removed = []
    # only a work dir with run.json is a run's (without it there are no checkpoints to discard)
    ours = [work / "checkpoints", work / "tensorboard", work / RUN_JSON] if (work / RUN_JSON).is_file() else []
    for p in [out, *ours]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(p)
    return removed


def checkpoint_world_size(ckpt_dir: Path, tag: str) -> int | None:
    """How many processes wrote checkpoint ``tag``: ``world_size`` in its state file, else the number of DeepSpeed
    ZeRO optimizer partitions in it (``zero_pp_rank_R_mp_rank_00_optim_states.pt``, one per data-parallel
    process); None when neither says (a checkpoint without ZeRO partitions loads at any world size)."""
    d = Path(ckpt_dir) / tag
    state = _read(d / STATE) if (d / STATE).is_file() else {}
    if isinstance(state.get("world_size"), int):
        return state["world_size"]
    parts = list(d.glob("*zero_pp_rank_*_optim_states.pt"))
    return len(parts) or None


def check_world_size(cfg: RunConfig, world: int, zero_stage: int) -> None:
    """Refuse, in one line and before anything is loaded, to resume a ZeRO checkpoint at another world size.

    ZeRO (stages 1–3) splits the optimizer state (and with stage 3 the weights) into one partition per
    data-parallel process; DeepSpeed then fails deep inside ``load_checkpoint`` with a 36-line
    ``ZeRORuntimeException``. Re-sharding (DeepSpeed's universal checkpoint) is not wired in yet, so the
    relaunch must use the world size the checkpoint was written with. Without ZeRO the state is whole and any
    world size resumes."""
    ckpt = cfg.work_dir / "checkpoints"
    tag = last_complete(ckpt)
    if tag is None or zero_stage < 1:
        return
    saved = checkpoint_world_size(ckpt, tag)
    if saved is not None and saved != world:
        raise RuadaptError(
            f"{ckpt / tag}: written by {saved} processes under ZeRO stage {zero_stage}, which splits the optimizer "
            f"state per process; it cannot be resumed by {world} — relaunch with {saved} processes in all "
            f"(e.g. --num-gpus {saved} on one node), or delete {ckpt} to start the run over"
        )


@contextmanager
def hold_runs(configs: list[RunConfig], command: str = "ruadapt train") -> Iterator[None]:
    """Hold the lock of every run of ``configs`` (distinct work dirs, in sorted order) for the block; a run that
    another live process holds is a one-line error naming its pid and host, raised before anything is locked
    for long, prepared or deleted. The lock files stay (removing one would let two processes lock two files)."""
    held: list[int] = []
    try:
        for work in sorted({cfg.work_dir.resolve(): cfg for cfg in configs}.items()):
            held.append(_lock_run(work[0], work[1], command))
        yield
    finally:
        for fd in held:
            os.close(fd)  # closing the only descriptor releases the flock


def _lock_run(work: Path, cfg: RunConfig, command: str) -> int:
    work.mkdir(parents=True, exist_ok=True)
    path = work / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # not inherited by the launcher
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RuadaptError(
            f"{cfg.out}: another launch is running this run ({holder}; lock {path}); wait for it to end or stop it "
            "(kill -INT its pid), or choose another out"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    text = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "argv": sys.argv[1:],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    """``pid N on host H since T (command)`` from a held lock file (the holder wrote it after locking)."""
    try:
        d = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        return f"{d['command']} pid {d['pid']} on host {d['host']} since {d['since']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that has not yet written its pid"
