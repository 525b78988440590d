"""``ruadapt train`` as a supervisor (issue 15): signals stop every process and keep the last checkpoint,
a relaunch with a changed config is refused by key name, the master port is a free one, progress lines.

One interrupted launch (SIGINT to `ruadapt train` while step 4 runs) and one relaunch that resumes it and,
in the same processes, trains an uninterrupted reference run; everything else runs without DeepSpeed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny import SHARED_DATA, make_tiny_model

from ruadapt.cli import main
from ruadapt.train.config import load_config
from ruadapt.train.rundir import RUN_JSON, check_rerun, comparable, config_diff, discard_run
from ruadapt.train.supervise import master_port, pick_master_port

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def train_cmd(*configs: Path, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "ruadapt.cli", "train", "--num-gpus", "2", "--master-port", str(port)]
    for c in configs:
        cmd += ["--config", str(c)]
    return cmd


def rank_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    return env


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line contains ``text`` (the launcher's and the ranks')."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(text in a for a in (p.info["cmdline"] or [])):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("life")
    model = make_tiny_model(tmp / "model", "qwen2", tied=False)
    text = tmp / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:200]), encoding="utf-8")
    cfg = dict(task="cpt", model=str(model), deepspeed=str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
               stage="embeddings", block_size=64, data={"train": [str(text)], "eval_blocks": 0},
               train=dict(micro_batch_size=2, max_steps=STEPS, lr=0.05, warmup_steps=0, save_steps=2, log_steps=1, seed=3))
    return tmp, cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def interrupted(base):
    """SIGINT to `ruadapt train` during step 4 (step-2 checkpoint complete), then checks, then the relaunch."""
    tmp, cfg = base
    sig = write_yaml(tmp / "sig.yaml", {**cfg, "out": str(tmp / "out_sig")})
    ref = write_yaml(tmp / "ref.yaml", {**cfg, "out": str(tmp / "out_ref")})
    step_file = tmp / "step.txt"
    t_start = time.monotonic()
    env = rank_env(RUADAPT_TRAIN_CALLBACKS="train_hooks:mark_step", RUADAPT_TEST_STEP_FILE=str(step_file),
                   RUADAPT_TEST_STEP_SLEEP="1")
    proc = subprocess.Popen(train_cmd(sig, port=29671), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (step_file.is_file() and int(step_file.read_text() or 0) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    # `ruadapt train` names the YAML; the launcher (launch.py) and both ranks name the launch.json it wrote
    launch_json = str(tmp / "out_sig.work" / "launch.json")
    members = processes_mentioning(str(sig)) + processes_mentioning(launch_json)
    proc.send_signal(signal.SIGINT)  # what `timeout -s INT`, a scheduler's cancel or `kill -INT` does
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    state = {
        "rc": proc.returncode, "stop_s": time.monotonic() - t0, "stdout": out, "stderr": err,
        "members": len(members), "alive": [p.pid for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
        "alive_by_cmdline": [p.pid for p in processes_mentioning(str(sig)) + processes_mentioning(launch_json)],
        "out_exists": (tmp / "out_sig").exists(),
        "complete": (tmp / "out_sig.work" / "checkpoints" / "complete").read_text().strip(),
        "steps_logged": re.findall(r"step (\d+)/6 ", out + err),
    }
    # a relaunch with a changed value is refused while the checkpoints exist (and nothing starts)
    state["changed"] = refused(sig, "train.lr=0.1", "block_size=32")
    state["t_first"] = time.monotonic() - t_start
    t_start = time.monotonic()
    # the same command resumes; the reference run trains uninterrupted in the same processes
    second = subprocess.run(train_cmd(sig, ref, port=29672), cwd=ROOT, env=rank_env(), capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    state["log2"] = second.stdout + second.stderr
    state["t_second"] = time.monotonic() - t_start
    print(f"launch 1 (to the stop) {state['t_first']:.1f} s, SIGINT to exit {state['stop_s']:.1f} s, "
          f"launch 2 {state['t_second']:.1f} s")
    return tmp, sig, ref, state


@pytest.mark.slow  # shares the two DeepSpeed launches of the `interrupted` fixture
def test_sigint_stops_every_process_and_writes_no_output(interrupted):
    _, _, _, s = interrupted
    assert s["rc"] == 130, s["stderr"][-2000:]
    assert s["members"] >= 3 and not s["alive"] and not s["alive_by_cmdline"], s
    assert s["stop_s"] < 10, s["stop_s"]  # the ranks finish step 4 (no half checkpoint) and exit; nothing lingers
    assert not s["out_exists"]
    assert s["complete"] in ("step-0000002", "step-0000004")  # a checkpoint is only ever complete or absent
    last = s["stderr"].strip().splitlines()[-1]
    assert last.startswith("ruadapt train: stopped by SIGINT;") and "to resume" in last and "Traceback" not in s["stderr"]
    assert f"checkpoints/{s['complete']} is the last complete checkpoint" in last


@pytest.mark.slow  # shares the two DeepSpeed launches of the `interrupted` fixture
def test_relaunch_resumes_to_the_weights_of_an_uninterrupted_run(interrupted):
    tmp, _, _, s = interrupted
    assert "resumed from" in s["log2"]
    rec = json.loads((tmp / "out_sig" / "ruadapt_train.json").read_text())
    assert rec["result"]["resumed_from_step"] == int(s["complete"][-2:])
    assert [x["step"] for x in rec["result"]["losses"]] == list(range(1, STEPS + 1))
    ref, res = tensors(tmp / "out_ref"), tensors(tmp / "out_sig")
    assert set(ref) == set(res)
    for n in ref:
        assert torch.allclose(ref[n], res[n], atol=1e-6, rtol=0), n
    assert not (tmp / "out_sig.work" / "checkpoints").exists()


def refused(config: Path, *overrides: str) -> tuple[int, list[str]]:
    """`ruadapt train` (in this process, no launch) with ``--set`` overrides: exit code and stderr lines."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", "--config", str(config), *[a for o in overrides for a in ("--set", o)]])
    return rc, err.getvalue().strip().splitlines()


@pytest.mark.slow  # shares the two DeepSpeed launches of the `interrupted` fixture
def test_changed_config_refused_naming_the_keys(interrupted, capsys):
    tmp, sig, _, s = interrupted
    rc, err = s["changed"]  # unfinished run with checkpoints
    assert rc == 2 and len(err) == 1, err
    assert "block_size, train.lr" in err[0] and "--overwrite" in err[0] and "another out" in err[0] and RUN_JSON in err[0]
    # finished run: a changed value is an error, not a silent skip; bookkeeping keys may change
    rc, err = refused(sig, "train.max_steps=12")
    assert rc == 2 and len(err) == 1 and "differs in train.max_steps" in err[0] and "ruadapt_train.json" in err[0], err
    assert main(["train", "--config", str(sig), "--set", "train.log_steps=5", "--set", "train.save_steps=3"]) == 0
    assert "already finished with this config; skipping" in capsys.readouterr().err


@pytest.mark.slow  # shares the two DeepSpeed launches of the `interrupted` fixture
def test_progress_lines_have_rate_elapsed_and_eta(interrupted):
    _, _, _, s = interrupted
    lines = [l for l in s["log2"].splitlines() if "ruadapt.train: step " in l and "/6 " in l]
    assert lines, s["log2"][-2000:]
    m = re.search(r"step (\d+)/6  loss [\d.]+  lr \S+  (\d+) tok/s  elapsed (\d+:\d\d:\d\d)  eta (\d+:\d\d:\d\d)", lines[-1])
    assert m and int(m.group(2)) > 0 and m.group(4) == "0:00:00", lines[-1]  # the last step has nothing left
    assert s["steps_logged"][:3] == ["1", "2", "3"]  # the interrupted launch logged every step (log_steps 1)


def test_overwrite_discards_only_a_ruadapt_run(base, tmp_path):
    _, cfg = base
    path = write_yaml(tmp_path / "r.yaml", {**cfg, "out": str(tmp_path / "out")})
    run = load_config(path)
    (tmp_path / "out").mkdir()
    old = run.to_dict()
    old["train"]["max_steps"] = 3
    (tmp_path / "out" / "ruadapt_train.json").write_text(json.dumps({"options": old}))
    work = run.work_dir
    (work / "checkpoints").mkdir(parents=True)
    (work / "tokens").mkdir()  # the token cache survives --overwrite
    (work / RUN_JSON).write_text(json.dumps(comparable(run)))
    assert config_diff(old, run) == ["train.max_steps"]
    with pytest.raises(Exception, match="differs in train.max_steps"):
        check_rerun(run)
    assert main(["train", "--config", str(path), "--overwrite", "--dry-run"]) == 0  # a dry run deletes nothing
    assert (tmp_path / "out" / "ruadapt_train.json").is_file()
    removed = discard_run(run)
    assert not (tmp_path / "out").exists() and not (work / "checkpoints").exists() and (work / "tokens").is_dir()
    assert len(removed) == 3
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="refuses to delete"):
        discard_run(run)


def fake_finished(cfg: dict, out: Path, **train_changes) -> Path:
    """A finished run's output as `ruadapt train` leaves it (record only), recorded with other train values."""
    out.mkdir(parents=True)
    recorded = json.loads(json.dumps(cfg))
    recorded["out"] = str(out)
    recorded["train"].update(train_changes)
    (out / "ruadapt_train.json").write_text(json.dumps({"options": recorded}))
    return out


def test_overwrite_also_redoes_a_later_run_that_trains_on_the_discarded_output(base, tmp_path, capsys):
    from ruadapt.commands.train import check_reruns
    from ruadapt.train.config import load_configs

    _, cfg = base
    full = load_config(write_yaml(tmp_path / "tmp.yaml", {**cfg, "out": str(tmp_path / "x")})).to_dict()
    stage1 = fake_finished(full, tmp_path / "stage1", max_steps=3)  # recorded with another max_steps
    fake_finished({**full, "model": str(stage1)}, tmp_path / "stage2")  # unchanged itself
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # stage2's model must look like a model
        (stage1 / f).write_bytes((Path(cfg["model"]) / f).read_bytes())
    c1 = write_yaml(tmp_path / "s1.yaml", {**cfg, "out": str(stage1)})
    c2 = write_yaml(tmp_path / "s2.yaml", {**cfg, "model": str(stage1), "out": str(tmp_path / "stage2")})
    configs = load_configs([str(c1), str(c2)])
    with pytest.raises(Exception, match="stage1 finished with another config .* differs in train.max_steps"):
        check_reruns(configs, overwrite=False, dry_run=False)
    pending = check_reruns(configs, overwrite=True, dry_run=False)
    assert [c.out_path.name for c in pending] == ["stage1", "stage2"]
    assert not stage1.exists() and not (tmp_path / "stage2").exists()
    assert capsys.readouterr().err.count("--overwrite: removed") == 2


def test_taken_port_is_avoided_by_default_and_refused_when_explicit(base, tmp_path, capsys):
    _, cfg = base
    path = write_yaml(tmp_path / "p.yaml", {**cfg, "out": str(tmp_path / "out")})
    port = pick_master_port()
    with socket.socket() as s:  # another job's rendezvous on the port we would have picked
        s.bind(("127.0.0.1", port))
        s.listen()
        assert main(["train", "--config", str(path), "--num-gpus", "2", "--dry-run"]) == 0
        cmd = capsys.readouterr().out.split()
        chosen = int(cmd[cmd.index("--master_port") + 1])
        assert chosen != port and chosen >= 29500
        assert main(["train", "--config", str(path), "--num-gpus", "2", "--master-port", str(port), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--master-port {port}: the port is in use" in err[0], err
        # with a hostfile the master is another host: nothing to check here, DeepSpeed's default stays
        assert master_port(None, tmp_path / "hosts") is None and master_port(port, tmp_path / "hosts") == port


def test_report_to_needs_the_package(base, tmp_path, capsys):
    _, cfg = base
    import importlib.util

    missing = [m for m in ("tensorboard", "wandb") if importlib.util.find_spec(m) is None]
    if not missing:
        pytest.skip("tensorboard and wandb are both installed")
    path = write_yaml(tmp_path / "tb.yaml", {**cfg, "out": str(tmp_path / "out"),
                                             "train": {**cfg["train"], "report_to": [missing[0]]}})
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install {missing[0]}" in err[0] and "train.report_to" in err[0], err


# ------------------------------------------------------------------ the supervisor alone (no DeepSpeed)
def _ignores_sigterm_with_grandchild(marker: Path) -> list[str]:
    """A 'launcher' whose child and grandchild both ignore SIGTERM (a rank stuck in a collective)."""
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
            f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)\n")
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_supervisor_sigkills_what_ignores_sigterm_after_the_grace(tmp_path, signum):
    import threading

    from ruadapt.train.supervise import supervise

    marker = tmp_path / "pid"
    # a test run started under nohup ignores SIGHUP, and supervise rightly keeps ignoring it: test the hangup itself
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL) if signum == signal.SIGHUP else None
    timer = threading.Thread(target=lambda: (_wait_for(marker), os.kill(os.getpid(), signum)))
    timer.start()
    t0 = time.monotonic()
    try:
        code, sig = supervise(_ignores_sigterm_with_grandchild(marker), grace_s=1.0)
    finally:
        timer.join()
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
    assert (code, sig) == (128 + signum, signum) and time.monotonic() - t0 < 20
    assert not psutil.pid_exists(int(marker.read_text())) or psutil.Process(int(marker.read_text())).status() == psutil.STATUS_ZOMBIE


def test_supervisor_cleans_up_what_the_launcher_left_behind(tmp_path):
    from ruadapt.train.supervise import supervise

    marker = tmp_path / "pid"
    code = ("import subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
            "sys.exit(3)\n")  # a launcher that crashed and left a rank running
    assert supervise([sys.executable, "-c", code], grace_s=5.0) == (3, None)
    pid = int(marker.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file() or not path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_tensorboard_gets_the_logged_scalars(base, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ruadapt.train.progress import Progress

    _, cfg = base
    path = write_yaml(tmp_path / "tb.yaml", {**cfg, "out": str(tmp_path / "out"),
                                             "train": {**cfg["train"], "log_steps": 2, "report_to": ["tensorboard"]}})
    run = load_config(path)
    progress = Progress(run, first_step=0, enabled=True)
    progress.start()
    for step in range(1, STEPS + 1):
        progress.step_done(step, loss=5.0 - step / 10, lr=0.05, tokens=128)
    progress.eval_done(STEPS, 4.2)
    progress.close()
    acc = EventAccumulator(str(run.work_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/eta_s", "eval/loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 4, 6]  # first step, every log_steps, last step
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(4.4)
    assert acc.Scalars("eval/loss")[0].value == pytest.approx(4.2)
