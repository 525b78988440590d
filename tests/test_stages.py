"""One shape for every stage (issue 24): ``--dry-run`` checks and plans without writing, and its figures are the
real run's; refactoring the stages left their outputs byte-identical (hashes recorded on the code before it)."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
from stage_outputs import OUTPUTS, hash_outputs, run_stages

from ruadapt.cli import main

GOLDEN = Path(__file__).with_name("stage_outputs.json")
# a few of the outputs tests/stage_outputs.py makes, enough to cover swap, lep and trim, small enough for the suite
RUN = ("swap_untied", "lep_conversion", "trim_llama_untied")
_LIBS = ("torch", "transformers", "tokenizers", "safetensors")


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("stages")
    return root, run_stages(root, RUN)


@pytest.mark.slow
def test_outputs_are_byte_identical_to_the_recorded_ones(staged):
    """Every file swap, lep and trim write (records without times, timings and versions) hashes as the code
    before the stages were reshaped wrote it: tests/stage_outputs.py ran on it to make tests/stage_outputs.json."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    here = {lib: importlib.metadata.version(lib) for lib in _LIBS}
    if golden["versions"] != here:
        pytest.skip(f"the hashes were recorded with {golden['versions']}, this is {here}: random weights differ")
    root, outs = staged
    got = hash_outputs(root, outs)
    assert set(golden["hashes"]) == set(OUTPUTS)
    for name in ("tokenizer", *RUN):
        assert got[name] == golden["hashes"][name], name


def _dry_run(capsys, argv: list[str], out: Path) -> tuple[int, dict[str, int]]:
    """Run ``argv --dry-run``; the output must not exist afterwards (nor a temporary folder beside it). Returns
    the printed rows and rows by kind."""
    assert main(["-q", *map(str, argv), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "nothing was written" in text
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    m = re.search(r"^rows +([\d,]+) \((.*)\)$", text, re.M)
    assert m, text
    kinds = {k: int(v.replace(",", "")) for k, v in (p.rsplit(" ", 1) for p in m.group(2).split(", "))}
    assert re.search(r"^tensor bytes +[\d,]+ to write", text, re.M) and re.search(r"^peak memory +about", text, re.M)
    return int(m.group(1).replace(",", "")), kinds


@pytest.mark.slow
def test_dry_run_writes_nothing_and_prints_the_real_runs_rows(staged, capsys):
    root, outs = staged
    untied = root / "qwen-untied"

    rows, kinds = _dry_run(capsys, ["swap", "--model", untied, "--tokenizer", outs["tokenizer"]], root / "dry-swap")
    rec = json.loads((outs["swap_untied"] / "ruadapt_swap.json").read_text())["result"]
    assert rows == rec["rows"] and kinds == rec["rows_by_kind"]

    rows, kinds = _dry_run(
        capsys,
        ["lep", "--base", untied, "--instruct", root / "qwen-instruct", "--adapted", outs["swap_untied"]],
        root / "dry-lep",
    )
    rec = json.loads((outs["lep_conversion"] / "ruadapt_lep.json").read_text())["result"]
    assert rows == rec["rows"] and kinds == {
        "projected": rec["rows"] - len(rec["instruct_rows_kept"]),
        "instruct": len(rec["instruct_rows_kept"]),
    }

    rows, kinds = _dry_run(
        capsys, ["trim", "--model", root / "llama-untied", "--corpus", root / "ru.txt"], root / "dry-trim"
    )
    rec = json.loads((outs["trim_llama_untied"] / "ruadapt_trim.json").read_text())["result"]
    assert rows == rec["model"]["rows_after"] and kinds["copy"] == rec["vocabulary"]["after"]
    assert kinds["copy"] + kinds.get("pad", 0) == rows
