"""``ruadapt data prepare``: tokenize a run's data into the token cache, without training."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

from ..train.config import load_configs
from ..train.rundir import hold_runs
from ..train.supervise import Stopped, stop_on_signals
from . import add_parser, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "data",
        help="prepare training data: streaming parallel tokenization into memory-mapped token files",
        description="Training data outside training: what `ruadapt train` does before it launches DeepSpeed.",
        examples="ruadapt data prepare --config runs/q7/cpt-embeddings.yaml   # from `ruadapt recipe cp qwen2.5-7b "
        "runs/q7`",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    d = add_parser(
        dsub,
        "prepare",
        help="tokenize every data source of the run YAML(s) into the token cache, and write OUT.work/data.json",
        description="Reads every data.train / data.eval source of each run YAML (plain text, JSONL, Parquet; .gz / "
        ".zst), tokenizes it on all cores with the run's model tokenizer (CPT: EOS after each document; SFT: chat "
        "template, assistant-token mask) and writes token files into data.cache_dir (default "
        "<dir of out>/.ruadapt-cache/tokens), keyed by a content hash of file, tokenizer and options, so "
        "`ruadapt train` with the same YAML reuses them. Run it on a CPU node, then train elsewhere on the same "
        "file system. Memory stays bounded whatever the corpus size; a killed run leaves no entry that a later run "
        "trusts. The token format is documented in ruadapt/train/tokenfile.py and docs/commands.md (Training data).",
        examples="ruadapt data prepare --config runs/q7/cpt-embeddings.yaml\n"
        "ruadapt data prepare --config cpt.yaml --set data.cache_dir=/scratch/tokens\n"
        "RUADAPT_PREPARE_WORKERS=32 ruadapt data prepare --config cpt.yaml     # tokenizing processes (default: all "
        "cores)",
    )
    d.add_argument(
        "--config",
        type=path_arg,
        action="append",
        required=True,
        help="run YAML (as for ruadapt train); repeat for several runs",
    )
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a YAML value")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Under ``ruadapt train``'s signal rule: SIGINT/SIGTERM/SIGHUP stop the workers too, with one line and
    128 + signal; a token file being written is removed, never published. Holds each run's lock meanwhile."""
    from ..train.prepare import (
        prepare_configs,  # numpy, tokenizers: not for every `ruadapt` command
    )

    with stop_on_signals():
        try:
            configs = load_configs([str(c) for c in args.config], args.set)
            with hold_runs(configs, "ruadapt data prepare"):
                for cfg, manifest in prepare_configs(configs, skip_done=False):
                    print(f"{cfg.source}: data of {cfg.out} -> {cfg.work_dir / 'data.json'}")
                    for section in ("train", "eval"):
                        for e in manifest[section]:
                            print(
                                f"  {section:5s} {e['path']}: {e['n_docs']:,} documents, {e['n_tokens']:,} tokens  "
                                f"[{e['entry']}]"
                            )
        except Stopped as e:
            again = (
                "ruadapt " + shlex.join(sys.argv[1:]) if sys.argv[1:3] == ["data", "prepare"] else "the same command"
            )
            print(
                f"ruadapt data prepare: stopped by {signal.Signals(e.signum).name}; no half-written token file was "
                f"kept (finished ones stay in the cache); run `{again}` to continue",
                file=sys.stderr,
            )
            return 128 + e.signum
    return 0
