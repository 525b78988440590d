"""``ruadapt train`` as a supervisor (issues 15, 25): signals stop every process in every phase and keep the last
checkpoint, a run owns its folder, `kill -9` of `ruadapt train` ends its launcher and ranks, two launches at once
get different ports, a relaunch with a changed config is refused by key name, progress lines.

Three launches of one run (SIGINT during step 4; a relaunch SIGKILLed; a relaunch that finishes) beside an
uninterrupted reference run started 2 s after the first; data preparation of a 116 MB corpus stopped by SIGINT
to the group and by SIGTERM; everything else runs without DeepSpeed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def train_cmd(*configs: Path, port: int | None = None) -> list[str]:
    """The `ruadapt train` command line; without ``port`` the default (a random free port) is used."""
    cmd = [sys.executable, "-m", "ruadapt.cli", "train", "--num-gpus", "2"]
    cmd += ["--master-port", str(port)] if port is not None else []
    for c in configs:
        cmd += ["--config", str(c)]
    return cmd


def rank_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    # DeepSpeed's CPU op: the user's cache, not the default inside the (shared) virtual environment
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
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
    cfg = dict(
        task="cpt",
        model=str(model),
        deepspeed=str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
        stage="embeddings",
        block_size=64,
        data={"train": [str(text)], "eval_blocks": 0},
        train=dict(micro_batch_size=2, max_steps=STEPS, lr=0.05, warmup_steps=0, save_steps=2, log_steps=1, seed=3),
    )
    return tmp, cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_for_step(step_file: Path, step: int, proc: subprocess.Popen, timeout: float = 900) -> None:
    """Until rank 0 has finished ``step`` (a guard against a run that died; start-up takes minutes on a busy CPU)."""
    deadline = time.monotonic() + timeout
    while not (step_file.is_file() and int(step_file.read_text() or 0) >= step):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


def ports_of(members: list[psutil.Process]) -> set[int]:
    """The ``--master_port`` values on the command lines of a run's processes (the launcher's)."""
    ports = set()
    for p in members:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        ports |= {int(cmd[i + 1]) for i, a in enumerate(cmd[:-1]) if a == "--master_port"}
    return ports


def ignoring_sigint(cmd: list[str]) -> list[str]:
    """``cmd`` started with SIGINT ignored, as a POSIX shell starts a script's background job."""
    code = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", code, *cmd]


@pytest.fixture(scope="module")
def interrupted(base):
    """Two runs started 2 s apart with the default port: ``sig`` (slowed by a step hook) and ``ref`` (SIGINT
    ignored, as a background job; SIGINT sent to it twice). While ``sig`` trains, a second launch of it is
    refused; then SIGINT stops it during step 4, a relaunch is SIGKILLed during a later step, and a third
    launch resumes and finishes. ``ref`` is the uninterrupted reference."""
    tmp, cfg = base
    sig = write_yaml(tmp / "sig.yaml", {**cfg, "out": str(tmp / "out_sig")})
    ref = write_yaml(tmp / "ref.yaml", {**cfg, "out": str(tmp / "out_ref")})
    step_file = tmp / "step.txt"
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # warm up: the refused launch below must not wait for imports
        assert main(["train", "--config", str(sig), "--dry-run"]) == 0
    t_start = time.monotonic()
    hooked = rank_env(
        RUADAPT_TRAIN_CALLBACKS="train_hooks:mark_step",
        RUADAPT_TEST_STEP_FILE=str(step_file),
        RUADAPT_TEST_STEP_SLEEP="1",
    )
    proc = subprocess.Popen(
        train_cmd(sig), cwd=ROOT, env=hooked, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(2)
    ref_proc = subprocess.Popen(
        ignoring_sigint(train_cmd(ref)),
        cwd=ROOT,
        env=rank_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    ref_proc.send_signal(signal.SIGINT)  # ignored while it prepares or launches
    wait_for_step(step_file, 3, proc)
    ref_proc.send_signal(signal.SIGINT)  # ... and while it trains (or as it finishes)
    # `ruadapt train` names the YAML; the launcher (launch.py) and both ranks name the launch.json it wrote
    launch_json = str(tmp / "out_sig.work" / "launch.json")
    members = processes_mentioning(str(sig)) + processes_mentioning(launch_json)
    ref_members = processes_mentioning(str(ref)) + processes_mentioning(str(tmp / "out_ref.work" / "launch.json"))
    state: dict = {"ports": (ports_of(members), ports_of(ref_members))}
    # a second launch of the live run: refused, and it touches nothing of the run
    work = tmp / "out_sig.work"
    before = {f: (work / f).read_bytes() for f in ("data.json", RUN_JSON)}
    state["second"] = refused(sig)
    state["second_touched"] = [f for f, b in before.items() if (work / f).read_bytes() != b]
    state["holder"] = proc.pid
    proc.send_signal(signal.SIGINT)  # what `timeout -s INT`, a scheduler's cancel or `kill -INT` does
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    state.update(
        {
            "rc": proc.returncode,
            "stop_s": time.monotonic() - t0,
            "stdout": out,
            "stderr": err,
            "members": len(members),
            "alive": [p.pid for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            "alive_by_cmdline": [p.pid for p in processes_mentioning(str(sig)) + processes_mentioning(launch_json)],
            "out_exists": (tmp / "out_sig").exists(),
            "complete": (work / "checkpoints" / "complete").read_text().strip(),
            "steps_logged": re.findall(r"step (\d+)/6 ", out + err),
        }
    )
    # a relaunch with a changed value is refused while the checkpoints exist (and nothing starts)
    state["changed"] = refused(sig, "train.lr=0.1", "block_size=32")
    state["t_first"] = time.monotonic() - t_start
    # the relaunch resumes; `kill -9` of `ruadapt train` during the step after the checkpoint
    step_file.unlink()
    killed = subprocess.Popen(
        train_cmd(sig), cwd=ROOT, env=hooked, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(step_file, int(state["complete"][-2:]) + 1, killed)
    members = processes_mentioning(str(sig)) + processes_mentioning(launch_json)
    killed.kill()
    killed.communicate(timeout=60)
    t0 = time.monotonic()
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in members) and time.monotonic() - t0 < 15:
        time.sleep(0.2)
    state["killed"] = {
        "members": len(members),
        "gone_s": time.monotonic() - t0,
        "alive_15s": [
            " ".join(p.cmdline())[:200] for p in processes_mentioning(str(sig)) + processes_mentioning(launch_json)
        ],
        "complete": (work / "checkpoints" / "complete").read_text().strip(),
    }
    # the third launch resumes and finishes
    t_start = time.monotonic()
    third = subprocess.run(train_cmd(sig), cwd=ROOT, env=rank_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    state["log3"] = third.stdout + third.stderr
    ref_out, ref_err = ref_proc.communicate(timeout=600)
    state["ref_rc"], state["log2"] = ref_proc.returncode, ref_out + ref_err
    state["t_second"] = time.monotonic() - t_start
    print(
        f"launch 1 (to the stop) {state['t_first']:.1f} s, SIGINT to exit {state['stop_s']:.1f} s, kill -9 to no "
        f"process left {state['killed']['gone_s']:.1f} s, launch 3 {state['t_second']:.1f} s"
    )
    return tmp, sig, ref, state


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_sigint_stops_every_process_and_writes_no_output(interrupted):
    _, _, _, s = interrupted
    assert s["rc"] == 130, s["stderr"][-2000:]
    assert s["members"] >= 3 and not s["alive"] and not s["alive_by_cmdline"], s
    assert s["stop_s"] < 10, s["stop_s"]  # the ranks finish step 4 (no half checkpoint) and exit; nothing lingers
    assert not s["out_exists"]
    assert s["complete"] in ("step-0000002", "step-0000004")  # a checkpoint is only ever complete or absent
    last = s["stderr"].strip().splitlines()[-1]
    assert (
        last.startswith("ruadapt train: stopped by SIGINT;") and "to resume" in last and "Traceback" not in s["stderr"]
    )
    assert f"checkpoints/{s['complete']} is the last complete checkpoint" in last


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_second_launch_on_a_live_run_is_refused_naming_the_holder(interrupted):
    _, _, _, s = interrupted
    rc, err = s["second"]
    assert rc == 2 and len(err) == 1, err
    assert f"pid {s['holder']} on host {socket.gethostname()}" in err[0] and "another launch is running" in err[0], err
    assert not s["second_touched"]  # and the run's weights end as the uninterrupted run's (next tests)


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_sigkill_of_ruadapt_train_ends_launcher_and_ranks(interrupted):
    k = interrupted[3]["killed"]
    assert k["members"] >= 3, k  # launcher, launch.py, two ranks
    assert not k["alive_15s"] and k["gone_s"] < 15, k


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_two_runs_started_together_with_the_default_port_both_finish(interrupted):
    tmp, _, _, s = interrupted
    (p_sig,), (p_ref,) = s["ports"]  # each run has one rendezvous port ...
    assert p_sig != p_ref  # ... not the same "first free one" (both runs trained: sig to step 3 and on, ref to the end)
    # ref ran as a background job with SIGINT ignored, and two SIGINTs (while launching and training) changed nothing
    assert s["ref_rc"] == 0 and (tmp / "out_ref" / "ruadapt_train.json").is_file(), s["log2"][-2000:]


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_relaunch_resumes_to_the_weights_of_an_uninterrupted_run(interrupted):
    tmp, _, _, s = interrupted
    assert "resumed from" in s["log3"]
    rec = json.loads((tmp / "out_sig" / "ruadapt_train.json").read_text())
    assert rec["result"]["resumed_from_step"] == int(s["killed"]["complete"][-2:])
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


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_changed_config_refused_naming_the_keys(interrupted, capsys):
    tmp, sig, _, s = interrupted
    rc, err = s["changed"]  # unfinished run with checkpoints
    assert rc == 2 and len(err) == 1, err
    assert (
        "block_size, train.lr" in err[0] and "--overwrite" in err[0] and "another out" in err[0] and RUN_JSON in err[0]
    )
    # finished run: a changed value is an error, not a silent skip; bookkeeping keys may change
    rc, err = refused(sig, "train.max_steps=12")
    assert rc == 2 and len(err) == 1 and "differs in train.max_steps" in err[0] and "ruadapt_train.json" in err[0], err
    assert main(["train", "--config", str(sig), "--set", "train.log_steps=5", "--set", "train.save_steps=3"]) == 0
    assert "already finished with this config; skipping" in capsys.readouterr().err


@pytest.mark.slow  # shares the DeepSpeed launches of the `interrupted` fixture
def test_progress_lines_have_rate_elapsed_and_eta(interrupted):
    _, _, _, s = interrupted
    lines = [l for l in s["log2"].splitlines() if "ruadapt.train: step " in l and "/6 " in l]
    assert lines, s["log2"][-2000:]
    m = re.search(
        r"step (\d+)/6  loss [\d.]+  lr \S+  (\d+) tok/s  elapsed (\d+:\d\d:\d\d)  eta (\d+:\d\d:\d\d)", lines[-1]
    )
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
    path = write_yaml(
        tmp_path / "tb.yaml",
        {**cfg, "out": str(tmp_path / "out"), "train": {**cfg["train"], "report_to": [missing[0]]}},
    )
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install {missing[0]}" in err[0] and "train.report_to" in err[0], err


# ------------------------------------------------------------------ the supervisor alone (no DeepSpeed)
def _ignores_sigterm_with_grandchild(marker: Path) -> list[str]:
    """A 'launcher' whose child and grandchild both ignore SIGTERM (a rank stuck in a collective)."""
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
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
    assert (
        not psutil.pid_exists(int(marker.read_text()))
        or psutil.Process(int(marker.read_text())).status() == psutil.STATUS_ZOMBIE
    )


def test_supervisor_cleans_up_what_the_launcher_left_behind(tmp_path):
    from ruadapt.train.supervise import supervise

    marker = tmp_path / "pid"
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "sys.exit(3)\n"
    )  # a launcher that crashed and left a rank running
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
    path = write_yaml(
        tmp_path / "tb.yaml",
        {**cfg, "out": str(tmp_path / "out"), "train": {**cfg["train"], "log_steps": 2, "report_to": ["tensorboard"]}},
    )
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


# ------------------------------------------------------------------ stopping data preparation (issue 25)
@pytest.fixture(scope="module")
def big_config(base) -> Path:
    """A run on a 116 MB corpus (the shared Russian training text, six times): preparation takes minutes here."""
    tmp, cfg = base
    big = tmp / "big.txt"
    data = (SHARED_DATA / "ru_train.txt").read_bytes()
    with open(big, "wb") as f:
        for _ in range(6):
            f.write(data)
    assert big.stat().st_size >= 100_000_000
    return write_yaml(
        tmp / "big.yaml", {**cfg, "out": str(tmp / "out_big"), "data": {"train": [str(big)], "eval_blocks": 0}}
    )


def stop_preparation(cmd: list[str], stop) -> dict:
    """Start ``cmd`` as a terminal's foreground job (its own process group), wait until its tokenizer workers
    run, call ``stop(proc)``; exit code, seconds to exit, stderr, and which of its processes outlived it."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=rank_env(RUADAPT_PREPARE_WORKERS="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    main_p = psutil.Process(proc.pid)
    deadline = time.monotonic() + 180
    while len([c for c in main_p.children() if "spawn_main" in " ".join(c.cmdline())]) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # the workers are encoding now
    family = main_p.children(recursive=True)  # two workers and multiprocessing's resource tracker
    t0 = time.monotonic()
    stop(proc)
    _, err = proc.communicate(timeout=60)
    stop_s = time.monotonic() - t0
    print(f"{' '.join(cmd[-4:])}: exit {proc.returncode} {stop_s:.1f} s after the signal")
    while any(alive(p) for p in family) and time.monotonic() - t0 < 10:  # a SIGKILLed worker may still be exiting
        time.sleep(0.1)
    return {
        "rc": proc.returncode,
        "stop_s": stop_s,
        "stderr": err,
        "family": len(family),
        "alive": [f"{p.pid} {status(p)} {' '.join(cmdline(p))[:120]}" for p in family if alive(p)],
    }


def status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.Error:
        return "gone"


def cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def alive(p: psutil.Process) -> bool:
    """Still running: not gone, not a zombie or dead process that only waits to be reaped."""
    return p.is_running() and status(p) not in ("gone", psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def assert_nothing_trusted(config: Path) -> None:
    """No token file of the big corpus is in the cache as an entry (lock files may stay). A half-written temp dir
    (``.NAME.tmp-PID``) is never trusted: it is not an entry, and the next preparation removes it
    (``tokenfile.temp_dir_for``); normally the stopped process has removed it already."""
    cache = config.parent / ".ruadapt-cache" / "tokens"
    # only the big corpus's entries: the module's other runs cache their own small ru.txt in the same folder
    dirs = [p.name for p in cache.iterdir() if p.is_dir() and "big.txt" in p.name] if cache.is_dir() else []
    assert not [d for d in dirs if not (d.startswith(".") and ".tmp-" in d)], dirs
    assert not (config.parent / "out_big.work" / "data.json").exists()


@pytest.mark.slow  # two preparations of a 116 MB corpus, each stopped after its workers started
def test_signals_stop_data_preparation_with_its_workers(big_config):
    # a terminal's Ctrl-C: SIGINT to the whole group of `ruadapt data prepare`
    s = stop_preparation(
        [sys.executable, "-m", "ruadapt.cli", "data", "prepare", "--config", str(big_config)],
        lambda p: os.killpg(p.pid, signal.SIGINT),
    )
    assert s["rc"] == 130 and s["stop_s"] < 10 and s["family"] >= 3 and not s["alive"], s
    assert "Traceback" not in s["stderr"], s["stderr"][-3000:]
    last = s["stderr"].strip().splitlines()[-1]
    assert last.startswith("ruadapt data prepare: stopped by SIGINT;") and "to continue" in last, last
    assert_nothing_trusted(big_config)
    # `ruadapt train` started as a script's background job (SIGINT ignored): SIGINT changes nothing, SIGTERM to the
    # main process (a scheduler's cancel, `timeout`) stops it and its workers

    def int_then_term(p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGINT)
        time.sleep(1.5)
        assert p.poll() is None  # ignored
        p.send_signal(signal.SIGTERM)

    s = stop_preparation(ignoring_sigint(train_cmd(big_config)), int_then_term)
    assert s["rc"] == 143 and s["stop_s"] < 10 + 1.5 and s["family"] >= 3 and not s["alive"], s
    assert "Traceback" not in s["stderr"], s["stderr"][-3000:]
    last = s["stderr"].strip().splitlines()[-1]
    assert last.startswith("ruadapt train: stopped by SIGTERM; no checkpoint had been written yet;"), last
    assert_nothing_trusted(big_config)


# ------------------------------------------------------------------ a run owns its folder; launch checks (issue 25)
def test_run_lock_names_its_holder_and_dies_with_it(base, tmp_path, capsys):
    from ruadapt.train.config import load_configs
    from ruadapt.train.rundir import hold_runs

    _, cfg = base
    path = write_yaml(tmp_path / "r.yaml", {**cfg, "out": str(tmp_path / "out")})
    code = (
        "import sys, time\nfrom ruadapt.train.config import load_configs\nfrom ruadapt.train.rundir import hold_runs\n"
        "with hold_runs(load_configs([sys.argv[1]])):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, env=rank_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["train", "--config", str(path), "--num-gpus", "2"], ["data", "prepare", "--config", str(path)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in err[0], err
            assert str(tmp_path / "out.work" / "lock") in err[0]
        assert not (tmp_path / "out.work" / "data.json").exists()  # refused before anything was prepared
    finally:
        holder.kill()  # a crash: the kernel releases the lock
        holder.wait()
    with hold_runs(load_configs([str(path)])):
        pass


def test_cpu_launch_without_a_compiler_is_one_line(base, tmp_path, monkeypatch, capsys):
    from ruadapt.train.supervise import SHM_EXTENSION, extension_dir, prepare_extension

    _, cfg = base
    path = write_yaml(tmp_path / "c.yaml", {**cfg, "out": str(tmp_path / "out")})
    (tmp_path / "bin").mkdir()
    ext = tmp_path / "ext"
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no c++ here (deepspeed is found beside sys.executable)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ext))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert main(["train", "--config", str(path), "--num-gpus", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no C++ compiler was found" in err[0] and SHM_EXTENSION in err[0], err
    assert not (tmp_path / "out.work" / "data.json").exists()  # before the data was prepared
    built = ext / SHM_EXTENSION / f"{SHM_EXTENSION}.so"  # where torch builds it under TORCH_EXTENSIONS_DIR
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")
    env = {"PATH": str(tmp_path / "bin"), "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(ext)}
    assert prepare_extension(env) is None  # built once: no compiler needed any more
    # the default cache belongs to the environment, not to the user's home shared by every venv
    default = extension_dir({})
    assert default == Path(sys.prefix) / "var" / "cache" / "torch_extensions" or not os.access(sys.prefix, os.W_OK)
    env = {"PATH": os.defpath, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "empty")}
    if shutil.which("c++", path=os.defpath):
        assert "building its CPU op" in prepare_extension(env)


def test_port_taken_at_the_rendezvous_is_recognised(tmp_path):
    from datetime import timedelta

    import torch.distributed as dist

    from ruadapt.train.supervise import is_port_in_use, port_range

    port = pick_master_port()
    low, high = port_range()
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert 29500 == low <= port <= high < ephemeral  # never one the kernel may hand to a client meanwhile
    with socket.socket() as s:  # another job's store took the port after it was picked
        s.bind(("", port))
        s.listen()
        with pytest.raises(Exception) as info:
            dist.TCPStore("127.0.0.1", port, 1, True, timeout=timedelta(seconds=5))
    assert is_port_in_use(info.value), info.value  # torch's own error, as rank 0 meets it
    assert not is_port_in_use(RuntimeError("Connection closed by peer"))


def test_allreduce_buffers_of_the_run_are_removed_and_no_others(tmp_path):
    """DeepSpeed's CPU allreduce leaves /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> behind; only
    this user's files of this port go (test_demo.py checks a real launch leaves none)."""
    from ruadapt.train.supervise import remove_allreduce_buffers

    uid = os.getuid()
    names = [
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29611_0",
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29611_1",
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29612_0",  # another run's port
        f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_29611_0",  # another user's
        "other_29611_0",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert remove_allreduce_buffers(29611, shm_dir=tmp_path) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_supervisor_keeps_an_inherited_ignored_sigint_ignored(tmp_path):
    import threading

    from ruadapt.train.supervise import supervise

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, sig = supervise([sys.executable, "-c", "import time; time.sleep(3)"], grace_s=1.0)
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert (code, sig) == (0, None)
