"""Entry point of each DeepSpeed rank: ``deepspeed ... --module ruadapt.train --launch-json OUT.work/launch.json``
(the launcher spells it ``--module``; it has no ``-m``).

Start runs with ``ruadapt train``: it reads and validates the YAMLs once, checks an earlier launch's config once,
fills the DeepSpeed config once, writes all of it to ``launch.json`` (:func:`ruadapt.train.config.write_launch`),
starts the launcher and supervises it (signals, exit codes). A rank reads that file and trains; it checks
nothing the launcher checked. Exit codes here: 0 done, 2 bad input, 128+signal when stopped by SIGTERM/SIGINT
(every rank stops after the same step; the last complete checkpoint stays, nothing else is written).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from ..errors import EXIT_USAGE, RuadaptError
from .config import read_launch
from .supervise import PORT_IN_USE_EXIT, is_port_in_use, keep_ignored, watch_supervisor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ruadapt.train", description=__doc__)
    # not --launch: the deepspeed launcher would take it for an abbreviation of its --launcher
    p.add_argument(
        "--launch-json",
        required=True,
        type=Path,
        help="the launch.json `ruadapt train` wrote: the resolved runs, in order, with DeepSpeed configs",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from .runner import StopRequested, install_stop_handlers, run

    # a SIGINT inherited as ignored (`ruadapt train` started as a script's background job) stays ignored here too;
    # SIGTERM is always honoured: it is how `ruadapt train` stops the ranks
    inherited = [signal.SIGINT] if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else []
    install_stop_handlers()
    keep_ignored(inherited)
    watch_supervisor()  # stop when `ruadapt train` is gone, SIGKILL included
    try:
        runs, resume = read_launch(args.launch_json)
        for cfg, ds in runs:
            run(cfg, deepspeed=ds, resume=resume)
            resume = False  # --resume concerns the run that was interrupted, not the ones after it
    except RuadaptError as e:
        for line in e.lines:
            print(f"ruadapt train: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except StopRequested as e:
        return 128 + e.signum
    except Exception as e:
        if not is_port_in_use(e):
            raise
        # another job bound the rendezvous port after `ruadapt train` checked it: a code it re-picks the port on
        print(
            f"ruadapt train: error: the rendezvous port {os.environ.get('MASTER_PORT', '?')} is taken by another "
            f"process ({type(e).__name__})",
            file=sys.stderr,
        )
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
