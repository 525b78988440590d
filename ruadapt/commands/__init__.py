"""Argument parsing for each ``ruadapt`` subcommand: one module per subcommand, each with ``register(sub)``."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..eval.data import parse_named
from ..io.hub import resolve
from ..mistakes import add_allow_argument


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example blocks of epilogs as written and shows each option's default once.

    ArgumentDefaultsHelpFormatter appends "(default: X)" to every option, also where the help text already
    explains the default in words ("default: the input's largest shard") and where there is none to show
    (None, False of a flag, an empty list): "(default: None) (default: None)" noise. Here the default is
    appended only when it is a value and the help text does not mention it.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default in ("", [], ())
            or action.required
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        return text + " (default: %(default)s)"


def add_parser(
    sub: argparse._SubParsersAction, name: str, *, help: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` ends with worked examples."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + "\n".join("  " + line for line in examples.strip().splitlines()),
        formatter_class=HelpFormatter,
    )


def path_arg(text: str) -> Path:
    return Path(text).expanduser()


def model_arg(text: str) -> str:
    """A model directory or a Hugging Face repo id (``Qwen/Qwen2.5-7B``), kept as typed: ``Path`` would turn
    ``./Org/Name`` (a local path) into ``Org/Name`` (a repo id). Resolved by :func:`ruadapt.io.hub.resolve` when the
    command runs, so parsing and ``--help`` never touch the network."""
    return text


def add_revision(p: argparse.ArgumentParser) -> None:
    """``--revision``, for commands whose model options accept Hugging Face repo ids."""
    p.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="branch, tag or commit of the models given as Hugging Face repo ids (default: main); "
        "ORG/NAME@REV pins one model",
    )


def resolve_named(items: list[str], option: str, revision: str | None, what: str = "model") -> dict[str, Path]:
    """``NAME=DIR`` items (``--model``, ``--tokenizer``) with each value resolved as typed by
    :func:`ruadapt.io.hub.resolve`: a directory, or a Hub repo id."""
    names = parse_named(items, option)  # the format and duplicate checks
    typed = {item.partition("=")[0].strip(): item.partition("=")[2] for item in items}
    return {name: resolve(typed[name], f"{option} {name}=", revision=revision, what=what) for name in names}


def add_vocab_output_arguments(
    p: argparse.ArgumentParser,
    *,
    mistakes: Collection[str],
    pad: bool = True,
    shard_default: str = "the input's largest shard",
) -> None:
    """The flags of :class:`ruadapt.vocab.output.VocabOutputOptions` and ``--dry-run``, declared once for every
    vocabulary-changing command (swap, lep, trim); ``pad=False`` where the row count is not the command's choice."""
    if pad:
        p.add_argument(
            "--pad-to-multiple-of",
            type=int,
            default=None,
            metavar="N",
            help="round the row count up to N (default: the base's padding multiple)",
        )
    p.add_argument(
        "--max-shard-size",
        default=None,
        metavar="SIZE",
        help=f"output shard byte budget, e.g. 5GB (default: {shard_default})",
    )
    add_dry_run(p)
    add_allow_argument(p, mistakes)


def add_dry_run(
    p: argparse.ArgumentParser,
    plan: str = "rows copied / new / padded, bytes to write, expected peak memory",
) -> None:
    """``--dry-run``: check everything, print the plan (``plan`` says what it shows), write nothing."""
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"check the inputs, print the plan ({plan}) and write nothing",
    )


def vocab_output_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ruadapt.vocab.output.VocabOutputOptions` fields from parsed arguments (keyword arguments of a
    stage's options dataclass)."""
    return {
        "pad_to_multiple_of": getattr(args, "pad_to_multiple_of", None),
        "max_shard_size": args.max_shard_size,
        "allow": tuple(args.allow),
        "progress": not args.quiet,
    }


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a stage option's ``Literal`` type: the CLI's ``choices`` come from the stage, not a copy."""
    return typing.get_args(literal)
