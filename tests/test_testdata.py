"""The test data comes through one variable, RUADAPT_TEST_DATA (default ../shared beside the repository): without
the files the suite still collects, the tests that read them are skipped with a reason that names the folder and
where each file comes from publicly, and the tests that do not read them still run and pass."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

import pytest
from tiny import DATA_VAR, FIXTURES, ROOT

# a few tests of both kinds, picked by name; the whole tests/ folder is collected all the same
PICK = (
    "test_block_and_command_extraction or test_every_readme_command_parses or test_segment_matches_naive_bpe"
    " or test_every_format_gives_the_same_documents"
)


@pytest.mark.slow  # ≈ 40 s: a second pytest collects the whole suite
def test_without_the_data_collection_works_and_the_data_tests_skip_saying_where_it_comes_from(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's xdist worker
    env[DATA_VAR] = str(empty)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-m",
            "not slow",
            "-k",
            PICK,
            "tests",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|skipped|failed|errors?)\b", out.splitlines()[-1]))
    assert counts.get("passed", 0) >= 2 and counts.get("skipped", 0) >= 5 and not counts.get("failed"), out[-2000:]
    reasons = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all(f"{DATA_VAR}={empty}" in r for r in reasons), out[-4000:]
    for source in set(FIXTURES.values()):  # each tokenizer's hub repo id (and revision), each text's sources
        assert source in reasons[0], source


def _fresh_tiny(monkeypatch, value: str | None) -> ModuleType:
    """tiny.py executed again as a new module under ``RUADAPT_TEST_DATA=value`` (unset for None)."""
    if value is None:
        monkeypatch.delenv(DATA_VAR, raising=False)
    else:
        monkeypatch.setenv(DATA_VAR, value)
    spec = importlib.util.spec_from_file_location("tiny_again", ROOT / "tests" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_is_shared_beside_the_repository_and_the_variable_wins(tmp_path, monkeypatch):
    assert _fresh_tiny(monkeypatch, None).SHARED == (ROOT.parent / "shared").resolve()
    assert _fresh_tiny(monkeypatch, "").SHARED == (ROOT.parent / "shared").resolve()  # set but empty: the default
    again = _fresh_tiny(monkeypatch, str(tmp_path))
    assert again.SHARED == tmp_path.resolve() and again.SHARED_DATA == tmp_path.resolve() / "data"
    assert len(again.missing_fixtures()) == len(FIXTURES)  # an empty folder lacks every file


def test_docs_testing_names_every_source():
    """docs/testing.md, where a reader without the team's folder looks, names every source the skip reason names."""
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    for rel, source in FIXTURES.items():
        for repo in re.findall(r"[\w.-]+/[\w.-]+-[\w.-]+", source):  # hub repo ids such as Qwen/Qwen2.5-1.5B-Instruct
            assert repo in text, (rel, repo)
        for revision in re.findall(r"\b[0-9a-f]{40}\b", source):
            assert revision in text, (rel, revision)
        assert rel.split("/")[1] in text, rel
