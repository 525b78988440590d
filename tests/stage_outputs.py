"""sha256 of every file the vocabulary stages write, on fixed tiny inputs: the byte-identity check of issue 24.

Refactoring a stage (options dataclass, plan, writer) must not change one byte of what it writes. This runs
``tokenizer train`` (extend), ``swap`` (tied and untied), ``lep`` (all three methods) and ``trim`` (tied and untied)
through the real CLI on seeded tiny models with the real tokenizers, and hashes every output file. What a rerun
cannot reproduce is taken out first, only from the text files (records, lineage, model card): times of day (replaced
by ``<TIME>``), the work folder's path (``<ROOT>``), the test data folder's (``<SHARED>``: the tokenizer record
names its base), and the records' timings and library versions; the records' floats are compared to 8 significant
digits (float64 diagnostics such as LEP's residuals and condition numbers differ in their last digits from one CPU
to another: the BLAS sums in another order), the weights byte for byte.

    python tests/stage_outputs.py WORK_DIR HASHES.json     # run on the old code, then on the new: diff them
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Collection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import SHARED, SHARED_DATA, SHARED_TOKENIZERS, make_tiny_model  # noqa: E402

_VOLATILE = ("timings_s", "versions")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}")


def _rounded(value):
    """``value`` with every float in it rounded to 8 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.8g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _normalized(path: Path, root: Path) -> bytes:
    """The file's bytes, with the volatile parts of records and the work folder's path taken out."""
    data = path.read_bytes()
    if path.suffix not in (".json", ".md", ".txt", ".jinja"):
        return data
    text = data.decode("utf-8").replace(str(root), "<ROOT>").replace(str(SHARED), "<SHARED>")
    text = _TIME.sub("<TIME>", text)
    if path.name.startswith("ruadapt_") and path.suffix == ".json":
        record = json.loads(text)
        for key in _VOLATILE:
            record.pop(key, None)
        text = json.dumps(_rounded(record), sort_keys=True)
    return text.encode("utf-8")


def hash_outputs(root: Path, outs: dict[str, Path]) -> dict[str, dict[str, str]]:
    """``{output name: {relative file: sha256}}`` over every file of each output directory."""
    return {
        name: {
            str(f.relative_to(out)): hashlib.sha256(_normalized(f, root)).hexdigest()
            for f in sorted(out.rglob("*"))
            if f.is_file()
        }
        for name, out in outs.items()
    }


def run_stages(root: Path, only: Collection[str] | None = None) -> dict[str, Path]:
    """Build the inputs under ``root`` and run each stage once through the CLI; returns the output dirs.
    ``only``: the outputs of :data:`OUTPUTS` to make (the tokenizer is always trained; the test suite runs a few)."""
    from ruadapt.cli import main

    def cli(*argv: object) -> None:
        code = main(["-q", *map(str, argv)])
        if code != 0:
            raise SystemExit(f"ruadapt {' '.join(map(str, argv))} exited {code}")

    def wanted(name: str) -> bool:
        return only is None or name in only

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "ru.txt"
    with open(SHARED_DATA / "ru_train.txt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(400)), encoding="utf-8")
    outs = {"tokenizer": root / "tok"}
    cli(
        "tokenizer",
        "train",
        "--base",
        SHARED_TOKENIZERS / "qwen2.5",
        "--corpus",
        corpus,
        "--out",
        outs["tokenizer"],
        "--new-tokens",
        60,
    )
    untied = make_tiny_model(root / "qwen-untied", "qwen2", tied=False)
    tied = make_tiny_model(root / "qwen-tied", "qwen2", tied=True, seed=1)
    lep = [f"lep_{m}" for m in ("conversion", "overlap", "swap")]
    # --init mean: the rule the hashes were first recorded with (the untied default changed to last/mean-all since)
    for name, model, extra in (
        ("swap_untied", untied, ("--init", "mean")),
        ("swap_tied", tied, ("--init", "weighted")),
    ):
        if wanted(name) or (name == "swap_untied" and any(map(wanted, lep))):  # lep's --adapted
            outs[name] = root / name
            cli("swap", "--model", model, "--tokenizer", outs["tokenizer"], "--out", outs[name], *extra)
    if any(map(wanted, lep)):
        instruct = make_tiny_model(root / "qwen-instruct", "qwen2", tied=False, seed=2)
    for name in filter(wanted, lep):
        outs[name] = root / name
        cli(
            "lep",
            "--base",
            untied,
            "--instruct",
            instruct,
            "--adapted",
            outs["swap_untied"],
            "--out",
            outs[name],
            "--method",
            name.removeprefix("lep_"),
        )
    if wanted("trim_llama_untied"):
        make_tiny_model(root / "llama-untied", "llama", tied=False, seed=3)
    for name, model in (("trim_tied", tied), ("trim_llama_untied", root / "llama-untied")):
        if wanted(name):
            outs[name] = root / name
            cli("trim", "--model", model, "--corpus", corpus, "--out", outs[name])
    return outs


OUTPUTS = (
    "tokenizer",
    "swap_untied",
    "swap_tied",
    "lep_conversion",
    "lep_overlap",
    "lep_swap",
    "trim_tied",
    "trim_llama_untied",
)


def main(argv: list[str]) -> int:
    """Run the stages into a new WORK_DIR and write the hashes; a WORK_DIR that holds the outputs is hashed again."""
    root = Path(argv[0]).resolve()
    if root.exists() and any(root.iterdir()):
        outs = {name: root / ("tok" if name == "tokenizer" else name) for name in OUTPUTS}
    else:
        outs = run_stages(root)
    hashes = hash_outputs(root, outs)
    Path(argv[1]).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
