"""Entry point of each DeepSpeed rank: ``deepspeed --num_gpus N --module ruadapt.train --config X.yaml [--resume]``
(the launcher spells it ``--module``; it has no ``-m``).

Use ``ruadapt train`` on the command line: it validates the config first, starts the launcher and supervises
it (signals, exit codes). Exit codes here: 0 done, 2 bad input, 128+signal when stopped by SIGTERM/SIGINT
(every rank stops after the same step; the last complete checkpoint stays, nothing else is written).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..errors import EXIT_USAGE, RuadaptError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ruadapt.train", description=__doc__)
    p.add_argument("--config", required=True, action="append",
                   help="run YAML (see recipes/*/); repeat to run several configs one after another in the same "
                   "processes (one launcher start-up for, e.g., CPT stage 1 and stage 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a YAML value")
    p.add_argument("--resume", action="store_true", help="require a complete checkpoint to resume from")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from .config import load_configs, validate
    from .rundir import check_rerun
    from .runner import StopRequested, install_stop_handlers, run
    from .supervise import PORT_IN_USE_EXIT, is_port_in_use, keep_ignored, watch_supervisor

    # a SIGINT inherited as ignored (`ruadapt train` started as a script's background job) stays ignored here too;
    # SIGTERM is always honoured: it is how `ruadapt train` stops the ranks
    inherited = [signal.SIGINT] if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else []
    install_stop_handlers()
    keep_ignored(inherited)
    watch_supervisor()  # stop when `ruadapt train` is gone, SIGKILL included
    try:
        configs = load_configs(args.config, args.set)
        resume = args.resume
        for cfg in configs:
            if cfg.done:
                check_rerun(cfg)  # a finished run with another config is an error, not a skip
                print(f"ruadapt train: {cfg.out} is already finished (ruadapt_train.json); skipping", file=sys.stderr)
                continue
            validate(cfg, check_files=True)  # an earlier run may just have produced its model
            run(cfg, resume=resume)
            resume = False  # --resume concerns the run that was interrupted, not the ones after it
    except RuadaptError as e:
        print(f"ruadapt train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StopRequested as e:
        return 128 + e.signum
    except Exception as e:
        if not is_port_in_use(e):
            raise
        # another job bound the rendezvous port after `ruadapt train` checked it: a code it re-picks the port on
        print(f"ruadapt train: error: the rendezvous port {os.environ.get('MASTER_PORT', '?')} is taken by another "
              f"process ({type(e).__name__})", file=sys.stderr)
        return PORT_IN_USE_EXIT
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written, renamed and flushed by now; the interpreter's own teardown of torch/DeepSpeed
    # (thread pools, extension modules) takes 10+ s per rank on a busy CPU and does nothing we need.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
