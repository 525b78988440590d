"""``ruadapt recipe`` (issue 17): the recipes ship inside the package, ``recipe ls`` lists every one, and
``recipe cp`` writes copies whose YAMLs run as written (``ruadapt train --dry-run`` validates them, DeepSpeed
included), whose script runs its own YAMLs, and which never overwrite a file without ``--force``. A wheel built
from the source carries the recipes and, installed, finds them without any checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny import ROOT, SHARED_DATA, make_tiny_model

from ruadapt.cli import main
from ruadapt.recipe import read_spec, recipe_names
from ruadapt.train.config import load_config
from ruadapt.vocab.init_rules import DEFAULT_INPUT, DEFAULT_TIED

PACKAGE_RECIPES = ROOT / "ruadapt" / "recipes"
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # lib.sh calls this venv's `ruadapt recipe env`
RECIPE_VARS = (
    "RUN",
    "DS_CONFIGS",
    "CORPUS",
    "REPLAY_CORPUS",
    "SFT_DATA",
    "CPT_STEPS",
    "CPT2_STEPS",
    "SFT_STEPS",
    "DISTILL_STEPS",
    "CPT_FROM",
    "BASE",
    "RU_TRAIN",
    "EN_TRAIN",
)


@pytest.fixture(autouse=True)
def no_recipe_env(monkeypatch):
    """What the copies hold must come from the copy, not from a variable the recipe scripts export."""
    for var in RECIPE_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("recipe-data")
    corpus = root / "ru.txt"
    corpus.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:50]), encoding="utf-8")
    english = root / "en.txt"  # the replay of the base's own language every CPT YAML mixes in
    english.write_text(
        "".join((SHARED_DATA / "en_train.txt").open(encoding="utf-8").readlines()[:50]), encoding="utf-8"
    )
    chat = root / "chat.jsonl"
    chat.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]},
            ensure_ascii=False,
        )
        + "\n"
    )
    return {"corpus": corpus, "english": english, "chat": chat}


def cp(name: str, dest: Path, *sets: str, force: bool = False) -> int:
    return main(
        ["recipe", "cp", name, str(dest), *[a for s in sets for a in ("--set", s)], *(["--force"] if force else [])]
    )


def content(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_ls_lists_every_recipe_dir(capsys):
    dirs = {d.name for d in PACKAGE_RECIPES.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    assert len(dirs) >= 8 and "deepspeed" not in dirs
    assert main(["recipe", "ls"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()[1:] if line and not line.startswith("copy one")]
    assert {row.split()[0] for row in rows} == dirs == set(recipe_names())
    for row in rows:
        name, rest = row.split(maxsplit=1)
        assert ("GPU" in rest or "CPU" in rest) and "Russian" in rest or name == "cpu-tiny", row
    assert any(row.startswith("qwen2.5-72b") and "4 nodes × 8 GPUs" in row for row in rows)


def test_cp_then_train_runs_the_copies_as_written(data, tmp_path, capsys):
    dest = tmp_path / "qwen7b"
    assert (
        cp(
            "qwen2.5-7b",
            dest,
            f"CORPUS={data['corpus']}",
            f"REPLAY_CORPUS={data['english']}",
            f"SFT_DATA={data['chat']}",
        )
        == 0
    )
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "cpt-embeddings.yaml",
        "cpt-lora.yaml",
        "deepspeed/zero2.json",
        "lib.sh",
        "qwen2.5-7b.sh",
        "recipe.yaml",
        "sft.yaml",
    ]
    for yml in (p for p in dest.glob("*.yaml") if p.name != "recipe.yaml"):
        assert "${" not in content(yml.read_text()), yml
        cfg = load_config(yml, check_files=False)  # nothing from the environment
        assert cfg.deepspeed == str(dest / "deepspeed" / "zero2.json") and Path(cfg.out).parent == dest
    cfg = load_config(dest / "cpt-embeddings.yaml", check_files=False)
    assert (
        cfg.model == str(dest / "swapped")
        and cfg.train.max_steps == 2000
        and cfg.data.train[0].path == str(data["corpus"])
    )
    assert cfg.data.train[1].path == str(data["english"]) and cfg.data.train[1].weight > 0
    # a stand-in for what `ruadapt swap` writes at RUN/swapped (positions raised to the recipe's block size)
    model = make_tiny_model(dest / "swapped", "qwen2")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    capsys.readouterr()
    stages = [str(dest / "cpt-embeddings.yaml"), str(dest / "cpt-lora.yaml")]  # stage 2 trains stage 1's output
    assert (
        main(
            [
                "train",
                "--config",
                stages[0],
                "--config",
                stages[1],
                "--num-gpus",
                "1",
                "--master-port",
                "29998",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    launch = load_config(stages[0], check_files=False).work_dir.resolve() / "launch.json"  # both runs, in order
    assert (
        out.strip().endswith(f"--module ruadapt.train --launch-json {launch}") and not launch.exists()
    )  # dry: unwritten


def test_an_input_left_out_is_one_line_naming_file_key_and_variable(tmp_path, capsys):
    dest = tmp_path / "noinput"
    assert cp("qwen2.5-7b", dest) == 0
    assert "read from the environment when ruadapt train runs: CORPUS REPLAY_CORPUS SFT_DATA" in capsys.readouterr().out
    yml = dest / "cpt-embeddings.yaml"
    assert main(["train", "--config", str(yml), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and str(yml) in err[0]
        and "data.train[0].path uses ${CORPUS}" in err[0]
        and "export CORPUS=" in err[0]
    )


def test_second_cp_refuses_and_force_replaces_only_the_recipe_files(data, tmp_path, capsys):
    dest = tmp_path / "twice"
    assert cp("qwen2.5-7b", dest, f"CORPUS={data['corpus']}") == 0
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cp("qwen2.5-7b", dest, "CPT_STEPS=7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--force" in err[0] and str(dest) in err[0]
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    (dest / "tokenizer").mkdir()
    (dest / "tokenizer" / "tokenizer.json").write_text("{}")  # an output of the run: must stay
    assert cp("qwen2.5-7b", dest, "CPT_STEPS=7", force=True) == 0
    assert (dest / "tokenizer" / "tokenizer.json").read_text() == "{}"
    assert load_config(dest / "cpt-embeddings.yaml", ["data.train=[x]"], check_files=False).train.max_steps == 7
    assert (
        read_spec(dest / "recipe.yaml").defaults.CPT_STEPS == 7 and "CPT_STEPS" in read_spec(dest / "recipe.yaml").fixed
    )
    assert not [p for p in tmp_path.iterdir() if "ruadapt-tmp" in p.name]


@pytest.mark.parametrize(
    "args,expect",
    [
        (["nope", "{d}"], "recipe 'nope' not found; recipes: cpu-tiny"),
        (["qwen2.5-7b", "{d}", "--set", "DRY_RUN=1"], "--set DRY_RUN: recipe qwen2.5-7b has no such variable"),
        (["qwen2.5-7b", "{d}", "--set", "DS_CONFIGS=/x"], "--set DS_CONFIGS: is DEST/deepspeed"),
        (["qwen2.5-7b", "{d}", "--set", "CPT_FROM=/x"], "--set CPT_FROM: is RUN/swapped, or RUN/distilled"),
        (["qwen2.5-7b", "{d}", "--set", "CORPUS"], "expected VAR=VALUE"),
        (["qwen2.5-7b", "{d}", "--set", "RUN={d} #x"], "does not read back as written"),  # would become a YAML comment
    ],
)
def test_bad_cp_is_one_line_and_writes_nothing(tmp_path, capsys, args, expect):
    dest = tmp_path / "bad"
    assert main(["recipe", "cp", *[a.format(d=dest) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ruadapt recipe cp: error: ") and expect in err[0], err
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_every_recipe_copies_and_loads(tmp_path, monkeypatch, capsys):
    for name in recipe_names():
        dest = tmp_path / name
        assert cp(name, dest) == 0, name
        texts = {p.name: p.read_text() for p in dest.glob("*.yaml") if p.name != "recipe.yaml"}
        off = {"distill.yaml"} if name != "cpu-tiny" else set()  # DISTILL_STEPS=0: the step is off in the copy
        assert set(texts) | {"recipe.yaml"} == {p.name for p in (PACKAGE_RECIPES / name).glob("*.yaml")} - off | {
            "recipe.yaml"
        }
        left = set(re.findall(r"\$\{(\w+)\}", "\n".join(content(t) for t in texts.values())))
        if name != "cpu-tiny":  # a model recipe's numbers come from recipe.yaml; the demo's live in cpu-tiny.sh
            assert left <= {"CORPUS", "REPLAY_CORPUS", "SFT_DATA", "RU_TRAIN", "EN_TRAIN"}, (
                name,
                left,
            )  # data the user brings
        for var in left:
            monkeypatch.setenv(
                var,
                f"/data/{var.lower()}"
                if var in ("CORPUS", "REPLAY_CORPUS", "SFT_DATA", "RU_TRAIN", "EN_TRAIN")
                else "7",
            )
        for file in texts:
            cfg = load_config(dest / file, check_files=False)
            assert Path(cfg.deepspeed).is_file() and Path(cfg.deepspeed).parent == dest / "deepspeed"
            assert str(cfg.out_path).startswith(str(dest)), (name, file)
        for var in left:
            monkeypatch.delenv(var)
        assert (dest / f"{name}.sh").is_file() == (name != "cpu-tiny")  # the demo's script is the repository's
        assert (dest / "recipe.yaml").is_file() == (name != "cpu-tiny")


def test_copied_script_runs_the_copied_yamls(data, tmp_path):
    dest = tmp_path / "q72"
    assert cp("qwen2.5-72b", dest, f"CORPUS={data['corpus']}", "BASE=/models/B $x", "NUM_GPUS=4") == 0
    env = dict(os.environ, DRY_RUN="1", INSTRUCT="/models/I", RUN="/elsewhere", HOSTFILE="/etc/hosts", PATH=PATH)
    r = subprocess.run(["bash", str(dest / "qwen2.5-72b.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert len(cmds) == 6 and "/elsewhere" not in r.stdout  # RUN is the one the YAMLs hold
    # any value survives as written (quoted for the shell by `ruadapt recipe env`)
    assert f"--base /models/B\\ \\$x --corpus {data['corpus']}" in cmds[0] and f"--out {dest}/tokenizer" in cmds[0]
    assert f"--config {dest}/cpt-embeddings.yaml --config {dest}/cpt-lora.yaml --hostfile /etc/hosts" in cmds[2]
    assert f"--config {dest}/sft.yaml" in cmds[4]
    shellcheck = shutil.which(
        "shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if shellcheck:
        p = subprocess.run(
            [
                shellcheck,
                "--external-sources",
                "--source-path=SCRIPTDIR",
                str(dest / "qwen2.5-72b.sh"),
                str(dest / "lib.sh"),
            ],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stdout[-3000:]


def test_a_new_model_is_one_yaml_plus_its_training_yamls(tmp_path):
    """A model recipe is data: a recipe.yaml (model, hardware, the defaults where it differs) beside run YAMLs runs
    through lib.sh's one pipeline, with no script of its own beyond `ruadapt_recipe DIR`, and the environment still
    overrides each default."""
    new = tmp_path / "new-model"
    new.mkdir()
    for f in ("cpt-embeddings.yaml", "cpt-lora.yaml", "sft.yaml"):
        shutil.copy(PACKAGE_RECIPES / "qwen2.5-7b" / f, new / f)
    (new / "recipe.yaml").write_text(
        "description: Russian for a new model\nhardware: 2 GPUs\nbase: /models/New\n"
        "instruct: /models/New-Instruct\ndefaults: {NUM_GPUS: 2, STAGE2: 0, CPT_STEPS: 9}\n"
    )
    script = f"set -euo pipefail; source {PACKAGE_RECIPES / 'lib.sh'}; ruadapt_recipe {new}"
    env = dict(os.environ, DRY_RUN="1", PATH=PATH, CORPUS="/data/mine.txt")
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert [c.split()[2] for c in cmds] == ["tokenizer", "swap", "train", "lep", "train", "eval"], r.stdout
    assert "--base /models/New --corpus /data/mine.txt" in cmds[0] and "--out runs/new-model/tokenizer" in cmds[0]
    assert cmds[2].endswith(f"--config {new}/cpt-embeddings.yaml --num-gpus 2")  # STAGE2: 0, no stage 2
    assert "--instruct /models/New-Instruct --adapted runs/new-model/cpt1" in cmds[3]


def test_bad_recipe_yaml_is_every_problem_one_line_each(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "recipe.yaml").write_text(
        "description: x\nhardwar: 8 GPUs\nbase: /m\ninstruct: /i\ndefaults: {NUM_GPU: 2, MODE: append}\n"
    )
    r = subprocess.run([sys.executable, "-m", "ruadapt", "recipe", "env", str(bad)], capture_output=True, text=True)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and not r.stdout and len(err) == 4, err
    assert all(line.startswith(f"ruadapt recipe env: error: {bad / 'recipe.yaml'}: ") for line in err)
    assert [
        "unknown key 'hardwar'" in err[0],
        "missing required key 'hardware'" in err[1],
        "unknown key 'NUM_GPU' in defaults" in err[2],
        "defaults.MODE 'append' is not one of extend, replace" in err[3],
    ] == [True] * 4, err


def test_wheel_carries_the_recipes_and_the_installed_package_finds_them(tmp_path):
    """Build a wheel from a copy of the source, unpack it as site-packages and run it from a directory with no
    checkout in sight: `recipe ls` and `recipe cp` work from the package data alone."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "ruadapt", src / "ruadapt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("ruadapt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {
        str(p.relative_to(ROOT)) for p in PACKAGE_RECIPES.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped and shipped <= set(names), sorted(shipped - set(names))
    assert not [
        n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith(("runs/", "recipes/", "tests/"))
    ]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    run = tmp_path / "elsewhere"
    run.mkdir()

    def ruadapt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ruadapt", *args], cwd=run, env=env, capture_output=True, text=True, timeout=120
        )

    where = subprocess.run(
        [sys.executable, "-c", "import ruadapt.recipe as r; print(r.recipes_dir())"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "ruadapt" / "recipes"), where.stderr
    ls = ruadapt("recipe", "ls")
    assert ls.returncode == 0 and {
        line.split()[0] for line in ls.stdout.splitlines()[1:] if line and not line.startswith("copy")
    } == set(recipe_names())
    c = ruadapt("recipe", "cp", "qwen2.5-7b", "copy", "--set", "CORPUS=/data/ru.txt")
    assert c.returncode == 0, c.stderr
    assert (run / "copy" / "deepspeed" / "zero2.json").read_bytes() == (
        PACKAGE_RECIPES / "deepspeed" / "zero2.json"
    ).read_bytes()
    assert f"out: {run / 'copy'}/cpt1" in (run / "copy" / "cpt-embeddings.yaml").read_text()


def pipeline(recipe: Path, tmp_path: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    """lib.sh's pipeline of ``recipe`` (a dir with recipe.yaml) under DRY_RUN=1: the printed commands, and the
    variables it exported for the YAMLs (what `ruadapt train` would read them with)."""
    names = ("RUN", "BASE", "CORPUS", "REPLAY_CORPUS", "SFT_DATA", "DS_CONFIGS", "CPT_STEPS", "CPT2_STEPS")
    names += ("SFT_STEPS", "DISTILL_STEPS", "CPT_FROM")
    script = f"set -euo pipefail; source {PACKAGE_RECIPES / 'lib.sh'}; ruadapt_recipe {recipe}; " + " ".join(
        f'echo "={v}=${{{v}}}";' for v in names
    )
    run = dict(os.environ, DRY_RUN="1", PATH=PATH, RUN=str(tmp_path / "run"), **env)
    r = subprocess.run(["bash", "-c", script], env=run, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    exported = dict(line[1:].split("=", 1) for line in r.stdout.splitlines() if line.startswith("="))
    return [line for line in r.stdout.splitlines() if line.startswith("+ ")], exported


def configs(cmd: str) -> list[str]:
    words = cmd.split()
    return [words[i + 1] for i, w in enumerate(words) if w == "--config"]


@pytest.mark.parametrize("name", ["qwen2.5-7b", "gemma-3-12b"])
def test_distill_step_is_off_by_default_and_runs_between_swap_and_cpt(name, tmp_path, monkeypatch):
    """DISTILL_STEPS (default 0) adds step `distill` (RECIPE/distill.yaml, stage distill, ZeRO-2) between swap and
    CPT, and CPT stage 1 then starts from RUN/distilled; off, the commands are the ones without it and CPT reads
    RUN/swapped."""
    run = tmp_path / "run"
    cmds, exported = pipeline(PACKAGE_RECIPES / name, tmp_path)
    assert [c.split()[2] for c in cmds] == ["tokenizer", "swap", "train", "lep", "train", "eval"]
    assert not any("distill.yaml" in c for c in cmds) and exported["DISTILL_STEPS"] == "0"
    for var, value in exported.items():
        monkeypatch.setenv(var, value)
    assert load_config(configs(cmds[2])[0], check_files=False).model == f"{run}/swapped"

    cmds, exported = pipeline(PACKAGE_RECIPES / name, tmp_path, DISTILL_STEPS="5")
    assert [c.split()[2] for c in cmds] == ["tokenizer", "swap", "train", "train", "lep", "train", "eval"]
    assert configs(cmds[2]) == [str(PACKAGE_RECIPES / name / "distill.yaml")] and cmds[2].endswith("--num-gpus 8")
    assert configs(cmds[3])[0] == str(PACKAGE_RECIPES / name / "cpt-embeddings.yaml")
    for var, value in exported.items():
        monkeypatch.setenv(var, value)
    distill = load_config(configs(cmds[2])[0], check_files=False)
    assert distill.stage == "distill" and distill.model == f"{run}/swapped" and distill.out == f"{run}/distilled"
    assert distill.train.max_steps == 5 and distill.train.weight_decay == 0 and distill.train.bf16 == "auto"
    assert distill.distill.base == exported["BASE"] == read_spec(PACKAGE_RECIPES / name / "recipe.yaml").base
    assert Path(distill.deepspeed).name == "zero2.json" and distill.data.train[0].path == "/data/ru_train.txt"
    cpt = load_config(configs(cmds[3])[0], check_files=False)
    assert cpt.model == f"{run}/distilled" and distill.block_size == cpt.block_size

    # only a recipe with a distill.yaml: qwen2.5-72b has none (its bf16 weights do not fit one GPU under ZeRO-2)
    env = dict(os.environ, DRY_RUN="1", PATH=PATH, DISTILL_STEPS="5")
    r = subprocess.run(
        ["bash", str(PACKAGE_RECIPES / "qwen2.5-72b.sh")], env=env, capture_output=True, timeout=60, text=True
    )
    assert r.returncode == 2 and "has no distill.yaml" in r.stderr and not r.stdout


def test_cp_with_distill_steps_copies_the_distill_step(data, tmp_path, monkeypatch):
    """`recipe cp --set DISTILL_STEPS=N` copies distill.yaml (left out with the default 0) and writes CPT_FROM as
    DEST/distilled; the copied script runs distill then CPT on the copies."""
    dest = tmp_path / "q3"
    assert cp("qwen2.5-3b", dest, f"CORPUS={data['corpus']}", "DISTILL_STEPS=5") == 0
    assert (dest / "distill.yaml").is_file()
    spec = read_spec(dest / "recipe.yaml")
    assert spec.defaults.DISTILL_STEPS == 5 and "DISTILL_STEPS" in spec.fixed
    assert load_config(dest / "cpt-embeddings.yaml", ["data.train=[x]"], check_files=False).model == str(
        dest / "distilled"
    )
    env = dict(os.environ, DRY_RUN="1", PATH=PATH, BASE="/models/B", DISTILL_STEPS="0")  # fixed: the copy wins
    r = subprocess.run(["bash", str(dest / "qwen2.5-3b.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert configs(cmds[2]) == [str(dest / "distill.yaml")] and configs(cmds[3])[0] == str(dest / "cpt-embeddings.yaml")
    monkeypatch.setenv("BASE", "/models/B")  # the base stays ${BASE}: the copied script exports it
    cfg = load_config(dest / "distill.yaml", check_files=False)
    assert cfg.train.max_steps == 5 and cfg.out == str(dest / "distilled") and cfg.distill.base == "/models/B"

    plain = tmp_path / "plain"  # the default: no distill.yaml, and DISTILL_STEPS > 0 is refused with the reason
    assert cp("qwen2.5-3b", plain, f"CORPUS={data['corpus']}") == 0
    assert not (plain / "distill.yaml").exists()
    env["DISTILL_STEPS"] = "5"
    r = subprocess.run(["bash", str(plain / "qwen2.5-3b.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "has no distill.yaml" in r.stderr and "--set DISTILL_STEPS=N" in r.stderr


# each model recipe's base: the model_type of a tiny stand-in (Gemma 3's text model for gemma-3-12b) and the released
# config's tie_word_embeddings, which decides the init options swap accepts
RECIPE_MODELS = {
    "qwen2.5-3b": ("qwen2", True),
    "qwen2.5-7b": ("qwen2", False),
    "qwen2.5-32b": ("qwen2", False),
    "qwen2.5-72b": ("qwen2", False),
    "llama-3-8b": ("llama", False),
    "mistral-nemo-12b": ("mistral", False),
    "gemma-3-12b": ("gemma3_text", True),
}
FAST_RECIPES = ("qwen2.5-3b", "qwen2.5-7b")  # one tied, one untied; the others in make test-all


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_RECIPES else pytest.param(n, marks=pytest.mark.slow) for n in sorted(RECIPE_MODELS)],
)
def test_recipe_swap_runs_its_init_rules_on_its_architecture(name, tmp_path):
    """The swap command each model recipe prints (with its SWAP_ARGS) runs on a tiny model of the recipe's own
    architecture and tie: the untied recipes give the lm_head's new rows the first piece's row (docs/init.md: the
    rule that trains best through a long CPT), the tied ones swap's tied default."""
    assert set(RECIPE_MODELS) == {n for n in recipe_names() if (PACKAGE_RECIPES / n / "recipe.yaml").is_file()}
    model_type, tied = RECIPE_MODELS[name]
    cmds, _ = pipeline(PACKAGE_RECIPES / name, tmp_path)
    words = next(c for c in cmds if c.split()[2] == "swap").split()[3:]  # "+ ruadapt swap --model B ..."
    args = dict(zip(words[::2], words[1::2]))
    base = make_tiny_model(tmp_path / "base", model_type, tied=tied)
    args.update({"--model": str(base), "--tokenizer": str(base), "--out": str(tmp_path / "swapped")})
    assert main(["swap", *[w for kv in args.items() for w in kv], "--allow", "same-tokenizer"]) == 0
    rules = json.loads((tmp_path / "swapped" / "ruadapt_swap.json").read_text())["result"]["init"]
    if tied:
        assert "--init-output" not in args and rules == {"tied": DEFAULT_TIED}
    else:
        assert args["--init-output"] == "first" and rules == {"input": DEFAULT_INPUT, "output": "first"}
