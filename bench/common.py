"""Helpers shared by the benches: timing a command with its peak RSS, printing tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RUADAPT_TEST_DATA") or ROOT.parent / "shared")  # the tests' data (docs/testing.md)


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time``; return wall seconds and the command's peak RSS (GB).

    ``/usr/bin/time`` measures its exec'd child, whose RSS high-water mark starts at ``time``'s own few MB; a
    child forked straight from this Python process would inherit this process's (possibly GB-sized) mark.
    Page-cache state is left as it is (warm when the inputs were just written or read); only dirty pages are
    flushed first.
    """
    fd, stats = tempfile.mkstemp(suffix=".time")
    os.close(fd)
    os.sync()  # start with no dirty pages: one command's write-back must not throttle the next one's writes
    t0 = time.perf_counter()
    p = subprocess.run(
        ["/usr/bin/time", "-o", stats, "-f", "%M", *map(str, cmd)],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wall = time.perf_counter() - t0
    max_kb = int(Path(stats).read_text().split()[-1])
    os.unlink(stats)
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout.decode(errors='replace')[-3000:]}"
        )
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(max_kb / 1024**2, 2)}


def staging_dir(out: Path) -> Path | None:
    """``None`` when ``out`` already holds a model (benches reuse their inputs); else an empty ``out.tmp`` to write
    the model into, renamed to ``out`` by the caller when complete (an interrupted write is never reused)."""
    if (out / "config.json").is_file():
        return None
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
