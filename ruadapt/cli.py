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

from .errors import EXIT_USAGE, RuadaptError

# subcommand name -> module with ``register(subparsers)``; order = order in ``ruadapt --help``
COMMANDS: tuple[str, ...] = (
    "ruadapt.commands.inspect",
    "ruadapt.commands.train",
    "ruadapt.commands.data",
    "ruadapt.commands.tokenizer",
    "ruadapt.commands.trim",
    "ruadapt.commands.swap",
    "ruadapt.commands.lep",
    "ruadapt.commands.eval",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example blocks of epilogs as written and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ruadapt",
        description="Adapt a pretrained LLM to Russian by changing its vocabulary.",
        formatter_class=HelpFormatter,
        epilog="example:\n  ruadapt inspect ./Qwen2.5-7B\n\nrun 'ruadapt COMMAND --help' for each command's options",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    nested = next((v for k, v in sorted(vars(args).items()) if k.endswith("_command") and isinstance(v, str)), None)
    command = " ".join(filter(None, (args.command, nested)))
    try:
        return int(args.func(args) or 0)
    except RuadaptError as e:
        print(f"ruadapt {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # disk full, permission denied, ...: name the file, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"ruadapt {command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `ruadapt inspect ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"ruadapt {command}: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
