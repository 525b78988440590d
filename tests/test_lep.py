"""``ruadapt lep`` (issue 4): LEP fits recover a known map, streaming never holds V×d float64, the output is
the instruct body with propagated rows, bad inputs fail in one line with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import SHARED_DATA, SHARED_TOKENIZERS, dir_hash, make_tiny_model, tensor_hashes
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ruadapt.cli import main
from ruadapt.io.record import check_record
from ruadapt.io.tokdir import set_chat_template
from ruadapt.lep import accumulate, fit_rows, lep_model, open_model, piece_chunks
from ruadapt.swap import swap_model
from ruadapt.vocab.arch import model_fingerprint
from ruadapt.vocab.lstsq import NormalEquations
from ruadapt.vocab.pieces import ROW_COPY, ROW_MEAN, VocabMap, averaged_rows, build_vocab_map

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
D = 16
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}{# instruct template #}"
)


# ------------------------------------------------------------------------------------------------ helpers
def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def rewrite(model_dir: Path, fn) -> None:
    """Apply ``fn(name, tensor) -> tensor | None`` to every tensor of a model dir in place (None drops it)."""
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        sd = load_file(f)
        new = {}
        for k, v in sd.items():
            t = fn(k, v)
            if t is not None:
                new[k] = t.contiguous()
        save_file(new, f, metadata={"format": "pt"})
    index = Path(model_dir) / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        names = set()
        for f in Path(model_dir).glob("*.safetensors"):
            with safe_open(f, "pt") as h:
                names.update(h.keys())
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k in names}
        index.write_text(json.dumps(data))


def random_map(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(D) + torch.randn(D, D, generator=g) / 4


def make_instruct(base: Path, out: Path, w_in: torch.Tensor, w_out: torch.Tensor, seed: int = 7) -> Path:
    """instruct = base rows @ W (+ 1e-4 noise), another W for lm_head, every body tensor perturbed."""
    shutil.copytree(base, out)
    g = torch.Generator().manual_seed(seed)

    def fn(name, t):
        if name == EMBED:
            return t @ w_in + 1e-4 * torch.randn(t.shape, generator=g)
        if name == HEAD:
            return t @ w_out + 1e-4 * torch.randn(t.shape, generator=g)
        return t + 0.05 * torch.randn(t.shape, generator=g)

    rewrite(out, fn)
    set_chat_template(out, TEMPLATE)
    return out


def perturb_rows(model_dir: Path, seed: int = 3) -> None:
    """Stand-in for CPT: move every vocabulary row (so 'output = A·W' is not trivially I's rows)."""
    g = torch.Generator().manual_seed(seed)
    rewrite(model_dir, lambda n, t: t + 0.3 * torch.randn(t.shape, generator=g) if n in (EMBED, HEAD) else t)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def added_pairs(a_dir: Path, i_dir: Path) -> list[tuple[int, int]]:
    from tokenizers import Tokenizer

    a_tok = Tokenizer.from_file(str(a_dir / "tokenizer.json"))
    same = (a_dir / "tokenizer.json").read_bytes() == (i_dir / "tokenizer.json").read_bytes()
    i_tok = a_tok if same else Tokenizer.from_file(str(i_dir / "tokenizer.json"))
    return [(a_tok.token_to_id(t.content), i) for i, t in i_tok.get_added_tokens_decoder().items()]


def check_output(
    out: Path, a_dir: Path, i_dir: Path, w: dict[str, torch.Tensor | None], tied: bool, tol: float = 1e-3
) -> dict:
    """Vocabulary rows = A·W (specials: I's rows), body bit-identical to I, chat template and tokenizer as promised."""
    o, a, i = tensors(out), tensors(a_dir), tensors(i_dir)
    pairs = added_pairs(a_dir, i_dir)
    special_a = {p[0] for p in pairs}
    for name in [EMBED] if tied else [EMBED, HEAD]:
        keep = torch.tensor([r for r in range(a[name].shape[0]) if r not in special_a])
        want = a[name] if w[name] is None else a[name].double() @ w[name].double()
        if w[name] is None:
            assert torch.equal(o[name][keep], a[name][keep]), f"{name}: swap must keep A's rows"
        else:
            assert rel_err(o[name][keep], want[keep]) < tol, name
        for a_id, i_id in pairs:
            assert torch.equal(o[name][a_id], i[name][i_id]), f"{name} row {a_id} is not I's row {i_id}"
    assert (HEAD in o) == (not tied)
    body = {k for k in i if k not in (EMBED, HEAD)}
    oh, ih = tensor_hashes(out), tensor_hashes(i_dir)
    assert body and all(oh[k] == ih[k] for k in body), "body must be I's, bit-identical"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == a[EMBED].shape[0]
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == TEMPLATE
    assert (out / "tokenizer.json").read_bytes() == (a_dir / "tokenizer.json").read_bytes()
    return check_record(json.loads((out / "ruadapt_lep.json").read_text()))


def loads_and_generates(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Привет, как дела?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("assistant:")
    ids = tok(text, return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ext_tokenizer(tmp_path_factory) -> Path:
    """Qwen2.5 extended with 120 Russian merges by the project's own trainer."""
    from ruadapt.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = root / "ru.txt"
    corpus.write_text((SHARED_DATA / "ru_train.txt").read_text(encoding="utf-8")[:30000], encoding="utf-8")
    train_tokenizer(SHARED_TOKENIZERS / "qwen2.5", [corpus], root / "ext", new_tokens=120, progress=False)
    return root / "ext"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, ext_tokenizer) -> dict:
    """Untied sharded qwen2: B, I = B·W (+noise), A = swap(B, extended tokenizer) moved by 'CPT'."""
    root = tmp_path_factory.mktemp("qwen")
    b = make_tiny_model(root / "b", "qwen2", tied=False, hidden=D)
    w_in, w_out = random_map(1), random_map(2)
    i = make_instruct(b, root / "i", w_in, w_out)
    gen = json.loads((i / "generation_config.json").read_text())
    gen["eos_token_id"] = [151645, 151643]  # the instruct model stops on <|im_end|> too
    (i / "generation_config.json").write_text(json.dumps(gen))
    swap_model(b, ext_tokenizer, root / "a", progress=False)
    perturb_rows(root / "a")
    return {"root": root, "b": b, "i": i, "a": root / "a", "w": {EMBED: w_in, HEAD: w_out}}


# ------------------------------------------------------------------------------------------------ the math
def test_normal_equations_match_lstsq_chunked():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 24, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 24, dtype=torch.float64)
    w_true = torch.randn(24, 24, generator=g, dtype=torch.float64)
    y = x @ w_true + 0.01 * torch.randn(5000, 24, generator=g, dtype=torch.float64)
    eq = NormalEquations(24)
    for k in range(0, 5000, 333):  # uneven chunks
        eq.add(x[k : k + 333].float() if k == 0 else x[k : k + 333], y[k : k + 333])
    eq2 = NormalEquations(24)
    eq2.add(x[:333], y[:333])
    for k in range(333, 5000, 333):
        eq2.add(x[k : k + 333], y[k : k + 333])
    fit = eq2.solve()
    ref = torch.linalg.lstsq(x, y, driver="gelsd").solution
    assert fit.solver == "cholesky" and fit.rows == 5000 and fit.rank == 24
    assert float((fit.w - ref).abs().max()) < 1e-8
    direct = float((x @ ref - y).norm() / y.norm())
    assert abs(fit.relative_residual - direct) < 1e-8
    sv = torch.linalg.svdvals(x)
    assert fit.condition_number == pytest.approx(float(sv[0] / sv[-1]) ** 2, rel=1e-6)
    assert torch.allclose(eq2.xtx, x.T @ x, rtol=1e-12, atol=1e-9)


def test_rank_deficient_fit_is_the_minimum_norm_lstsq():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64)
    x[:, 5] = x[:, 3] * 2.0  # rank 11
    y = torch.randn(400, 12, generator=g, dtype=torch.float64)
    eq = NormalEquations(12)
    for k in range(0, 400, 64):
        eq.add(x[k : k + 64], y[k : k + 64])
    fit = eq.solve()
    ref = torch.linalg.pinv(x) @ y
    assert fit.solver == "eigh-pinv" and fit.rank == 11
    assert float((fit.w - ref).abs().max()) < 1e-8


class Float64Spy(TorchDispatchMode):
    """Records the largest float64 tensor any torch op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_streamed_fit_equals_lstsq_and_never_holds_vxd_float64(qwen):
    b, i, a = open_model(qwen["b"], "--base"), open_model(qwen["i"], "--instruct"), open_model(qwen["a"], "--adapted")
    vmap = build_vocab_map(b.tok, a.tok)
    rows = fit_rows(vmap, "conversion", set(b.tok.get_added_tokens_decoder()))
    n_mean = vmap.summary()["mean"]
    assert len(rows) > 151_000 and n_mean >= 100  # the new tokens enter the fit as means
    rows = rows[:-n_mean:8] + rows[-n_mean:]  # every 8th copied row + all averaged rows keeps the test quick
    chunk = 1000
    spy = Float64Spy()
    with spy:
        eqs = accumulate(b, i, [EMBED, HEAD], vmap, rows, chunk_rows=chunk, progress=False)
    d = a.hidden
    # the largest float64 tensor: one chunk's X|Y for both matrices (a handful of pieces per row at most)
    assert 0 < spy.max_numel <= chunk * 4 * 4 * d < len(rows) * d
    for name in (EMBED, HEAD):
        fit = eqs[name].solve()
        eb, ei = tensors(qwen["b"])[name], tensors(qwen["i"])[name]
        x = averaged_rows(vmap, eb, rows, dtype=torch.float64)
        y = averaged_rows(vmap, ei, rows, dtype=torch.float64)
        ref = torch.linalg.lstsq(x, y, driver="gelsd").solution
        assert float((fit.w - ref).abs().max()) < 1e-8
        assert float((fit.w - qwen["w"][name].double()).abs().max()) < 1e-3  # the known map is recovered


# ------------------------------------------------------------------------------------------------ the stage
@pytest.mark.parametrize("method", ["conversion", "overlap", "swap"])
def test_methods_on_untied_sharded_qwen(qwen, method, capsys):
    out = qwen["root"] / f"out-{method}"
    before = {k: dir_hash(qwen[k]) for k in ("b", "i", "a")}
    rc = main(
        [
            "-q",
            "lep",
            "--base",
            str(qwen["b"]),
            "--instruct",
            str(qwen["i"]),
            "--adapted",
            str(qwen["a"]),
            "--out",
            str(out),
            "--method",
            method,
            "--chunk-rows",
            "50000",
            "--max-shard-size",
            "300KB",
        ]
    )
    assert rc == 0
    assert {k: dir_hash(qwen[k]) for k in ("b", "i", "a")} == before, "inputs must not change"
    w = {EMBED: None, HEAD: None} if method == "swap" else qwen["w"]
    rec = check_output(out, qwen["a"], qwen["i"], w, tied=False)
    assert len(list(out.glob("model-*.safetensors"))) > 1
    r = rec["result"]
    assert r["method"] == method
    if method == "swap":
        assert r["fits"] == {}
    else:
        kinds = r["vocab_map_rows_by_kind"]
        specials_in_vocab = 0  # Qwen's added tokens are not in its model vocab, so copy rows are all normal tokens
        expect_rows = kinds["copy"] - specials_in_vocab + (0 if method == "overlap" else kinds["mean"])
        for role in ("input", "output"):
            f = r["fits"][role]
            assert f["rows"] == expect_rows
            assert f["relative_residual"] < 1e-3 and f["condition_number_xtx"] < 100
        assert r["row_norms"][EMBED]["output"]["rows"] == r["adapted_tokens"]
    assert r["instruct_rows_kept"] and rec["inputs"]["adapted"]["fingerprint"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
    assert (out / "special_tokens_map.json").read_bytes() == (qwen["i"] / "special_tokens_map.json").read_bytes()
    # model card: derived from the base (through A's lineage: swap) and the instruct model; stages swap, lep
    lineage = json.loads((out / "ruadapt_lineage.json").read_text())
    assert lineage["roots"] == [str(qwen["b"].resolve()), str(qwen["i"].resolve())]
    assert [s["stage"] for s in lineage["stages"]] == ["swap", "lep"] and lineage["stages"][-1]["options"][
        "method"
    ] == method
    assert (out / "README.md").read_text().startswith("---\nbase_model:")
    if method == "conversion":
        loads_and_generates(out)


# (model_type, tied, single-file, method, load and generate): each tokenizer family loads and generates once and
# fits once; gemma2 uses `swap` (no 262k vocabulary map) to keep the suite within its time budget
ARCH_CASES = [
    ("qwen3", True, True, "conversion", True),
    ("llama", False, True, "conversion", True),
    ("mistral", True, False, "conversion", False),
    pytest.param("gemma2", True, True, "swap", False, marks=pytest.mark.slow),  # `make test-all`
    ("gemma3_text", False, False, "conversion", True),
]
ARCH_IDS = ["qwen3", "llama", "mistral", "gemma2", "gemma3_text"]


@pytest.mark.parametrize("model_type,tied,single,method,generate", ARCH_CASES, ids=ARCH_IDS)
def test_architectures(tmp_path, model_type, tied, single, method, generate):
    shard = "100MB" if single else "300KB"
    b = make_tiny_model(tmp_path / "b", model_type, tied=tied, hidden=D, max_shard_size=shard)
    w = {EMBED: random_map(11), HEAD: random_map(12)}
    i = make_instruct(b, tmp_path / "i", w[EMBED], w[HEAD])
    a = tmp_path / "a"
    shutil.copytree(b, a)  # same vocabulary: an adapted base whose CPT moved every row
    perturb_rows(a)
    assert (b / "model.safetensors").is_file() == single
    rec = lep_model(b, i, a, tmp_path / "out", method=method, progress=False)
    check_output(tmp_path / "out", a, i, {EMBED: None, HEAD: None} if method == "swap" else w, tied=tied)
    fitted = set() if method == "swap" else {"input"} if tied else {"input", "output"}
    assert rec["result"]["tied"] is tied and set(rec["result"]["fits"]) == fitted
    if generate:
        loads_and_generates(tmp_path / "out")


# ------------------------------------------------------------------------------------------------ bad inputs
def _run_bad(capsys, b, i, a, out) -> str:
    rc = main(["-q", "lep", "--base", str(b), "--instruct", str(i), "--adapted", str(a), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return err


def test_bad_inputs(qwen, tmp_path, capsys):
    b, i, a = qwen["b"], qwen["i"], qwen["a"]
    hashes = {k: dir_hash(qwen[k]) for k in ("b", "i", "a")}
    # hidden-size mismatch: an adapted model whose matrices are 32 wide
    wide = tmp_path / "wide"
    shutil.copytree(a, wide)
    rewrite(wide, lambda n, t: torch.cat([t, t], dim=1) if n in (EMBED, HEAD) else t)
    err = _run_bad(capsys, b, i, wide, tmp_path / "o1")
    assert "hidden size 32 vs 16" in err and str(wide) in err and str(i) in err
    # B and I with different vocabularies (same architecture, Llama-3's tokenizer)
    other = tmp_path / "other"
    shutil.copytree(i, other)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHARED_TOKENIZERS / "llama-3" / f, other / f)
    err = _run_bad(capsys, b, other, a, tmp_path / "o2")
    assert "different vocabularies" in err and str(b) in err and str(other) in err
    # untied model without lm_head
    nohead = tmp_path / "nohead"
    shutil.copytree(i, nohead)
    rewrite(nohead, lambda n, t: None if n == HEAD else t)
    err = _run_bad(capsys, b, nohead, a, tmp_path / "o3")
    assert "lm_head.weight" in err and str(nohead) in err
    # NaN rows in A
    nan = tmp_path / "nan"
    shutil.copytree(a, nan)

    def poison(n, t):
        if n == EMBED:
            t = t.clone()
            t[151700, 3] = float("nan")
        return t

    rewrite(nan, poison)
    err = _run_bad(capsys, b, i, nan, tmp_path / "o4")
    assert "row 151700" in err and "NaN" in err and str(nan) in err
    assert {k: dir_hash(qwen[k]) for k in ("b", "i", "a")} == hashes


def test_likely_mistakes_and_output_are_refused_before_any_work(qwen, tmp_path, capsys, caplog, monkeypatch):
    """--instruct or --adapted that is --base under another path (equal fingerprints), and an --out that is not
    empty, fail before the finiteness pass and the fit; --allow goes on with a warning."""
    import ruadapt.lep as lep_mod

    def must_not_run(*args, **kwargs):
        raise AssertionError("heavy work started before validation finished")

    monkeypatch.setattr(lep_mod, "check_adapted_finite", must_not_run)
    monkeypatch.setattr(lep_mod, "accumulate", must_not_run)
    b, i, a = qwen["b"], qwen["i"], qwen["a"]
    copy_of_b = tmp_path / "b-copy"
    shutil.copytree(b, copy_of_b)
    err = _run_bad(capsys, b, copy_of_b, a, tmp_path / "o1")
    assert "--instruct is the same checkpoint as --base" in err and "--allow same-model" in err
    err = _run_bad(capsys, b, i, copy_of_b, tmp_path / "o2")
    assert "--adapted is the same checkpoint as --base" in err and "--allow adapted-is-base" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    rc = main(["-q", "lep", "--base", str(b), "--instruct", str(i), "--adapted", str(a), "--out", str(busy)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "exists and is not empty" in err and (busy / "keep.txt").read_text() == "x"
    monkeypatch.undo()
    rc = main(
        [
            "-q",
            "lep",
            "--base",
            str(b),
            "--instruct",
            str(copy_of_b),
            "--adapted",
            str(a),
            "--out",
            str(tmp_path / "o3"),
            "--method",
            "swap",
            "--allow",
            "same-model",
        ]
    )
    assert rc == 0 and "going on: --allow same-model" in caplog.text


def test_fingerprint_tells_base_from_instruct(qwen):
    """Headers and config alone are equal for a base and its instruct model; the fingerprint is not."""
    from ruadapt.io.checkpoint import CheckpointReader, read_header

    rb, ri = CheckpointReader(qwen["b"]), CheckpointReader(qwen["i"])
    assert [read_header(s)[0] for s in rb.shards] == [read_header(s)[0] for s in ri.shards]
    assert model_fingerprint(rb) != model_fingerprint(ri)
    assert model_fingerprint(rb) == model_fingerprint(CheckpointReader(qwen["b"]))


# ------------------------------------------------------------------------------------------------ LoRA deltas
def test_lora_deltas_match_peft_merge(qwen, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen["b"])
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    rec = lep_model(
        qwen["b"],
        qwen["i"],
        qwen["a"],
        tmp_path / "out",
        method="swap",
        lora_deltas=tmp_path / "adapter",
        alpha_scale=2.0,
        progress=False,
    )
    assert rec["result"]["lora_deltas"]["modules"] == 4
    # reference: peft's own merge of the adapter into I, delta halved (alpha scale 2)
    inst = AutoModelForCausalLM.from_pretrained(qwen["i"])
    merged = PeftModel.from_pretrained(inst, tmp_path / "adapter").merge_and_unload().state_dict()
    o, i = tensors(tmp_path / "out"), tensors(qwen["i"])
    changed = [k for k in o if k in i and not torch.equal(o[k], i[k])]
    expected = {f"model.layers.{n}.{m}.weight" for n in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")}
    assert set(changed) - {EMBED, HEAD} == expected
    for k in changed:
        if k in (EMBED, HEAD):
            continue
        assert torch.allclose(o[k] - i[k], (merged[k] - i[k]) / 2, atol=1e-5)


def test_fit_chunks_are_bounded_by_pieces_not_rows():
    """A new token of k pieces costs k gathered float64 rows: chunks hold at most the budget in pieces (a row
    larger than the budget alone), every fitted row exactly once and in order."""
    sources = [(0,), (1, 2, 3), (4, 5), (6,), (7, 8, 9, 10, 11), (12,), (13, 14)]
    vmap = VocabMap([ROW_COPY if len(s) == 1 else ROW_MEAN for s in sources], sources, len(sources), 15)
    rows = [0, 1, 2, 3, 4, 5, 6]
    chunks = [list(c) for c in piece_chunks(vmap, rows, 4)]
    assert chunks == [[0, 1], [2, 3], [4], [5, 6]]
    assert [r for c in chunks for r in c] == rows
    assert all(sum(len(sources[r]) for r in c) <= 4 for c in chunks if len(c) > 1)
