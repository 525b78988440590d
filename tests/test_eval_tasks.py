"""``ruadapt eval --tasks`` beyond the shipped tasks: the user's task YAMLs (``--include-path``), lm-eval's
registry, ``--system-instruction``.

The scores of a generate_until task from a YAML written here are checked against a computation that shares
nothing with lm-eval: greedy generation with transformers through the same chat template, exact match by hand,
chrF by ``sacrebleu.corpus_chrf``. A random tiny model gets exact matches because half of the answers in the
data ARE its own greedy outputs (computed first), so the expected score is known in advance.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys

import pytest
import sacrebleu
import torch
from tiny import ROOT, make_tiny_model

from ruadapt.cli import main
from ruadapt.io.record import check_record

SYSTEM = "Ты — внимательный помощник. Отвечай кратко и по-русски."
PROMPTS = [
    "Переведи на русский: the cat sleeps.",
    "Столица Франции?",
    "Сколько будет два плюс два?",
    "Назови цвет ясного неба.",
]
MAX_GEN = 6
FOLD = ["(?i)^ответ: "]  # regexes_to_ignore of the t_fold task


def task_yaml(name: str, data: str, exact_match_options: str = "") -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {MAX_GEN}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true{exact_match_options}
  - metric: chrf
    aggregation: chrf
    higher_is_better: true
metadata:
  version: 1.0
"""


def render(tok, prompt: str, system: str | None) -> str:
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def greedy(model_dir, prompts: list[str], system: str | None) -> tuple[list[str], list[str]]:
    """(rendered prompts, greedy answers) straight from transformers: no lm-eval involved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rendered, answers = [], []
    for p in prompts:
        text = render(tok, p, system)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_GEN,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        rendered.append(text)
        answers.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return rendered, answers


def fold(x: str) -> str:
    """exact_match with regexes_to_ignore=FOLD, ignore_case, ignore_punctuation: written out by hand."""
    for r in FOLD:
        x = re.sub(r, "", x)
    return "".join(c for c in x.lower() if c not in string.punctuation)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval_tasks")
    model = make_tiny_model(root / "qwen", "qwen2", seed=1)
    rendered, outs = greedy(model, PROMPTS, SYSTEM)
    assert all(o.strip() for o in outs) and outs[2].upper() != outs[2]  # a random model, but a cased answer
    # 0, 1: the model's own answer; 2: the same up to case, punctuation and a prefix the t_fold regex drops;
    # 3: wrong. Expected exact match: t_plain 2/4, t_fold 3/4.
    answers = [outs[0], outs[1], "ОТВЕТ: " + outs[2].upper() + "!?", "совсем не то"]
    data = root / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n" for p, a in zip(PROMPTS, answers)),
        encoding="utf-8",
    )
    tasks = root / "my_tasks"
    tasks.mkdir()
    (tasks / "t_plain.yaml").write_text(task_yaml("t_plain", str(data)), encoding="utf-8")
    (tasks / "t_fold.yaml").write_text(
        task_yaml(
            "t_fold",
            str(data),
            f"""
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: {json.dumps(FOLD)}""",
        ),
        encoding="utf-8",
    )
    return {"root": root, "model": model, "tasks": tasks, "rendered": rendered, "outs": outs, "answers": answers}


@pytest.mark.parametrize("batch", [1, 3])  # 3: prompts of different lengths padded on the left in one batch
def test_include_path_task_scores_equal_an_independent_computation(work, tmp_path, batch):
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "eval",
            "--model",
            f"qwen={work['model']}",
            "--include-path",
            str(work["tasks"]),
            "--tasks",
            "t_plain,t_fold",
            "--system-instruction",
            SYSTEM,
            "--speed-prompts",
            "0",
            "--window",
            "128",
            "--task-batch-size",
            str(batch),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    outs, answers = work["outs"], work["answers"]
    plain = sum(o == a for o, a in zip(outs, answers)) / 4
    folded = sum(fold(o) == fold(a) for o, a in zip(outs, answers)) / 4
    assert (plain, folded) == (0.5, 0.75)  # the data was built for these; the options really change the score
    chrf = sacrebleu.corpus_chrf(outs, [answers]).score
    assert 0 < chrf < 100
    for task, em in (("t_plain", plain), ("t_fold", folded)):
        res = report["lm_eval"]["qwen"][task]
        assert res["metrics"]["exact_match"] == pytest.approx(em, abs=1e-12)
        assert res["metrics"]["chrf"] == pytest.approx(chrf, abs=1e-9)
        assert res["docs"] == 4 and res["chat_template"] and res["system_instruction"] == SYSTEM
        assert res["source"] == "--include-path" and res["yaml"] == str(work["tasks"] / f"{task}.yaml")
        rows = [json.loads(x) for x in (out / "lm_eval_samples" / "qwen" / f"{task}.jsonl").read_text().splitlines()]
        rows.sort(key=lambda r: PROMPTS.index(r["doc"]["prompt"]))
        # the prompt lm-eval rendered is ours (chat template + system instruction), its answers are greedy's
        assert [r["prompt"] for r in rows] == work["rendered"]
        assert all(SYSTEM in r["prompt"] for r in rows)
        assert [r["response"] for r in rows] == outs
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if "t_plain exact_match" in line)
    assert all(c in header for c in ("t_plain chrf", "t_fold exact_match", "t_fold chrf"))
    assert sum(line.startswith("| qwen |") for line in md.splitlines()) == 2  # models table + one lm-eval table
    record = check_record(json.loads((out / "ruadapt_eval.json").read_text()))
    assert record["options"]["include_paths"] == [str(work["tasks"])]
    assert record["options"]["system_instruction"] == SYSTEM
    assert {"task:t_plain", "task:t_fold"} <= set(record["inputs"])


def test_system_instruction_changes_the_prompt(work, tmp_path):
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "eval",
            "--model",
            f"qwen={work['model']}",
            "--include-path",
            str(work["tasks"]),
            "--tasks",
            "t_plain",
            "--task-limit",
            "1",
            "--speed-prompts",
            "0",
            "--window",
            "128",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    row = json.loads((out / "lm_eval_samples" / "qwen" / "t_plain.jsonl").read_text().splitlines()[0])
    assert row["prompt"] == render_default(work, row["doc"]["prompt"])
    assert SYSTEM not in row["prompt"] and row["prompt"] not in work["rendered"]
    assert json.loads((out / "ruadapt_eval.json").read_text())["options"]["system_instruction"] is None


def render_default(work, prompt: str) -> str:
    from transformers import AutoTokenizer

    return render(AutoTokenizer.from_pretrained(work["model"]), prompt, None)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m ruadapt eval`` of this checkout in a fresh process (its own env: an empty HF cache, offline)."""
    env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "ruadapt", "-q", "eval", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # indexes lm-eval's whole registry (≈ 15 s)
def test_registry_task_offline_fails_in_one_line_before_loading(work, tmp_path):
    """A name of lm-eval's registry whose data is not in the (empty) cache of an offline machine: exit 2, one line
    naming the task and the dataset, nothing written; through the real entry point in a fresh process."""
    cache = tmp_path / "empty-hf-cache"
    env = {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache / "datasets"),
        "HF_HUB_CACHE": str(cache / "hub"),
        "DS_ACCELERATOR": "cpu",
        "TQDM_DISABLE": "1",
    }
    out = tmp_path / "out"
    p = run_cli(
        "--model",
        f"qwen={work['model']}",
        "--include-path",
        str(work["tasks"]),
        "--tasks",
        "t_plain,belebele_rus_Cyrl",
        "--speed-prompts",
        "0",
        "--out",
        str(out),
        env=env,
    )
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("ruadapt eval: error:"), p.stderr[-3000:]
    assert re.search(
        r'--tasks belebele_rus_Cyrl: dataset "facebook/belebele \(rus_Cyrl\)" is not available offline', err[0]
    ), err[0]
    assert not out.exists() and not list(tmp_path.glob(".out.ruadapt-tmp-*"))


def test_unknown_task_one_line_says_where_it_looked(work, tmp_path, capsys, monkeypatch):
    import ruadapt.eval.run

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the task check")

    monkeypatch.setattr(ruadapt.eval.run, "load_model", no_load)
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--model",
            f"qwen={work['model']}",
            "--include-path",
            str(work["tasks"]),
            "--tasks",
            "t_plain,belebele_rus_Cyr",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.fullmatch(
        r"ruadapt eval: error: --tasks belebele_rus_Cyr: unknown task; looked in ruadapt's shipped "
        r"tasks \(none for this run\); --include-path .*my_tasks \(2 names\); lm-eval .*task registry "
        r"\(\d+ names\); close names: belebele_rus_Cyrl.*",
        err,
    ), err
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing_dir", "missing_data", "empty_instruction"])
def test_bad_task_input_one_line_error(work, tmp_path, capsys, case):
    tasks = tmp_path / "tasks"
    extra: list[str] = []
    if case == "missing_dir":
        expect = f"--include-path {tasks}: directory not found"
    elif case == "missing_data":
        tasks.mkdir()
        (tasks / "t_gone.yaml").write_text(task_yaml("t_gone", str(tmp_path / "gone.jsonl")), encoding="utf-8")
        expect = "--tasks t_gone: dataset \"json {'test': '" + str(tmp_path / "gone.jsonl") + "'}\" cannot be loaded"
    else:
        tasks = work["tasks"]
        extra = ["--system-instruction", "  "]
        expect = "--system-instruction: empty text"
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--model",
            f"qwen={work['model']}",
            "--include-path",
            str(tasks),
            "--tasks",
            "t_gone" if case == "missing_data" else "t_plain",
            *extra,
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()


def test_shipped_task_without_its_data_says_what_it_needs(work, tmp_path, capsys):
    rc = main(["eval", "--model", f"qwen={work['model']}", "--tasks", "bpb_en,copy_ru", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "ruadapt eval: error: --tasks bpb_en: ruadapt's task bpb_en needs --text en=FILE"
