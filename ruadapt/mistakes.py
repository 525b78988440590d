"""Likely mistakes: inputs that are valid but almost never what the user meant, caught before any work.

Each has a name. By default it is an error that says what was found, what to do instead and which
``--allow NAME`` goes on anyway (then it is logged as a warning), so a slip such as passing the base model as
``--instruct`` fails in a second instead of producing a plausible-looking output after an hour.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Collection

from .errors import RuadaptError

log = logging.getLogger(__name__)

# name -> what it allows (shown by --help of the commands that check it)
MISTAKES: dict[str, str] = {
    "same-tokenizer": "swap --tokenizer with the vocabulary the model already has",
    "foreign-tokenizer": "swap --tokenizer whose normalizer/pre-tokenizer differ from the model's own tokenizer",
    "same-model": "lep --instruct that is the same checkpoint as --base",
    "adapted-is-base": "lep --adapted that is the same checkpoint as --base",
    "json-text": "a plain-text corpus whose lines are JSON objects",
}


def refuse(name: str, allowed: Collection[str], message: str, instead: str, how: str = "") -> None:
    """Raise the one-line error of mistake ``name``, unless ``--allow name`` was given (then warn and go on).
    ``how`` says how to allow it where that is not a ``--allow`` option (a training YAML: ``data.allow``)."""
    if name in allowed:
        log.warning("%s (going on: %s)", message, how or f"--allow {name}")
        return
    raise RuadaptError(f"{message}; {instead}, or {how or f'pass --allow {name}'} if this is what you want")


def add_allow_argument(parser: argparse.ArgumentParser, names: Collection[str]) -> None:
    """``--allow NAME`` (repeatable) for the likely mistakes a command checks."""
    listed = "; ".join(f"{n}: {MISTAKES[n]}" for n in names)
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=sorted(names),
        metavar="NAME",
        help=f"go on despite a likely mistake ({listed})",
    )
