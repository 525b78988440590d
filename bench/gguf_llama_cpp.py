"""Bench: adapted vocabularies in llama.cpp — `ruadapt gguf`, then ids on every line of ru_eval + en_eval and logits
against transformers, run by llama.cpp itself (llama-cpp-python); and what llama.cpp's stock converter says.

    .venv/bin/python bench/gguf_llama_cpp.py                               # every case, writes bench/results/gguf_llama_cpp.{json,md}
    .venv/bin/python bench/gguf_llama_cpp.py --cases qwen-ext8k qwen-trim  # a subset

Needs ``llama_cpp`` importable (a C++ build, ~25 min on 2 cores), from the sdist ``make llama-cpp`` fetched::

    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \\
      -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" .venv/bin/pip install \\
      .cache/llama-cpp-python-0.3.36/llama_cpp_python-0.3.36.tar.gz

Each case: a tokenizer (trained on ru_train / en_train, never on the eval files), a tiny random model of the
base's architecture (tests/tiny.py) given that vocabulary by ``ruadapt swap`` (or ``ruadapt trim``), converted
with ``--outtype f32`` by :func:`ruadapt.llamacpp.export.export_gguf` (structural read-back included); then
:mod:`ruadapt.llamacpp.verify` on the file: ids of every eval line (llama.cpp vs transformers), logits on 3 lines.
Also: the stock converter (no name given) on the same directory, chars/token on ru_eval (the guard's cost), and
the tokens longer than 32 bytes (llama-cpp-python's ``detokenize`` drops them).
"""  # noqa: E501 (the usage lines are printed verbatim by --help)

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common import SHARED  # noqa: E402  (RUADAPT_TEST_DATA, else ../shared: the tests' data)

sys.path.insert(0, str(ROOT / "tests"))

RU_TRAIN, EN_TRAIN = SHARED / "data" / "ru_train.txt", SHARED / "data" / "en_train.txt"
RU_EVAL, EN_EVAL = SHARED / "data" / "ru_eval.txt", SHARED / "data" / "en_eval.txt"
# name -> (base tokenizer folder, tiny model type, how the vocabulary is made)
CASES: dict[str, tuple[str, str, dict]] = {
    "qwen-base": ("qwen2.5", "qwen2", {}),
    "qwen-ext8k": ("qwen2.5", "qwen2", {"mode": "extend", "new_tokens": 8000}),
    "qwen-ext48k": ("qwen2.5", "qwen2", {"mode": "extend", "new_tokens": 48000}),
    "qwen-ext64k": ("qwen2.5", "qwen2", {"mode": "extend", "new_tokens": 64000}),
    "qwen-ext64k-noguard": ("qwen2.5", "qwen2", {"mode": "extend", "new_tokens": 64000, "keep_check_text": False}),
    "qwen-replace64k": ("qwen2.5", "qwen2", {"mode": "replace", "vocab_size": 64000}),
    "qwen-trim": ("qwen2.5", "qwen2", {"trim": True}),
    "llama-ext32k": ("llama-3", "llama", {"mode": "extend", "new_tokens": 32000}),
    "llama-replace64k": ("llama-3", "llama", {"mode": "replace", "vocab_size": 64000}),
    "nemo-ext32k": ("mistral-nemo", "mistral", {"mode": "extend", "new_tokens": 32000}),
    "gemma-base": ("gemma-3", "gemma3_text", {}),
    "gemma-ext32k": ("gemma-3", "gemma3_text", {"mode": "extend", "new_tokens": 32000}),
}


def long_tokens(model_dir: Path) -> int:
    """Tokens whose bytes are longer than 32 (llama-cpp-python's detokenize buffer drops them)."""
    from ruadapt.vocab.pieces import detect_family, piece_to_bytes
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    family = detect_family(tok)
    return sum(len(piece_to_bytes(p, family)) > 32 for p in tok.get_vocab(with_added_tokens=False))


def stock(converter, model_dir: Path, work: Path) -> str:
    """What llama.cpp's converter does alone: the name it finds, or its error."""
    from gguf import GGUFReader

    out = work / "stock.gguf"
    p = subprocess.run(
        [sys.executable, str(converter.script), str(model_dir), "--vocab-only", "--outfile", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    if p.returncode != 0:
        return "fails: " + p.stdout.strip().splitlines()[-1][:80]
    name = GGUFReader(str(out)).fields["tokenizer.ggml.pre"].contents()
    out.unlink()
    return f"ok ({name})"


def run_case(name: str, converter, work: Path, lines: dict[str, list[str]]) -> dict:
    from tiny import make_tiny_model

    from ruadapt.llamacpp.export import export_gguf
    from ruadapt.llamacpp.verify import compare_ids, compare_logits
    from ruadapt.swap import swap_model
    from ruadapt.tokenizer.train import train_tokenizer
    from ruadapt.trim import trim_model
    from ruadapt.vocab.measure import chars_per_token

    family, model_type, how = CASES[name]
    base_tok = SHARED / "tokenizers" / family
    row: dict = {"case": name}
    t0 = time.perf_counter()
    tiny = (
        make_tiny_model(work / f"tiny-{model_type}", model_type)
        if not (work / f"tiny-{model_type}").exists()
        else work / f"tiny-{model_type}"
    )
    model = work / name
    if how.get("trim"):
        trim_model(tiny, [RU_TRAIN, EN_TRAIN], model, progress=False)
    elif how:
        tok = work / f"tok-{name}"
        opts = {k: v for k, v in how.items() if k != "mode"}
        corpora = [RU_TRAIN] if how["mode"] == "extend" else [RU_TRAIN, EN_TRAIN]
        rec = train_tokenizer(base_tok, corpora, tok, mode=how["mode"], progress=False, **opts)
        row["check_text"] = rec["result"].get("llama_cpp_check_text")
        swap_model(tiny, tok, model, progress=False)
        shutil.rmtree(tok)
    else:
        model = tiny
    row["build_s"] = round(time.perf_counter() - t0, 1)
    row["ru_eval_chars_per_token"] = round(chars_per_token(model, RU_EVAL)["chars_per_token"], 4)
    row["stock_converter"] = stock(converter, model, work)
    row["tokens_over_32_bytes"] = long_tokens(model)
    out = work / f"{name}.gguf"
    t = time.perf_counter()
    try:
        rec = export_gguf(model, converter.root, out, outtype="f32")
    except Exception as e:  # a refusal is a result too
        row["ruadapt_gguf"] = f"refused: {e}"
        return row
    row["convert_s"] = round(time.perf_counter() - t, 1)
    row["ruadapt_gguf"] = f"ok ({rec['result']['pre']['name']})"
    row["tokens"], row["rows"] = rec["result"]["gguf"]["tokens"], rec["result"]["gguf"]["rows"]
    for lang, ls in lines.items():
        ids = compare_ids(out, model, ls)
        row[f"{lang}_lines"], row[f"{lang}_lines_differing"] = ids["lines"], ids["lines_differing"]
        if ids["first_difference"]:
            row[f"{lang}_first_difference"] = ids["first_difference"]
    lg = compare_logits(out, model, lines["ru"][:2] + lines["en"][:1])
    row["logits_max_abs_diff"], row["argmax_agreement"] = lg["max_abs_diff"], lg["argmax_agreement"]
    out.unlink()
    if model != tiny:
        shutil.rmtree(model)
    return row


def render(rows: list[dict], version: str) -> str:
    """The Markdown table of the results."""
    r0 = next((r for r in rows if "ru_lines" in r), {})
    head = (
        f"`ruadapt gguf --outtype f32` of tiny random models with adapted vocabularies; ids on every non-empty line "
        f"of ru_eval ({r0.get('ru_lines')}) and en_eval ({r0.get('en_lines')}) by llama.cpp (llama-cpp-python "
        f'{version}) vs transformers, logits on 3 lines (float32 KV cache). "stock": llama.cpp\'s converter alone. '
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs."
    )
    cols = [
        "case",
        "tokens",
        "rows",
        "stock_converter",
        "ruadapt_gguf",
        "ru_lines_differing",
        "en_lines_differing",
        "logits_max_abs_diff",
        "ru_eval_chars_per_token",
        "tokens_over_32_bytes",
        "check_text",
    ]
    table = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, float) and c.startswith("logits"):
                v = f"{v:.2e}"
            elif c == "stock_converter" and "not recognized" in str(v):
                v = "fails: pre-tokenizer not recognized"
            elif isinstance(v, dict):
                v = ", ".join(f"{k} {x}" for k, x in v.items())
            cells.append(str(v))
        table.append("| " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(table) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--llama-cpp", type=Path, default=ROOT / ".cache" / "llama-cpp-python-0.3.36")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()

    from ruadapt.llamacpp.source import find_converter
    from ruadapt.llamacpp.verify import have_llama_cpp

    if not have_llama_cpp():
        sys.exit("bench/gguf_llama_cpp.py needs llama_cpp (llama-cpp-python); see the top of this file for the build")
    import llama_cpp

    converter = find_converter(args.llama_cpp)
    lines = {
        lang: [x for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        for lang, f in (("ru", RU_EVAL), ("en", EN_EVAL))
    }
    work = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    rows = []
    try:
        for name in args.cases:
            rows.append(run_case(name, converter, work, lines))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    text = render(rows, llama_cpp.__version__)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gguf_llama_cpp.md").write_text(text, encoding="utf-8")
    (args.out / "gguf_llama_cpp.json").write_text(
        json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
