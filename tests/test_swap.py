"""`ruadapt swap` on tiny models of every supported architecture with the real tokenizers (issue 7)."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import piece_bytes, reference_pieces
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import ARCHS, ROOT, SHARED_DATA, SHARED_TOKENIZERS, dir_hash, make_tiny_model, tensor_hashes

from ruadapt.cli import main
from ruadapt.io.record import check_record

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@functools.cache
def tokenizer_spec(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def load_tensor(model_dir: Path, name: str) -> torch.Tensor:
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            if name in h.keys():
                return h.get_tensor(name)
    raise KeyError(name)


@pytest.fixture(scope="session")
def extensions(tmp_path_factory):
    """Each base tokenizer extended by a few hundred merges learned on a slice of ru_train (cached per family)."""
    from ruadapt.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("ext")
    corpus = root / "ru.txt"
    with open(SHARED_DATA / "ru_train.txt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(3000)), encoding="utf-8")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = root / name
            train_tokenizer(SHARED_TOKENIZERS / name, [corpus], out, mode="extend", new_tokens=300, progress=False)
            cache[name] = out
        return cache[name]

    return get


# every architecture, tied and untied; `make test` runs one model per base tokenizer family that no other case of
# the family covers (Llama-3's and Mistral's tokenizers, and Gemma 2 beside Gemma 3, run in `make test-all`)
SLOW = pytest.mark.slow
CASES = [
    ("qwen2", False),
    ("qwen2", True),
    ("qwen3", False),
    pytest.param("llama", False, marks=SLOW),
    pytest.param("mistral", True, marks=SLOW),
    pytest.param("gemma2", True, marks=SLOW),
    ("gemma3_text", False),
]


@pytest.mark.parametrize("model_type,tied", CASES)
def test_swap_extension(tmp_path, extensions, model_type, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_name, rows = ARCHS[model_type]
    base = make_tiny_model(tmp_path / "base", model_type, tied=tied)
    ext = extensions(tok_name)
    before = dir_hash(base)
    out = tmp_path / "out"
    assert main(["-q", "swap", "--model", str(base), "--tokenizer", str(ext), "--out", str(out), "--init", "mean"]) == 0
    assert dir_hash(base) == before

    spec = tokenizer_spec(SHARED_TOKENIZERS / tok_name / "tokenizer.json")
    new_spec = tokenizer_spec(ext / "tokenizer.json")
    n_base = len(spec["model"]["vocab"]) + sum(a["content"] not in spec["model"]["vocab"] for a in spec["added_tokens"])
    n_new = n_base + 300
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["vocab_size"] >= n_new and cfg["vocab_size"] % (128 if rows == 151936 else 64 if rows == 262208 else 1) == 0
    )
    assert cfg.get("tie_word_embeddings", tied) == tied

    # every tensor outside the vocabulary matrices is bit-identical
    h0, h1 = tensor_hashes(base), tensor_hashes(out)
    vocab_names = {EMBED, HEAD}
    assert {k: v for k, v in h0.items() if k not in vocab_names} == {
        k: v for k, v in h1.items() if k not in vocab_names
    }
    assert (HEAD in h1) == (not tied)

    pairs = [(EMBED, EMBED)] + ([] if tied else [(HEAD, HEAD)])
    inv_vocab = {i: p for p, i in new_spec["model"]["vocab"].items()}
    for old_name, new_name in pairs:
        old, new = load_tensor(base, old_name), load_tensor(out, new_name)
        assert new.shape == (cfg["vocab_size"], old.shape[1])
        assert torch.equal(new[:n_base], old[:n_base])  # old ids keep their rows, bit for bit
        for i in range(n_base, n_new):  # new rows = mean of the base rows of the pieces (independent BPE)
            piece = inv_vocab[i]
            src = reference_pieces(spec, piece_bytes(spec, piece))
            expect = old[src].double().mean(0).float()
            assert torch.allclose(new[i], expect, atol=1e-6, rtol=1e-5), (i, piece)
        pad = new[n_new:]
        assert torch.isfinite(pad).all()
        assert torch.allclose(pad, old[:n_base].double().mean(0).float().expand_as(pad), atol=1e-6)

    # loads, generates, and on old tokens gives the base logits over the old vocabulary
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == n_new
    m0 = AutoModelForCausalLM.from_pretrained(base).eval()
    m1 = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = AutoTokenizer.from_pretrained(base)(
        "Съешь же ещё этих мягких французских булок", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        l0, l1 = m0(ids).logits, m1(ids).logits
    assert torch.allclose(l1[..., :n_base], l0[..., :n_base], atol=1e-5, rtol=0)
    gen = m1.generate(tok("Привет", return_tensors="pt").input_ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > 1

    rec = check_record(json.loads((out / "ruadapt_swap.json").read_text()))
    assert rec["result"]["rows_by_kind"]["mean"] == 300
    assert rec["inputs"]["model"]["fingerprint"]


def rule_reference(rule: str, old: torch.Tensor, src: list[int], n_base: int) -> torch.Tensor:
    """A new row by ``rule`` from its definition (docs/init.md), float64, on the whole old matrix."""
    x = old.double()
    o_bar = x[:n_base].mean(0)
    w = {
        "mean": [1.0] * len(src),
        "weighted": [2.0**-k for k in range(len(src))],
        "first": [1.0] + [0.0] * (len(src) - 1),
        "last": [0.0] * (len(src) - 1) + [1.0],
    }
    base = rule[: -len("-all")] if rule.endswith("-all") else "mean" if rule in ("all", "mean-norm") else rule
    ww = torch.tensor(w[base], dtype=torch.float64) / sum(w[base])
    row = (x[src] * ww[:, None]).sum(0)
    if rule == "mean-norm":
        row = row * (x[src].norm(dim=1) * ww).sum() / row.norm()
    if rule == "all":
        return o_bar
    return 0.5 * row + 0.5 * o_bar if rule.endswith("-all") else row


@pytest.mark.parametrize(
    "tied,flags",
    [
        (False, ["--init-input", "last", "--init-output", "mean-all"]),
        (False, ["--init-input", "mean-norm", "--init-output", "first-all"]),
        (True, ["--init", "mean-all"]),
    ],
)
def test_swap_init_rules_stream_the_reference_rows(tmp_path, extensions, tied, flags):
    """Each matrix's new rows follow its own rule (streamed from the checkpoint), equal to the rule computed from
    its definition with an independent BPE for the pieces; the record says which rule built which matrix."""
    from ruadapt.vocab.init_rules import DEFAULT_INPUT, DEFAULT_OUTPUT

    base = make_tiny_model(tmp_path / "base", "qwen2", tied=tied)
    ext = extensions("qwen2.5")
    out = tmp_path / "out"
    assert main(["-q", "swap", "--model", str(base), "--tokenizer", str(ext), "--out", str(out), *flags]) == 0
    opt = dict(zip(flags[::2], flags[1::2]))
    rules = (
        {"tied": opt["--init"]}
        if tied
        else {
            "input": opt.get("--init-input", opt.get("--init", DEFAULT_INPUT)),
            "output": opt.get("--init-output", opt.get("--init", DEFAULT_OUTPUT)),
        }
    )
    rec = json.loads((out / "ruadapt_swap.json").read_text())
    assert rec["result"]["init"] == rules
    spec = tokenizer_spec(SHARED_TOKENIZERS / "qwen2.5" / "tokenizer.json")
    inv_vocab = {i: p for p, i in tokenizer_spec(ext / "tokenizer.json")["model"]["vocab"].items()}
    n_base, n_new = rec["result"]["new_token_ids"]
    for name, rule in [(EMBED, rules["tied"])] if tied else [(EMBED, rules["input"]), (HEAD, rules["output"])]:
        old, new = load_tensor(base, name), load_tensor(out, name)
        assert torch.equal(new[:n_base], old[:n_base])
        for i in range(n_base, n_new):
            src = reference_pieces(spec, piece_bytes(spec, inv_vocab[i]))
            expect = rule_reference(rule, old, src, n_base).float()
            assert torch.allclose(new[i], expect, atol=1e-5, rtol=1e-5), (name, rule, i)


def test_swap_init_output_refused_for_a_tied_model(tmp_path):
    base = make_tiny_model(tmp_path / "base", "llama", tied=True, max_shard_size="200KB")
    r = _run_cli(
        [
            "swap",
            "--model",
            str(base),
            "--tokenizer",
            str(base),
            "--out",
            str(tmp_path / "o"),
            "--allow",
            "same-tokenizer",
            "--init-output",
            "all",
        ]
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "ties its input embedding and lm_head" in r.stderr and not (tmp_path / "o").exists()


def test_swap_replace_tokenizer_remaps_special_ids(tmp_path):
    """A full replacement moves bos/eos/pad/chat tokens: configs and template must follow."""
    from transformers import AutoTokenizer

    from ruadapt.tokenizer.train import train_tokenizer

    corpus = tmp_path / "ru.txt"
    with open(SHARED_DATA / "ru_train.txt", encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(2000)), encoding="utf-8")
    rep = tmp_path / "rep"
    train_tokenizer(SHARED_TOKENIZERS / "qwen2.5", [corpus], rep, mode="replace", vocab_size=3000, progress=False)
    base = make_tiny_model(tmp_path / "base", "qwen2")
    out = tmp_path / "out"
    assert main(["-q", "swap", "--model", str(base), "--tokenizer", str(rep), "--out", str(out)]) == 0
    old_tok, new_tok = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(out)
    for fname in ("config.json", "generation_config.json"):
        c0 = json.loads((base / fname).read_text())
        c1 = json.loads((out / fname).read_text())
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v0, v1 = c0.get(key), c1.get(key)
            if v0 is None:
                continue
            v0, v1 = (v0, v1) if isinstance(v0, list) else ([v0], [v1])
            assert [old_tok.convert_ids_to_tokens(i) for i in v0] == [new_tok.convert_ids_to_tokens(i) for i in v1]
            assert v0 != v1  # the replacement moved them
    chat = [{"role": "user", "content": "Привет"}]
    s0 = old_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    s1 = new_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert s0 == s1
    ids1 = new_tok.apply_chat_template(chat, add_generation_prompt=True)
    ids1 = ids1["input_ids"] if isinstance(ids1, dict) or hasattr(ids1, "keys") else ids1
    assert new_tok.convert_tokens_to_ids("<|im_start|>") in ids1
    old_row = load_tensor(base, EMBED)[old_tok.convert_tokens_to_ids("<|im_end|>")]
    new_row = load_tensor(out, EMBED)[new_tok.convert_tokens_to_ids("<|im_end|>")]
    assert torch.equal(old_row, new_row)
    # sized to the new vocabulary (3,000 tokens, padded by the base's multiple 128), not to the base's 151,936 rows
    rec = json.loads((out / "ruadapt_swap.json").read_text())["result"]
    assert rec["vocabulary"] == "replacement" and rec["padding_multiple"] == 128
    assert (
        load_tensor(out, EMBED).shape[0]
        == rec["rows"]
        == 3072
        == json.loads((out / "config.json").read_text())["vocab_size"]
    )


# ------------------------------------------------------------------------------------------- bad input
def _run_cli(args):
    return subprocess.run([sys.executable, "-m", "ruadapt", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture()
def tiny(tmp_path):
    return make_tiny_model(tmp_path / "m", "llama", max_shard_size="200KB")


def _expect_error(tmp_path, model, tokenizer, out, needle, allow=("same-tokenizer",)):
    """The bad-input cases reuse the model's own tokenizer, so they allow that likely mistake unless told not to."""
    inputs = [p for p in (model, tokenizer) if Path(p).exists()]
    hashes = [dir_hash(p) for p in inputs]
    flags = [x for name in allow for x in ("--allow", name)]
    r = _run_cli(["swap", "--model", str(model), "--tokenizer", str(tokenizer), "--out", str(out), *flags])
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if " INFO " not in ln and "going on: --allow" not in ln]
    assert len(lines) == 1 and lines[0].startswith("ruadapt swap: error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert needle in lines[0], lines[0]
    assert [dir_hash(p) for p in inputs] == hashes
    assert not any(".ruadapt-tmp-" in p.name for p in Path(out).parent.iterdir())
    return lines[0]


def test_likely_mistakes(tmp_path, tiny):
    """The model's own tokenizer, or one of another family (Qwen2.5's on a Llama-3 model: 100k+ byte strings
    coincide), is refused before any work with the flag that overrides it; with the flag it runs and warns."""
    msg = _expect_error(tmp_path, tiny, tiny, tmp_path / "o_same", "--allow same-tokenizer", allow=())
    assert "exactly the vocabulary" in msg
    msg = _expect_error(
        tmp_path, tiny, SHARED_TOKENIZERS / "qwen2.5", tmp_path / "o_foreign", "--allow foreign-tokenizer", allow=()
    )
    assert "normalizer" in msg and "pre_tokenizer" in msg and "ruadapt tokenizer train --base" in msg
    r = _run_cli(
        [
            "swap",
            "--model",
            str(tiny),
            "--tokenizer",
            str(tiny),
            "--out",
            str(tmp_path / "o_ok"),
            "--allow",
            "same-tokenizer",
        ]
    )
    assert r.returncode == 0 and "going on: --allow same-tokenizer" in r.stderr, r.stderr
    n = json.loads((tmp_path / "o_ok" / "ruadapt_swap.json").read_text())["result"]["tokens"]
    assert torch.equal(load_tensor(tmp_path / "o_ok", EMBED)[:n], load_tensor(tiny, EMBED)[:n])  # every row copied


def test_bad_inputs(tmp_path, tiny):
    out = tmp_path / "out"
    # pickle-only checkpoint
    pk = tmp_path / "pk"
    pk.mkdir()
    (pk / "config.json").write_text((tiny / "config.json").read_text())
    (pk / "pytorch_model.bin").write_bytes(b"\x80\x02")
    _expect_error(tmp_path, pk, tiny, out, "pickle")
    # unsupported model_type
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in tiny.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (odd / "config.json").write_text(json.dumps(cfg))
    msg = _expect_error(tmp_path, odd, tiny, out, "'gpt2' is not supported")
    assert "qwen2" in msg and "gemma3_text" in msg
    # tokenizer dir without tokenizer.json
    empty_tok = tmp_path / "tok"
    empty_tok.mkdir()
    _expect_error(tmp_path, tiny, empty_tok, out, "no tokenizer.json")
    # output dir not empty; output = input
    out.mkdir()
    (out / "keep.txt").write_text("x")
    _expect_error(tmp_path, tiny, tiny, out, "not empty")
    assert (out / "keep.txt").read_text() == "x"
    _expect_error(tmp_path, tiny, tiny, tiny, "must not be an input")
    # NaN in a token row of the input embedding
    nan = tmp_path / "nan"
    nan.mkdir()
    for f in tiny.iterdir():
        (nan / f.name).write_bytes(f.read_bytes())
    shard = next(f for f in sorted(nan.glob("model-*.safetensors")) if EMBED in safe_open(f, "pt").keys())
    with safe_open(shard, "pt") as h:
        tensors = {k: h.get_tensor(k) for k in h.keys()}
    tensors[EMBED][5, 3] = float("nan")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    _expect_error(tmp_path, nan, tiny, tmp_path / "o_nan", "NaN")
    # truncated shard, then an index naming a missing shard
    shard = sorted(tiny.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    _expect_error(tmp_path, tiny, tiny, tmp_path / "o2", shard.name)
    shard.unlink()
    _expect_error(tmp_path, tiny, tiny, tmp_path / "o3", "missing")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_sigkill_while_writing_leaves_nothing_and_rerun_succeeds(tmp_path, tiny):
    out = tmp_path / "out"
    killer = (
        "import os, signal, sys\n"
        "import ruadapt.io.checkpoint as c\n"
        "orig = c.CheckpointWriter.add_shard_file\n"
        "def add_and_die(self, *a, **k):\n"
        "    orig(self, *a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.CheckpointWriter.add_shard_file = add_and_die\n"
        "from ruadapt.cli import main\n"
        f"main(['-q', 'swap', '--model', {str(tiny)!r}, '--tokenizer', {str(tiny)!r}, '--out', {str(out)!r}, "
        "'--allow', 'same-tokenizer'])\n"
    )
    r = subprocess.run([sys.executable, "-c", killer], cwd=ROOT)
    assert r.returncode == -9
    assert not out.exists()
    assert any(".ruadapt-tmp-" in p.name for p in tmp_path.iterdir())  # the killed run's partial output
    assert (
        main(
            [
                "-q",
                "swap",
                "--model",
                str(tiny),
                "--tokenizer",
                str(tiny),
                "--out",
                str(out),
                "--allow",
                "same-tokenizer",
            ]
        )
        == 0
    )
    assert not any(".ruadapt-tmp-" in p.name for p in tmp_path.iterdir())
    assert tensor_hashes(out) == tensor_hashes(tiny)  # identity swap: same tokenizer, same rows
