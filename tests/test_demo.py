"""`make demo` at toy size (issue 9): the whole pipeline runs through the real CLI and launcher, every stage's
output loads, the report has every row, and a relaunch resumes (skips every finished step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import ROOT

STAGE_DIRS = ["base", "instruct", "swapped", "cpt1", "lep-swap", "lep-overlap", "lep-conversion", "lep-conversion-calib"]
REPORT_ROWS = ["instruct (original tokenizer)", "CPT'd base, no LEP", "LEP-swap", "LEP-overlap", "LEP-conversion",
               "LEP-conversion + calibration"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "TOY": "1", "RUN": str(run), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MASTER_PORT": "29533"}
    p = subprocess.run(["bash", str(ROOT / "recipes" / "cpu-tiny.sh")], env=env, capture_output=True, text=True, timeout=900)
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
    p = subprocess.run(["bash", str(ROOT / "recipes" / "cpu-tiny.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("exists, skipping") >= 9
    assert {q: q.stat().st_mtime_ns for q in run.glob("*/ruadapt_*.json")} == before
