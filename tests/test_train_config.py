"""Run configs (issue 5, must hold 5-6): every recipe YAML and DeepSpeed JSON validates (DeepSpeed's own config
class, "auto" filled); every recipe passes `bash -n` and prints its commands in a dry run; a bad config fails
with one line, exit 2, before any process starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml
from tiny import SHARED_DATA, make_tiny_model

from ruadapt.cli import main
from ruadapt.errors import RuadaptError
from ruadapt.recipe import read_spec
from ruadapt.train.config import (
    deepspeed_for_world,
    fill_deepspeed_config,
    load_config,
    load_configs,
    load_deepspeed_json,
    read_launch,
    validate_deepspeed_config,
    write_launch,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
MODEL_RECIPES = sorted(p for p in RECIPES.glob("*.sh") if p.name not in ("lib.sh", "cpu-tiny.sh"))
YAMLS = sorted(p for p in RECIPES.glob("*/*.yaml") if p.name != "recipe.yaml")  # run YAMLs
DS_JSONS = sorted((RECIPES / "deepspeed").glob("*.json"))
BIN = Path(sys.executable).parent  # the venv whose `ruadapt` the recipes call


def test_recipe_set_is_complete():
    names = {p.stem for p in MODEL_RECIPES}
    assert {
        "qwen2.5-3b",
        "qwen2.5-7b",
        "qwen2.5-32b",
        "qwen2.5-72b",
        "llama-3-8b",
        "mistral-nemo-12b",
        "gemma-3-12b",
    } <= names
    for n in names | {"cpu-tiny"}:
        assert {p.name for p in (RECIPES / n).glob("*.yaml")} >= {"cpt-embeddings.yaml", "cpt-lora.yaml", "sft.yaml"}, n
    assert {p.name for p in DS_JSONS} == {"zero1.json", "zero2.json", "zero3.json"}


@pytest.mark.parametrize("yml", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_yaml_validates_with_deepspeed(yml, monkeypatch):
    for var, value in {
        "RUN": "/runs/x",
        "CORPUS": "/data/ru.txt",
        "SFT_DATA": "/data/chat.jsonl",
        "CPT_STEPS": "10",
        "CPT2_STEPS": "5",
        "SFT_STEPS": "3",
        "DS_CONFIGS": str(RECIPES / "deepspeed"),
    }.items():
        monkeypatch.setenv(var, value)
    for var in set(re.findall(r"\$\{(\w+)\}", yml.read_text())) - set(os.environ):
        monkeypatch.setenv(var, "1")  # other recipes' variables (counts or paths; files are not checked here)
    assert yml.read_text().startswith("# ") and "# launch:" in yml.read_text()  # commented header with the launch line
    cfg = load_config(yml, check_files=False)
    assert Path(cfg.deepspeed).is_file()
    gb = cfg.train.micro_batch_size * cfg.train.grad_accum
    if yml.parent.name != "cpu-tiny" and cfg.task == "cpt":
        nodes = 4 if "72b" in yml.parent.name else 1
        assert gb * 8 * nodes == 256  # LEP paper: global batch ≈ 256 sequences
        assert 1024 <= cfg.block_size <= 4096
        if cfg.stage == "distill":  # the optional step before CPT (docs/distill.md): new input rows only, ZeRO 0-2
            assert cfg.train.weight_decay == 0 and Path(cfg.deepspeed).name == "zero2.json"
        else:
            assert cfg.train.warmup_steps == 100 and cfg.train.weight_decay == 0.1
    filled = fill_deepspeed_config(load_deepspeed_json(Path(cfg.deepspeed)), cfg)  # once, by the launcher
    for world in (1, 8):  # each rank adds its world
        ds = deepspeed_for_world(filled, cfg, world_size=world, bf16=world > 1)
        assert "auto" not in json.dumps(ds) and ds["train_batch_size"] == gb * world
        if world == 1:
            validate_deepspeed_config(ds, cfg.deepspeed)


@pytest.mark.parametrize("path", DS_JSONS, ids=lambda p: p.name)
def test_deepspeed_jsons_validate(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = load_deepspeed_json(path)
    assert "train_batch_size" not in raw  # derived from the YAML at launch (see fill_deepspeed_config)
    ds = dict(raw)
    for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert ds[k] == "auto"
    ds.update(
        train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=3, gradient_clipping=1.0, train_batch_size=6
    )
    ds["bf16"] = {"enabled": False}
    c = DeepSpeedConfig(ds)
    assert c.zero_optimization_stage == int(path.stem[-1]) and c.train_batch_size == 6


@pytest.mark.parametrize("recipe", MODEL_RECIPES, ids=lambda p: p.stem)
def test_recipe_bash_syntax_and_dry_run(recipe, tmp_path):
    subprocess.run(["bash", "-n", str(recipe)], check=True)
    text = recipe.read_text()
    assert "set -euo pipefail" in text and "# Launch:" in text and len(text.splitlines()) <= 8  # the model is data:
    spec = read_spec(RECIPES / recipe.stem / "recipe.yaml")  # recipe.yaml, through the schema
    assert "GPU" in spec.hardware and spec.base.startswith("/models/") and spec.instruct.startswith("/models/")
    # lib.sh reads recipe.yaml through `ruadapt recipe env`: the environment's ruadapt (the venv's) must be on PATH
    env = dict(os.environ, DRY_RUN="1", RUN=str(tmp_path / "run"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(recipe)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("+ ")]
    cmds = [" ".join(l.split()[1:3]) for l in lines]
    assert cmds == [
        "ruadapt tokenizer",
        "ruadapt swap",
        "ruadapt train",
        "ruadapt lep",
        "ruadapt train",
        "ruadapt eval",
    ], r.stdout
    assert "cpt-embeddings.yaml" in lines[2] and "cpt-lora.yaml" in lines[2] and "sft.yaml" in lines[4]
    assert ("--hostfile" in lines[2]) == ("72b" in recipe.stem)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_lib_sh_syntax():
    subprocess.run(["bash", "-n", str(RECIPES / "lib.sh")], check=True)


# ------------------------------------------------------------------------------------------ bad configs
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cfg")
    model = make_tiny_model(tmp / "m", "qwen2")
    text = tmp / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:20]), encoding="utf-8")
    base = {
        "task": "cpt",
        "model": str(model),
        "out": str(tmp / "out"),
        "deepspeed": str(RECIPES / "deepspeed" / "zero2.json"),
        "stage": "embeddings",
        "block_size": 64,
        "data": {"train": [str(text)]},
        "train": {"max_steps": 2},
    }
    return tmp, base


def write(tmp: Path, name: str, data: dict) -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data))
    return p


def _bert_model(tmp: Path) -> Path:
    d = tmp / "bert"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    return d


@pytest.mark.parametrize(
    "case,edit,expect",
    [
        ("unknown key", lambda b, t: {**b, "trian": {}}, "unknown key 'trian'"),
        ("unknown nested key", lambda b, t: {**b, "train": {"lr_rate": 1}}, "unknown key 'lr_rate' in train"),
        (
            "missing data file",
            lambda b, t: {**b, "data": {"train": [str(t / "nope.txt")]}},
            "nope.txt: data.train file not found",
        ),
        (
            "block_size",
            lambda b, t: {**b, "block_size": 4096},
            "block_size 4096 is above the model's max_position_embeddings 256",
        ),
        (
            "embeddings not found",
            lambda b, t: {**b, "model": str(_bert_model(t))},
            "model_type 'bert' is not supported",
        ),
        ("bad stage", lambda b, t: {**b, "stage": "adapter"}, "stage 'adapter' is not one of"),
        (
            "missing key",
            lambda b, t: {k: v for k, v in b.items() if k != "deepspeed"},
            "missing required key 'deepspeed'",
        ),
    ],
)
def test_bad_config_is_one_line_error_before_any_process(good, case, edit, expect, capsys):
    tmp, base = good
    path = write(tmp, f"bad-{case.replace(' ', '_')}.yaml", edit(base, tmp))
    assert main(["train", "--config", str(path), "--num-gpus", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and str(path) in err[0], err
    assert not (tmp / "out.work").exists() and not (tmp / "out").exists()


@pytest.mark.parametrize(
    "case,edit,expect",
    [
        (
            "schema",
            lambda b, t: {**b, "trian": {}, "stage": "adapter", "train": {"max_steps": "lots"}},
            [
                "unknown key 'trian'",
                "stage 'adapter' is not one of embeddings, lora, full",
                "train.max_steps: expected an integer, got 'lots'",
            ],
        ),
        (
            "values",
            lambda b, t: {**b, "block_size": 4096, "data": {"train": [str(t / "nope.txt")]}, "train": {"lr": -1}},
            [
                "train.lr must be positive",
                "nope.txt: data.train file not found",
                "block_size 4096 is above the model's max_position_embeddings 256",
            ],
        ),
    ],
)
def test_three_mistakes_are_three_lines(good, case, edit, expect, capsys):
    """Every problem of a config at once, one line each naming the file, exit 2, nothing started or written."""
    tmp, base = good
    path = write(tmp, f"three-{case}.yaml", edit(base, tmp))
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 3 and not captured.out, err
    for line, want in zip(err, expect):
        assert line.startswith(f"ruadapt train: error: {path}: ") and want in line, (line, want)
    assert not (tmp / "out.work").exists() and not (tmp / "out").exists()


def test_literal_choices_are_the_schema():
    """The choices a config accepts are the Literal types of its dataclasses: the schema refuses what they do not
    list and lists what they do (one place for both)."""
    from ruadapt.schema import coerce
    from ruadapt.train.config import Stage, TrainConfig

    assert coerce("lora", Stage, "stage") == "lora" and get_args(Stage) == ("embeddings", "lora", "full", "distill")
    with pytest.raises(RuadaptError) as e:
        coerce({"scheduler": "cosin", "bf16": "maybe", "report_to": ["tensorbored"]}, TrainConfig, "train")
    assert e.value.lines == [
        "train.scheduler 'cosin' is not one of cosine, linear, constant",
        "train.report_to[0] 'tensorbored' is not one of tensorboard, wandb",
        "train.bf16 'maybe' is not one of auto, true, false",
    ]


def test_bad_config_through_the_installed_command(good):
    tmp, base = good
    path = write(tmp, "bad-cli.yaml", {**base, "block_size": 100000})
    r = subprocess.run(
        [sys.executable, "-m", "ruadapt.cli", "train", "--config", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "deepspeed" not in r.stdout.lower()
    assert r.stderr.strip().splitlines()[-1].startswith("ruadapt train: error: ")


def test_good_config_dry_run_prints_launcher_command(good, capsys):
    tmp, base = good
    path = write(tmp, "good.yaml", base)
    assert main(["train", "--config", str(path), "--num-gpus", "2", "--master-port", "29999", "--dry-run"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.split()[0].endswith("deepspeed") and "--num_gpus 2 --master_port 29999 --module ruadapt.train" in out
    launch = tmp / "out.work" / "launch.json"
    assert out.endswith(f"--module ruadapt.train --launch-json {launch.resolve()}") and not launch.exists()


def test_launch_json_round_trips_what_the_launcher_resolved(good, monkeypatch):
    """What the ranks read is what the launcher checked: configs with ${VAR} and --set applied, the DeepSpeed
    config filled once; read back, the same dataclasses and dicts, with no YAML and no environment needed."""
    tmp, base = good
    monkeypatch.setenv("TINY_STEPS", "3")
    first = write(tmp, "launch-a.yaml", {**base, "out": str(tmp / "la"), "train": {"max_steps": "${TINY_STEPS}"}})
    second = write(tmp, "launch-b.yaml", {**base, "model": str(tmp / "la"), "out": str(tmp / "lb"), "stage": "full"})
    configs = load_configs([str(first), str(second)], ["train.lr=0.25"])
    runs = [(c, fill_deepspeed_config(load_deepspeed_json(Path(c.deepspeed)), c)) for c in configs]
    launch = write_launch(tmp / "la.work" / "launch.json", runs, resume=True)
    monkeypatch.delenv("TINY_STEPS")
    first.unlink(), second.unlink()  # the ranks never read the YAMLs
    back, resume = read_launch(launch)
    assert resume and [c for c, _ in back] == configs and [d for _, d in back] == [d for _, d in runs]
    assert back[0][0].train.max_steps == 3 and back[1][0].train.lr == 0.25 and back[1][0].source == str(second)
    assert [p.name for p in launch.parent.iterdir()] == ["launch.json"]  # renamed into place, no temporary left


def test_env_variables_and_overrides(good, monkeypatch):
    tmp, base = good
    monkeypatch.setenv("TINY_OUT", str(tmp / "out-env"))
    path = write(tmp, "env.yaml", {**base, "out": "${TINY_OUT}", "train": {"max_steps": "7"}})
    cfg = load_config(path, ["train.lr=0.5"])
    assert cfg.out == str(tmp / "out-env") and cfg.train.max_steps == 7 and cfg.train.lr == 0.5
    monkeypatch.delenv("TINY_OUT")
    with pytest.raises(
        RuadaptError,
        match=r"env.yaml: out uses \$\{TINY_OUT\} but the environment variable TINY_OUT is not "
        r"set; export TINY_OUT=\.\.\., or give out with --set out=\.\.\.",
    ):
        load_config(path)


def test_resume_without_checkpoint_fails_before_launch(good, capsys):
    tmp, base = good
    path = write(tmp, "resume.yaml", {**base, "out": str(tmp / "out-resume")})
    assert main(["train", "--config", str(path), "--resume", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no complete checkpoint" in err[0]
