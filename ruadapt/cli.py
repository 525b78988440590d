"""The ``ruadapt`` command. Each subcommand's arguments live in ``ruadapt/commands/<name>.py``, which parses
them and calls the stage module (``swap.py``, ``lep.py``, ...); stage modules never import the CLI.

Bad input surfaces as :class:`ruadapt.errors.RuadaptError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .commands import HelpFormatter
from .errors import EXIT_USAGE, RuadaptError

# subcommand name -> module with ``register(subparsers)``; order = order in ``ruadapt --help``
COMMANDS: tuple[str, ...] = (
    "ruadapt.commands.inspect",
    "ruadapt.commands.recipe",
    "ruadapt.commands.train",
    "ruadapt.commands.data",
    "ruadapt.commands.tokenizer",
    "ruadapt.commands.trim",
    "ruadapt.commands.swap",
    "ruadapt.commands.lep",
    "ruadapt.commands.eval",
    "ruadapt.commands.gguf",
)


class _VersionAction(argparse.Action):
    """``--version``: ruadapt's version and the libraries that decide its numbers, read from package metadata
    (importing torch would add seconds to every command)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_line(), flush=True)
        parser.exit()


def version_line() -> str:
    """``ruadapt 0.1.0 (python 3.11.7, torch 2.13.0, transformers 5.24.0, ...)``."""
    from importlib import metadata

    libs = [f"python {sys.version.split()[0]}"]
    for dist in ("torch", "transformers", "tokenizers", "deepspeed", "peft"):
        try:
            libs.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            libs.append(f"{dist} not installed")
    return f"ruadapt {__version__} ({', '.join(libs)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ruadapt",
        description="Adapt a pretrained LLM to Russian by changing its vocabulary.",
        formatter_class=HelpFormatter,
        epilog="example:\n  ruadapt inspect ./Qwen2.5-7B\n\nrun 'ruadapt COMMAND --help' for each command's options",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    parser.add_argument("--version", action=_VersionAction, help="print the versions of ruadapt and its main libraries")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def _stdout_to_devnull() -> None:
    """After EPIPE on stdout, point its file descriptor at /dev/null, as the Python docs advise for SIGPIPE
    (signal module, "Note on SIGPIPE"): the interpreter flushes stdout again at exit and would otherwise print
    "Exception ignored ... BrokenPipeError" and exit 120."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests): nothing to redirect
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # --help, --version: print and exit here
    except BrokenPipeError:  # `ruadapt --version | head -c 7`
        _stdout_to_devnull()
        return 0
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    nested = next((v for k, v in sorted(vars(args).items()) if k.endswith("_command") and isinstance(v, str)), None)
    command = " ".join(filter(None, (args.command, nested)))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a piped stdout is block-buffered: a closed pipe shows here, not at exit
        return code
    except RuadaptError as e:
        for line in e.lines:
            print(f"ruadapt {command}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `ruadapt inspect ... | head`: the reader has all it wanted; before OSError, its base
        _stdout_to_devnull()
        return 0
    except OSError as e:  # disk full, permission denied, ...: name the file, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"ruadapt {command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ruadapt {command}: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
