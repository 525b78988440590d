"""Models named by Hugging Face repo id (ruadapt/io/hub.py), resolved offline from a pre-filled hub cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny import ROOT, SHARED_DATA, fill_hub_cache, make_tiny_model

from ruadapt.cli import main
from ruadapt.errors import RuadaptError
from ruadapt.io import hub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("hub") / "tiny", "qwen2", tied=False)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Qwen/Qwen2.5-7B", ("Qwen/Qwen2.5-7B", None)),
        ("Qwen/Qwen2.5-7B@v1.0", ("Qwen/Qwen2.5-7B", "v1.0")),
        ("runs/qwen7b-cpt", ("runs/qwen7b-cpt", None)),  # shaped like one: tried on the Hub when no such dir exists
        ("./Qwen/Qwen2.5-7B", None),
        ("/models/Qwen2.5-7B", None),
        ("~/Qwen2.5-7B", None),
        ("Qwen2.5-7B", None),
        ("a/b/c", None),
        ("a--b/c", None),
        ("a/b..c", None),
        ("Org/Name@", None),
        ("Орг/Имя", None),
    ],
)
def test_repo_id_shape(text, expected):
    assert hub.split_repo_id(text) == expected


def test_local_path_wins_and_non_ids_pass_through(tmp_path, monkeypatch, hub_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Org" / "Name").mkdir(parents=True)
    assert hub.resolve("Org/Name", "--model") == Path("Org/Name")  # never looked up on the Hub
    assert hub.resolve("./missing/dir", "--model") == Path("missing/dir")  # the stage names the missing dir


def test_cache_fixture_is_huggingface_hubs_layout(tiny, hub_cache):
    from huggingface_hub import scan_cache_dir, snapshot_download

    snap = fill_hub_cache(hub_cache, "Org/Name", tiny, refs=("main", "v1"))
    (repo,) = scan_cache_dir(hub_cache).repos
    assert repo.repo_id == "Org/Name" and repo.repo_type == "model"
    (rev,) = repo.revisions
    assert rev.commit_hash == snap.name and set(rev.refs) == {"main", "v1"}
    assert {f.file_name for f in rev.files} == {p.name for p in tiny.iterdir()}
    assert Path(snapshot_download("Org/Name", cache_dir=hub_cache, local_files_only=True)) == snap


def test_inspect_and_revisions_from_the_cache(tiny, hub_cache, capsys):
    snap = fill_hub_cache(hub_cache, "Org/Name", tiny, refs=("main", "v1"))
    assert main(["inspect", str(tiny), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    for args in (
        ["Org/Name", "--revision", snap.name],
        ["Org/Name@v1"],
        ["Org/Name", "--revision", "v1"],
        ["Org/Name"],
    ):
        assert main(["inspect", *args, "--json"]) == 0, args
        info = json.loads(capsys.readouterr().out)
        assert {k: v for k, v in info.items() if k != "path"} == {k: v for k, v in local.items() if k != "path"}
    assert hub.describe(snap) == {"repo_id": "Org/Name", "revision": "main", "commit": snap.name}  # as last asked
    hub._resolved.clear()  # another process: the refs that point at the commit
    assert hub.describe(snap) == {"repo_id": "Org/Name", "revision": "main,v1", "commit": snap.name}
    assert hub.describe(tiny) == {}


def test_uncached_revision_or_repo_is_one_line_error(tiny, hub_cache, capsys):
    fill_hub_cache(hub_cache, "Org/Name", tiny)
    assert main(["inspect", "Org/Name", "--revision", "v2"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("ruadapt inspect: error: MODEL Org/Name: not a directory, and not found in the hub cache at")
    assert (
        "revision v2; the cache holds main; HF_HUB_OFFLINE is set" in err
        and "hf download Org/Name --revision v2" in err
    )
    assert main(["swap", "--model", "Org/Missing", "--tokenizer", str(tiny), "--out", str(hub_cache.parent / "o")]) == 2
    err = one_line_error(capsys)
    assert "--model Org/Missing: not a directory, and not found in the hub cache" in err and "revision main;" in err
    assert not (hub_cache.parent / "o").exists()


def test_incomplete_snapshot_serves_a_tokenizer_not_a_model(tiny, hub_cache, capsys):
    # what `ruadapt tokenizer train --base Org/Name` leaves behind: everything but the weights
    snap = fill_hub_cache(
        hub_cache, "Org/Name", tiny, files=tuple(p.name for p in tiny.iterdir() if p.suffix != ".safetensors")
    )
    assert hub.resolve("Org/Name", "--base", what=hub.TOKENIZER) == snap
    assert main(["inspect", "Org/Name"]) == 2
    err = one_line_error(capsys)
    assert f"the cached snapshot {snap} of revision main is incomplete" in err and "run with network access" in err


def test_swap_with_hub_model_and_tokenizer(tiny, hub_cache, tmp_path, capsys):
    snap = fill_hub_cache(hub_cache, "Org/Name", tiny)
    ru = ROOT / "tokenizers" / "qwen2.5-ru48k"
    tok_snap = fill_hub_cache(hub_cache, "Org/Name-ru", ru)
    out = tmp_path / "swapped"
    assert main(["swap", "--model", "Org/Name", "--tokenizer", "Org/Name-ru", "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    rec = json.loads((out / "ruadapt_swap.json").read_text())
    assert rec["inputs"]["model"]["path"] == str(snap)  # the snapshot path names repo and commit
    assert hub.describe(rec["inputs"]["model"]["path"])["repo_id"] == "Org/Name"
    assert Path(rec["inputs"]["tokenizer"]["path"]).is_relative_to(
        tok_snap.parents[1]
    )  # (record.py resolves the symlink)
    assert (out / "tokenizer.json").read_bytes() == (ru / "tokenizer.json").read_bytes()


def test_train_config_model_repo_id(tiny, hub_cache, tmp_path, monkeypatch):
    from ruadapt.train.config import load_config

    snap = fill_hub_cache(hub_cache, "Org/Name", tiny, refs=("main", "v1"))
    text = tmp_path / "ru.txt"
    text.write_text("".join((SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:20]), encoding="utf-8")
    yaml_path = tmp_path / "cpt.yaml"
    yaml_path.write_text(
        f"task: cpt\nmodel: Org/Name\nrevision: v1\nout: {tmp_path / 'out'}\n"
        f"deepspeed: {ROOT / 'recipes/deepspeed/zero2.json'}\nblock_size: 64\ndata: {{train: [{text}]}}\n"
    )
    cfg = load_config(yaml_path)
    assert Path(cfg.model) == snap
    from ruadapt.commands.train import rank_env

    monkeypatch.delenv("RUADAPT_TRAIN_STARTED", raising=False)
    env = rank_env([cfg], 1234.5)
    assert env["HF_HUB_OFFLINE"] == "1" and env["RUADAPT_TRAIN_STARTED"] == "1234.5"  # the ranks read this snapshot
    yaml_path.with_name("local.yaml").write_text(yaml_path.read_text().replace("model: Org/Name", f"model: {tiny}"))
    local = rank_env([load_config(yaml_path.with_name("local.yaml"))], 1234.5)
    assert local.get("HF_HUB_OFFLINE") == os.environ.get("HF_HUB_OFFLINE")  # a local model: our setting, unchanged
    with pytest.raises(
        RuadaptError, match=r"cpt.yaml: model Org/Name: not a directory.*revision v9; the cache holds main, v1"
    ):
        load_config(yaml_path, ["revision=v9"])


class _Raises:
    def __init__(self, exc: Exception):
        self.exc = exc

    def __call__(self, *args, **kwargs):
        raise self.exc


def _http_error(cls, status: int):
    import httpx2

    return cls(
        "boom", response=httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    )


_HF_OFFLINE_MESSAGE = (
    "An error happened while trying to locate the files on the Hub and we cannot find the appropriate snapshot folder "
    "for the specified revision on the local disk. Please check your internet connection and try again."
)


@pytest.mark.parametrize(
    "make, expected",
    [
        (
            lambda: _http_error(__import__("huggingface_hub.errors").errors.RepositoryNotFoundError, 404),
            "the Hugging Face Hub has no repo Org/Name this machine may read",
        ),
        (
            lambda: _http_error(__import__("huggingface_hub.errors").errors.RevisionNotFoundError, 404),
            "the Hugging Face repo Org/Name has no revision 'main'",
        ),
        (
            lambda: __import__("huggingface_hub.errors").errors.LocalEntryNotFoundError("connection refused"),
            "the Hub could not be reached: connection refused); run with network access",
        ),
        # huggingface_hub's own message when the Hub is unreachable (211 characters) comes through whole
        (
            lambda: __import__("huggingface_hub.errors").errors.LocalEntryNotFoundError(_HF_OFFLINE_MESSAGE),
            f"the Hub could not be reached: {_HF_OFFLINE_MESSAGE}); run with network access",
        ),
    ],
)
def test_online_failures_are_named(monkeypatch, hub_cache, make, expected):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _Raises(make()))
    with pytest.raises(RuadaptError, match="^--model Org/Name: ") as e:
        hub.resolve("Org/Name", "--model")
    assert expected in str(e.value)


def test_a_long_library_message_is_cut_after_a_whole_word():
    long = " ".join([_HF_OFFLINE_MESSAGE] * 3)
    short = hub.clip(long)
    assert len(short) <= 240 and short.endswith("…")
    words = short[:-1].split()
    assert words == long.split()[: len(words)]  # every word whole, the last one included
