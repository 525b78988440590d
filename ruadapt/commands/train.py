"""``ruadapt train --config X.yaml [--num-gpus N] [--hostfile F] [--dry-run] [--resume] [--overwrite]``

Validates every config here (one-line errors before any process starts), refuses a relaunch whose config
differs from what the earlier launch recorded, picks a free master port, then starts the DeepSpeed launcher
running ``python -m ruadapt.train`` on each rank and supervises it (:mod:`ruadapt.train.supervise`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from ..errors import RuadaptError
from ..io.hub import describe
from ..train.config import (
    LAUNCH_JSON,
    deepspeed_for_world,
    fill_deepspeed_config,
    load_configs,
    load_deepspeed_json,
    validate_deepspeed_config,
    write_launch,
)
from ..train.rundir import (
    STARTED_ENV,
    check_rerun,
    check_world_size,
    discard_run,
    hold_runs,
    last_complete,
)
from ..train.supervise import (
    PORT_IN_USE_EXIT,
    PORT_RELAUNCHES,
    Stopped,
    master_port,
    pick_master_port,
    prepare_extension,
    remove_allreduce_buffers,
    stop_on_signals,
    supervise,
    supervisor_env,
)
from . import add_parser, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "train",
        help="continued pretraining / SFT under DeepSpeed (stages embeddings, lora, full), resumable",
        description="Validate the run YAML(s), then run `deepspeed ... --module ruadapt.train --config X.yaml` and "
        "supervise it. Checkpoints go to OUT.work/checkpoints every train.save_steps; relaunching the same command "
        "resumes from the last complete one (a changed config is refused: --overwrite starts over). SIGINT/SIGTERM "
        "stop every rank after its current step (exit 130/143), keeping the last complete checkpoint. The output "
        "is a plain Hugging Face model dir with ruadapt_train.json and loss.png. A live run holds OUT.work/lock: a "
        "second launch on the same out is refused. On a machine without GPUs set DS_ACCELERATOR=cpu (2 processes = "
        "--num-gpus 2; DeepSpeed then builds a C++ op once per environment, so a C++ compiler is needed).",
        examples="ruadapt recipe cp qwen2.5-7b runs/q7 --set CORPUS=/data/ru.txt   # a shipped recipe's YAMLs to start "
        "from\n"
        "ruadapt train --config runs/q7/cpt-embeddings.yaml --num-gpus 8\n"
        "ruadapt train --config stage1.yaml --config stage2.yaml --num-gpus 8   # one start-up, two runs\n"
        "ruadapt train --config cpt.yaml --hostfile hosts.txt                  # multi-node (DeepSpeed hostfile)\n"
        "ruadapt train --config cpt.yaml --dry-run                             # print the launch command\n"
        "ruadapt train --config cpt.yaml --set train.max_steps=2000 --overwrite # changed config: start over\n"
        "DS_ACCELERATOR=cpu ruadapt train --config recipes/cpu-tiny/cpt-embeddings.yaml --num-gpus 2",
    )
    p.add_argument(
        "--config",
        type=path_arg,
        action="append",
        required=True,
        help="run YAML; repeat to run several in sequence (a later one may train an earlier one's out)",
    )
    p.add_argument("--num-gpus", type=int, default=None, help="processes per node (default: all visible GPUs)")
    p.add_argument("--hostfile", type=path_arg, default=None, help="DeepSpeed hostfile for multi-node runs")
    p.add_argument(
        "--master-port",
        type=int,
        default=None,
        help="rendezvous port (default: a random free one from 29500 up to the kernel's ephemeral ports, re-picked "
        "if taken at the rendezvous; with --hostfile DeepSpeed's 29500)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a YAML value, e.g. --set train.max_steps=10",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="fail unless a complete checkpoint exists (without it, resuming is automatic)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an earlier run of these configs whose config differs (its out, checkpoints and "
        "logs; the token cache stays) and start it over",
    )
    p.add_argument(
        "--stop-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after SIGINT/SIGTERM, how long the ranks may take to finish their step before every process "
        "of the run is SIGKILLed",
    )
    p.add_argument("--dry-run", action="store_true", help="validate and print the launch command; start nothing")
    p.set_defaults(func=run)


def launch_command(args: argparse.Namespace, launch: Path, port: int | None) -> list[str]:
    """The DeepSpeed launcher's command line: every rank reads the runs still to do from ``launch``."""
    launcher = shutil.which(
        "deepspeed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if launcher is None:
        raise RuadaptError("the `deepspeed` launcher is not on PATH; install deepspeed in this environment")
    cmd = [launcher]
    if args.hostfile is not None:
        if not args.hostfile.is_file():
            raise RuadaptError(f"{args.hostfile}: --hostfile not found")
        cmd += ["--hostfile", str(args.hostfile)]
    if args.num_gpus is not None:
        if args.num_gpus < 1:
            raise RuadaptError(f"--num-gpus {args.num_gpus}: must be at least 1")
        cmd += ["--num_gpus", str(args.num_gpus)]
    if port is not None:
        cmd += ["--master_port", str(port)]
    cmd += ["--module", "ruadapt.train", "--launch-json", str(launch.resolve())]
    return cmd


def check_reruns(configs: list, overwrite: bool, dry_run: bool) -> list:
    """The configs still to run. A config whose earlier launch recorded other values is refused, or with
    ``--overwrite`` discarded together with every later config that trains on its output."""
    redo: set[Path] = set()
    pending = []
    for cfg in configs:
        try:
            check_rerun(cfg)
            stale = Path(cfg.model).resolve() in redo  # trains on an output that is being redone
        except RuadaptError:
            if not overwrite:
                raise
            stale = True
        if stale and not dry_run:
            for p in discard_run(cfg):
                print(f"ruadapt train: --overwrite: removed {p}", file=sys.stderr)
        if stale:
            redo.add(cfg.out_path.resolve())
        elif cfg.done:
            print(f"ruadapt train: {cfg.out} is already finished with this config; skipping", file=sys.stderr)
            continue
        pending.append(cfg)
    return pending


def run(args: argparse.Namespace) -> int:
    """Every phase under one signal rule (:func:`ruadapt.train.supervise.stop_on_signals`): a stop while
    validating or preparing data ends here with the same one line and 128 + signal as a stop while training."""
    state: dict = {"configs": None}  # the runs of this launch, once known (for the stop message)
    with stop_on_signals():
        try:
            return _run(args, state)
        except Stopped as e:
            print(stop_message(state["configs"], e.signum), file=sys.stderr)
            return 128 + e.signum


def _run(args: argparse.Namespace, state: dict) -> int:
    started = time.time()
    if args.stop_grace < 0:
        raise RuadaptError(f"--stop-grace {args.stop_grace}: must not be negative")
    configs = load_configs([str(c) for c in args.config], args.set)  # every problem of every config, or none
    state["configs"] = configs
    filled = []
    for cfg in configs:  # filled once here for every rank; DeepSpeed's own check with this run's values
        ds = fill_deepspeed_config(load_deepspeed_json(Path(cfg.deepspeed)), cfg)
        # world_size 1: with no process group DeepSpeed checks train_batch_size against a world of one
        validate_deepspeed_config(deepspeed_for_world(ds, cfg, world_size=1, bf16=False), cfg.deepspeed)
        filled.append((cfg, ds))
    with ExitStack() as stack:
        if not args.dry_run:  # a run owns its folder from here on: before anything is discarded or prepared
            stack.enter_context(hold_runs(configs))
        pending = check_reruns(configs, args.overwrite, args.dry_run)  # the one rerun check of the launch
        state["configs"] = pending
        if not pending:
            return 0
        if args.resume:
            ckpt = pending[0].work_dir / "checkpoints"
            if last_complete(ckpt) is None:
                raise RuadaptError(f"{ckpt}: --resume given but there is no complete checkpoint; run without --resume")
        todo = [(cfg, ds) for cfg, ds in filled if any(cfg is p for p in pending)]
        if args.num_gpus is not None and args.hostfile is None:  # the world size is known here: refuse before launch
            for cfg, ds in todo:
                check_world_size(cfg, args.num_gpus, int(ds.get("zero_optimization", {}).get("stage", 0)))
        launch_json = pending[0].work_dir / LAUNCH_JSON
        port = master_port(args.master_port, args.hostfile)
        cmd = launch_command(args, launch_json, port)
        if args.dry_run:
            print(shlex.join(cmd))
            return 0
        env = rank_env(pending, started)
        building = prepare_extension(env)  # a missing compiler fails here, before the data is prepared
        # tokenize (or reuse) every run's data here, after every check and before any rank exists: ranks only map
        # the token files, so none waits at a barrier while another one tokenizes
        from ..train.prepare import (
            prepare_configs,  # numpy, tokenizers: not for every `ruadapt` command
        )

        prepare_configs(pending, overwrite=args.overwrite)
        write_launch(launch_json, todo, resume=args.resume)
        return launch(args, pending, launch_json, port, env, building)


def launch(
    args: argparse.Namespace,
    pending: list,
    launch_json: Path,
    port: int | None,
    env: dict[str, str],
    building: str | None,
) -> int:
    """Supervise the launcher; when rank 0 found a default port taken at the rendezvous (another job bound it
    after we checked it), relaunch on a new random port, a few times."""
    cmd = launch_command(args, launch_json, port)
    for attempt in range(PORT_RELAUNCHES + 1):
        if building:
            print(building, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            code, sig = supervise(cmd, grace_s=args.stop_grace, env=env)
        finally:  # the run's processes are gone: free what DeepSpeed's CPU allreduce left in /dev/shm
            if port is not None:
                remove_allreduce_buffers(port)
        if sig is not None:
            print(stop_message(pending, sig), file=sys.stderr)
            return code
        if code != PORT_IN_USE_EXIT or port is None:
            return code
        if args.master_port is not None:
            raise RuadaptError(
                f"--master-port {port}: another process took the port before the rendezvous bound it; "
                "choose another or leave --master-port out to get a free one"
            )
        if attempt == PORT_RELAUNCHES:
            break
        old, port = port, pick_master_port(avoid={port})
        print(
            f"ruadapt train: the rendezvous port {old} was taken by another process before rank 0 bound it; "
            f"relaunching on port {port}",
            file=sys.stderr,
        )
        cmd = launch_command(args, launch_json, port)
        building = None
    raise RuadaptError(
        f"the rendezvous port was taken {PORT_RELAUNCHES + 1} times in a row by other processes; "
        "pass a --master-port reserved for this run"
    )


def rank_env(configs: list, started: float) -> dict[str, str]:
    """The ranks' environment: ours, plus when the user started this launch (their records say so, not when they
    began), and offline when a model came from the Hugging Face Hub, so every rank reads the snapshot resolved
    here (through the cache's refs) instead of each asking the Hub again, which may have moved on since."""
    env = {**os.environ, STARTED_ENV: os.environ.get(STARTED_ENV, str(started)), **supervisor_env()}
    if any(describe(c.model) for c in configs):
        env["HF_HUB_OFFLINE"] = "1"
    return env


def stop_message(pending: list | None, sig: int) -> str:
    """The one line after a stop in any phase: what was kept and the command that continues (``pending`` None:
    stopped before the configs were read)."""
    import signal

    again = "ruadapt " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else "the same ruadapt train command"
    name = signal.Signals(sig).name
    if pending is None:
        return f"ruadapt train: stopped by {name} before any run started; nothing was written"
    left = [c for c in pending if not c.done]
    if not left:
        return f"ruadapt train: {name} came after every run had finished; nothing to resume"
    ckpt = left[0].work_dir / "checkpoints"
    tag = last_complete(ckpt)
    kept = f"{ckpt / tag} is the last complete checkpoint" if tag else "no checkpoint had been written yet"
    return f"ruadapt train: stopped by {name}; {kept}; run `{again}` to resume"
