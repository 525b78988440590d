"""Helpers shared by the benches: timing a command with its peak RSS, printing tables."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd``; return wall seconds and the peak RSS (GB) of that process tree's largest process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2)}


def table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
