"""What the ranks of a run depend on (issue 25, points 5 and 8): the world size a ZeRO checkpoint needs, refused in
one line before launch; the signal the user sent, named in the ranks' log although every rank gets SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny import SHARED_DATA, make_tiny_model

from ruadapt.cli import main
from ruadapt.train.config import load_config
from ruadapt.train.rundir import COMPLETE, RUN_JSON, STATE, comparable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_with_checkpoint(tmp_path_factory):
    """A config and, in its work dir, what a 2-process ZeRO-2 launch leaves after its step-2 checkpoint."""
    tmp = tmp_path_factory.mktemp("ws")
    model = make_tiny_model(tmp / "m", "qwen2")
    text = tmp / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:40]), encoding="utf-8")
    path = tmp / "c.yaml"
    path.write_text(
        json.dumps(
            {
                "task": "cpt",
                "model": str(model),
                "out": str(tmp / "out"),
                "deepspeed": str(ROOT / "recipes/deepspeed/zero2.json"),
                "block_size": 32,
                "data": {"train": [str(text)], "eval_blocks": 0},
            }
        )
    )
    cfg = load_config(path)
    tag = cfg.work_dir / "checkpoints" / "step-0000002"
    tag.mkdir(parents=True)
    for r in range(2):  # the file names DeepSpeed gives the per-process ZeRO partitions
        (tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    (tag / STATE).write_text(json.dumps({"step": 2, "world_size": 2, "zero_stage": 2}))
    (cfg.work_dir / "checkpoints" / COMPLETE).write_text(tag.name + "\n")
    (cfg.work_dir / RUN_JSON).write_text(json.dumps(comparable(cfg)))
    return path, tag


def test_resume_at_another_world_size_is_refused_before_launch(run_with_checkpoint, capsys):
    path, tag = run_with_checkpoint
    assert main(["train", "--config", str(path), "--num-gpus", "1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{tag}: written by 2 processes under ZeRO stage 2" in err[0] and "--num-gpus 2" in err[0]
    # the world size it was written with passes the check (the dry run prints the launch command)
    assert main(["train", "--config", str(path), "--num-gpus", "2", "--dry-run"]) == 0
    assert "--num_gpus 2" in capsys.readouterr().out


def test_world_size_of_an_older_checkpoint_comes_from_its_zero_partitions(run_with_checkpoint):
    from ruadapt.train.rundir import checkpoint_world_size

    _, tag = run_with_checkpoint
    state = json.loads((tag / STATE).read_text())
    try:
        (tag / STATE).write_text(json.dumps({"step": 2}))  # written before world_size was recorded
        assert checkpoint_world_size(tag.parent, tag.name) == 2
    finally:
        (tag / STATE).write_text(json.dumps(state))


def test_rank_log_names_the_signal_the_user_sent(tmp_path):
    """SIGINT to ``ruadapt train`` reaches the launcher's group as SIGTERM; the rank still names SIGINT."""
    from ruadapt.train.supervise import supervise

    ready, said = tmp_path / "ready", tmp_path / "said"
    rank = (
        "import signal, sys, time\n"
        "from ruadapt.train.runner import stop_signal_name\n"
        f"def stop(signum, frame):\n    open({str(said)!r}, 'w').write(stop_signal_name(signum))\n    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"open({str(ready)!r}, 'w').write('1')\n"
        "time.sleep(120)\n"
    )

    def send() -> None:
        deadline = time.monotonic() + 120
        while not ready.is_file():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=send)
    timer.start()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        code, sig = supervise([sys.executable, "-c", rank], grace_s=60.0, env=env)
    finally:
        timer.join()
    assert (code, sig) == (130, signal.SIGINT)
    assert said.read_text() == "SIGINT"
    # without the supervisor's note (a direct deepspeed launch) the rank names what it got
    from ruadapt.train.runner import stop_signal_name

    assert os.environ.get("RUADAPT_STOP_SIGNAL_FILE") is None and stop_signal_name(signal.SIGTERM) == "SIGTERM"


def test_mix_lines_show_the_recorded_shares():
    from ruadapt.train.runner import mix_lines

    sources = [
        {
            "path": "/d/ru.txt",
            "weight": 0.7,
            "target_share": 0.7,
            "sequences": 141,
            "tokens": 9024,
            "sequence_share": 141 / 200,
            "token_share": 9024 / 12800,
            "available_sequences": 5000,
        },
        {
            "path": "/d/en.jsonl",
            "weight": 0.3,
            "target_share": 0.3,
            "sequences": 59,
            "tokens": 3776,
            "sequence_share": 59 / 200,
            "token_share": 3776 / 12800,
            "available_sequences": 40,
        },
    ]
    lines = mix_lines(sources)
    assert lines[0] == "data mix over 2 sources:"
    assert (
        lines[1] == "  ru.txt: target 70.0%, trained 70.5% of sequences (141), 70.5% of tokens (9,024); 5,000 available"
    )
    assert lines[2].startswith("  en.jsonl: target 30.0%, trained 29.5% of sequences (59)")
