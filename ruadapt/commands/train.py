"""``ruadapt train --config X.yaml [--num-gpus N] [--hostfile F] [--dry-run] [--resume]``

A thin wrapper: validates every config here (one-line errors before any process starts), then replaces
itself with the DeepSpeed launcher running ``python -m ruadapt.train`` on each rank.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from ..errors import RuadaptError
from . import add_parser, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "train",
        help="continued pretraining / SFT under DeepSpeed (stages embeddings, lora, full), resumable",
        description="Validate the run YAML(s), then exec `deepspeed ... --module ruadapt.train --config X.yaml`. "
        "Checkpoints go to OUT.work/checkpoints every train.save_steps; relaunching the same command resumes "
        "from the last complete one. The output is a plain Hugging Face model dir with ruadapt_train.json and "
        "loss.png. On a machine without GPUs set DS_ACCELERATOR=cpu (2 processes = --num-gpus 2).",
        examples="ruadapt train --config recipes/qwen2.5-7b/cpt-embeddings.yaml --num-gpus 8\n"
        "ruadapt train --config stage1.yaml --config stage2.yaml --num-gpus 8   # one start-up, two runs\n"
        "ruadapt train --config cpt.yaml --hostfile hosts.txt                  # multi-node (DeepSpeed hostfile)\n"
        "ruadapt train --config cpt.yaml --dry-run                             # print the launch command\n"
        "DS_ACCELERATOR=cpu ruadapt train --config recipes/cpu-tiny/cpt-embeddings.yaml --num-gpus 2",
    )
    p.add_argument("--config", type=path_arg, action="append", required=True,
                   help="run YAML; repeat to run several in sequence (a later one may train an earlier one's out)")
    p.add_argument("--num-gpus", type=int, default=None, help="processes per node (default: all visible GPUs)")
    p.add_argument("--hostfile", type=path_arg, default=None, help="DeepSpeed hostfile for multi-node runs")
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: DeepSpeed's 29500)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML value, e.g. --set train.max_steps=10")
    p.add_argument("--resume", action="store_true",
                   help="fail unless a complete checkpoint exists (without it, resuming is automatic)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the launch command; start nothing")
    p.set_defaults(func=run)


def launch_command(args: argparse.Namespace) -> list[str]:
    launcher = shutil.which("deepspeed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
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
    if args.master_port is not None:
        cmd += ["--master_port", str(args.master_port)]
    cmd += ["--module", "ruadapt.train"]
    for c in args.config:
        cmd += ["--config", str(Path(c).resolve())]
    for s in args.set:
        cmd += ["--set", s]
    if args.resume:
        cmd.append("--resume")
    return cmd


def run(args: argparse.Namespace) -> int:
    from ..train.config import fill_deepspeed_config, load_configs, load_deepspeed_json, validate_deepspeed_config

    configs = load_configs([str(c) for c in args.config], args.set)
    for cfg in configs:  # DeepSpeed's own check, with this run's values in place of "auto"
        # world_size 1: with no process group DeepSpeed checks train_batch_size against a world of one
        ds = fill_deepspeed_config(load_deepspeed_json(Path(cfg.deepspeed)), cfg, world_size=1, bf16=False)
        validate_deepspeed_config(ds, cfg.deepspeed)
    pending = [c for c in configs if not c.done]
    if args.resume and pending:
        from ..train.runner import last_complete

        ckpt = pending[0].work_dir / "checkpoints"
        if last_complete(ckpt) is None:
            raise RuadaptError(f"{ckpt}: --resume given but there is no complete checkpoint; run without --resume")
    cmd = launch_command(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    # tokenize (or reuse) every run's data here, before any rank exists: ranks only map the token files
    from ..train.prepare import prepare_configs

    prepare_configs(configs)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached
