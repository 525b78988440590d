"""Atomic outputs: every stage writes into a temporary folder (or file) next to its target and renames it
into place only when everything succeeded, so a crash (even SIGKILL) never leaves a half-written output.

Stale temporaries from killed runs are recognised by the PID in their name and removed by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import RuadaptError

log = logging.getLogger(__name__)

_TMP_MARK = ".ruadapt-tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_output_dir(out: Path, inputs: Sequence[Path] = (), *, option: str = "--out") -> Path:
    """Refuse an output that exists and is not empty, or that is an input, inside one, or contains one."""
    out = Path(out).expanduser().resolve()
    _refuse_inputs(out, inputs, option, "choose a new directory", contains=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RuadaptError(f"{out}: {option} exists and is not empty; remove it or choose a new directory")
    _refuse_uncreatable(out, option)
    return out


def _refuse_inputs(out: Path, inputs: Sequence[Path], option: str, instead: str, *, contains: bool) -> None:
    """``out`` (resolved) must not be an input or lie inside one; with ``contains`` not hold one either."""
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp).expanduser().resolve()
        if out == inp or _is_within(out, inp) or (contains and _is_within(inp, out)):
            raise RuadaptError(f"{out}: {option} must not be an input or lie inside one ({inp}); {instead}")


def _refuse_uncreatable(out: Path, option: str) -> None:
    """The nearest existing ancestor of ``out`` must be a directory we can create the output in."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RuadaptError(f"{out}: {option} cannot be created ({parent} is not a writable directory)")


def clean_stale_tmp(out: Path) -> None:
    """Remove temporary folders left beside ``out`` by runs that were killed."""
    parent = out.parent
    if not parent.is_dir():
        return
    prefix = f".{out.name}{_TMP_MARK}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-")[0]
        if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        log.info("removing stale temporary output %s", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _fresh_tmp(out: Path, option: str) -> Path:
    """An empty temporary folder beside ``out`` (same file system, so a rename moves it), named with our PID."""
    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(out)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise RuadaptError(f"{out}: {option} cannot be created ({e.strerror})") from None
    return tmp


@contextlib.contextmanager
def atomic_output_dir(out: Path, inputs: Sequence[Path] = (), *, option: str = "--out") -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success rename it to ``out``, on error remove it."""
    out = check_output_dir(out, inputs, option=option)
    tmp = _fresh_tmp(out, option)
    try:
        yield tmp
        # re-check: something may have appeared at the target while we worked
        if out.exists():
            if any(out.iterdir()):
                raise RuadaptError(f"{out}: appeared and is not empty while ruadapt was writing; output left unwritten")
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files_into(out: Path, *, option: str = "--out") -> Iterator[Path]:
    """For a directory that already holds other files (which must stay): yield a fresh temporary folder beside
    ``out``; on success move every file written there to the same place under ``out`` with ``os.replace``, on
    error remove it. Each file is then either the old one or the whole new one, never half written; files of
    ``out`` that were not written are left alone."""
    out = Path(out).expanduser().resolve()
    if not out.is_dir():
        raise RuadaptError(f"{out}: {option} is not a directory")
    tmp = _fresh_tmp(out, option)
    try:
        yield tmp
        for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dst = out / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(
    out: Path, inputs: Sequence[Path] = (), *, option: str = "--out", overwrite: bool = False
) -> Path:
    """Refuse a single-file output that exists (unless ``overwrite``), is a directory, or lies inside an input."""
    out = Path(out).expanduser().resolve()
    _refuse_inputs(out, inputs, option, "write it elsewhere", contains=False)
    if out.is_dir():
        raise RuadaptError(f"{out}: {option} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise RuadaptError(f"{out}: {option} exists; remove it, choose another name or pass --overwrite")
    _refuse_uncreatable(out, option)
    return out


@contextlib.contextmanager
def atomic_output_file(
    out: Path, inputs: Sequence[Path] = (), *, option: str = "--out", overwrite: bool = False
) -> Iterator[Path]:
    """Yield a temporary file path beside ``out`` (not created); on success rename the file written there to
    ``out`` (``os.replace``: an old ``out`` is swapped whole only with ``overwrite``), on error remove it."""
    out = check_output_file(out, inputs, option=option, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(out)
    except OSError as e:
        raise RuadaptError(f"{out}: {option} cannot be created ({e.strerror})") from None
    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if not tmp.is_file():
            raise RuadaptError(f"{out}: nothing was written; output left unwritten")
        if out.exists() and not overwrite:  # re-check: something may have appeared at the target while we worked
            raise RuadaptError(f"{out}: appeared while ruadapt was writing; output left unwritten")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
