"""Argument parsing for each ``ruadapt`` subcommand: one module per subcommand, each with ``register(sub)``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` ends with worked examples."""
    from ..cli import HelpFormatter

    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + "\n".join("  " + line for line in examples.strip().splitlines()),
        formatter_class=HelpFormatter,
    )


def path_arg(text: str) -> Path:
    return Path(text).expanduser()
