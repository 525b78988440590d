"""``ruadapt eval``: bits per byte against a hand computation from the logits, lm-eval agreement, speed
consistency, chat bpb, the copy task, and one-line errors for bad input.

Two tiny models with different real tokenizers (Qwen2.5 and Llama-3) score the same Russian/English bytes.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import time

import pytest
import torch
from tiny import SHARED_DATA, dir_hash, make_tiny_model

from ruadapt.cli import main
from ruadapt.eval.bpb import chat_bpb, plan_windows, text_bpb
from ruadapt.eval.load import load_model
from ruadapt.eval.macs import macs_per_token
from ruadapt.eval.speed import Prompt, measure_speed
from ruadapt.io.record import check_record
from ruadapt.vocab.measure import chars_per_token
from tokenizers import Tokenizer

LN2 = math.log(2)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Two tiny models (qwen2 + Qwen2.5 tokenizer, llama + Llama-3 tokenizer) and small real text files."""
    root = tmp_path_factory.mktemp("eval")
    qwen = make_tiny_model(root / "qwen", "qwen2", seed=1)
    llama = make_tiny_model(root / "llama", "llama", seed=2)
    ru_all = (SHARED_DATA / "ru_eval.txt").read_text(encoding="utf-8").splitlines()
    en_all = (SHARED_DATA / "en_eval.txt").read_text(encoding="utf-8").splitlines()
    # short lines plus one long one (> 32 tokens for both tokenizers, to make windows matter)
    ru = [line for line in ru_all if 20 <= len(line) <= 120][:4] + [
        next(line for line in ru_all if 300 <= len(line) <= 400)
    ]
    en = [line for line in en_all if 20 <= len(line) <= 150][:3]
    (root / "ru.txt").write_text("\n".join(ru) + "\n\n", encoding="utf-8")  # a blank line is skipped
    (root / "en.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
    pairs = [
        line.split("\t") for line in (SHARED_DATA / "ru_en_parallel.tsv").read_text(encoding="utf-8").splitlines()[1:4]
    ]
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"Переведи на русский: {en_}"},
                {"role": "assistant", "content": ru_},
            ]
        }
        for ru_, en_, *_ in pairs
    ]
    chats.append(
        {
            "messages": [
                {"role": "user", "content": "Привет!"},
                {"role": "assistant", "content": "Здравствуйте."},
                {"role": "user", "content": "Как дела?"},
                {"role": "assistant", "content": "Хорошо, спасибо."},
            ]
        }
    )
    (root / "chat.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    return {"root": root, "qwen": qwen, "llama": llama, "ru": ru, "en": en, "chats": [c["messages"] for c in chats]}


@pytest.fixture(scope="module")
def loaded(work) -> dict:
    return {"qwen": load_model("qwen", work["qwen"]), "llama": load_model("llama", work["llama"])}


def hand_nll(model, context: list[int], target: list[int]) -> float:
    """Σ −log p(target | context) in float64 straight from one unbatched forward pass over the whole sequence."""
    seq = context + target
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(len(context) - 1, len(seq) - 1)
    return -float(logp[rows, torch.tensor(target)].sum())


def test_bpb_equals_hand_computation_for_two_tokenizers(work, loaded):
    results = {}
    for name, em in loaded.items():
        raw = Tokenizer.from_file(str(work[name] / "tokenizer.json"))  # independent tokenizer (no transformers)
        prefix = raw.token_to_id("<|begin_of_text|>") if name == "llama" else raw.token_to_id("<|im_end|>")
        r = text_bpb(em, work["ru"], window=256, batch_tokens=300)  # several padded batches
        nll = nbytes = tokens = 0
        for line in work["ru"]:
            ids = raw.encode(line, add_special_tokens=False).ids
            assert len(ids) < 256
            nll += hand_nll(em.model, [prefix], ids)
            nbytes += len(line.encode("utf-8"))
            tokens += len(ids)
        assert r.bytes == nbytes and r.tokens == tokens and r.docs == len(work["ru"])
        assert abs(r.bpb - nll / (LN2 * nbytes)) < 1e-6
        assert r.summary()["chars_per_token"] == sum(len(x) for x in work["ru"]) / tokens
        # the same figure as `ruadapt tokenizer report` gives for the file
        assert r.summary()["chars_per_token"] == chars_per_token(work[name], work["root"] / "ru.txt")["chars_per_token"]
        results[name] = r
    # same bytes, different tokenizations
    assert results["qwen"].bytes == results["llama"].bytes
    assert results["qwen"].tokens != results["llama"].tokens


def test_windows_reproduce_lm_eval_rolling_and_cover_every_token_once():
    from lm_eval import utils

    rng = random.Random(0)
    for _ in range(500):
        n, window = rng.randint(1, 60), rng.randint(2, 16)
        tokens = list(range(100, 100 + n))
        theirs = [utils.make_disjoint_window(p) for p in utils.get_rolling_token_windows(tokens, 7, window, 1)]
        ours = plan_windows([7], tokens, window, window)
        assert [((ctx + cont)[:-1], cont) for ctx, cont in theirs] == [(w.inputs, w.targets) for w in ours]
        # smaller stride: still every token once, in order, each with ≥ window − stride + 1 tokens of context
        stride = rng.randint(1, window)
        seq = [7] + tokens
        scored = []
        for w in plan_windows([7], tokens, window, stride):
            assert len(w.inputs) <= window
            end = len(scored) + 1 + len(w.targets)  # seq index after the last target
            assert w.inputs == seq[max(0, end - 1 - window) : end - 1]
            first = end - len(w.targets)
            assert first - max(0, end - 1 - window) >= min(first, window - stride + 1)
            scored += w.targets
        assert scored == tokens


def test_long_lines_in_windows_equal_hand_computation(work, loaded):
    em = loaded["llama"]
    line = work["ru"][-1]
    ids = em.tokenizer(line, add_special_tokens=False)["input_ids"]
    assert len(ids) > 32
    r = text_bpb(em, [line], window=16, stride=8)
    nll, done = 0.0, 0
    for w in plan_windows([em.prefix_id], ids, 16, 8):  # each window's targets scored on its own inputs by hand
        nll += hand_nll(em.model, w.inputs[: len(w.inputs) - len(w.targets) + 1], w.targets)
        done += len(w.targets)
    assert done == len(ids) and r.windows > 2
    assert abs(r.nll_nats - nll) < 1e-6 * max(1.0, nll)
    assert r.bytes == len(line.encode())
    # more context (stride 8) scores this text differently from disjoint windows (stride 16)
    assert r.nll_nats != text_bpb(em, [line], window=16).nll_nats


def test_chat_bpb_scores_assistant_turns_with_prompt_as_context(work, loaded):
    em = loaded["qwen"]
    r = chat_bpb(em, work["chats"], window=256)
    nll, nbytes, turns = 0.0, 0, 0
    for messages in work["chats"]:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = em.tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
            assert prompt.endswith("<|im_start|>assistant\n")
            ctx = em.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            nll += hand_nll(em.model, ctx, em.tokenizer(m["content"], add_special_tokens=False)["input_ids"])
            nbytes += len(m["content"].encode())
            turns += 1
    assert r.docs == turns == 5 and r.bytes == nbytes
    assert abs(r.bpb - nll / (LN2 * nbytes)) < 1e-6


def test_speed_reference_mode_produces_the_reference_text(loaded):
    em = loaded["qwen"]
    text = "Москва — столица России, крупнейший по численности населения город страны."
    p = Prompt("Расскажи о городе.", " " + text)
    speed = measure_speed([em, loaded["llama"]], [p, p, p], new_tokens=6, mode="reference", rounds=1)
    forced = em.tokenizer(p.continuation, add_special_tokens=False)["input_ids"][:6]
    q = speed["models"]["qwen"]
    assert q["sample"] == em.tokenizer.decode(forced, skip_special_tokens=True)
    assert q["chars"] == 3 * len(q["sample"]) and q["tokens"] == 18
    assert speed["order"] == [["qwen", "llama"], ["llama", "qwen"], ["qwen", "llama"]]


def hand_macs(model, context: float) -> float:
    """MACs of one decoding step counted on the instantiated model: in × out of every nn.Linear (lm_head included)
    plus q·kᵀ and the weighted sum of v over the positions each layer's attention sees."""
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 0.0
    for layer in model.model.layers:
        window = getattr(layer.self_attn, "sliding_window", None)
        attention += 2 * layer.self_attn.q_proj.out_features * (min(context, window) if window else context)
    return linear + attention


@pytest.mark.parametrize(
    "model_type, extra",
    [
        ("qwen2", {}),  # grouped-query attention: k/v narrower than q
        ("llama", {"head_dim": 12}),  # head_dim ≠ hidden / heads
        (
            "gemma3_text",
            {"head_dim": 12, "query_pre_attn_scalar": 12, "sliding_window": 8},
        ),  # 5 sliding layers + 1 full
    ],
)
def test_macs_per_token_equals_a_count_of_the_instantiated_layers(model_type, extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        **extra,
    )
    model = AutoModelForCausalLM.from_config(config)
    for context in (5.0, 37.5):
        macs = macs_per_token(config, 300, context)
        assert macs["total"] == pytest.approx(hand_macs(model, context), rel=1e-12)
        assert macs["lm_head"] == 300 * 32


def test_mac_ratio_of_models_differing_only_in_lm_head_rows():
    from transformers import AutoConfig, AutoModelForCausalLM

    body = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    small, large = (
        AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", vocab_size=rows, **body))
        for rows in (1000, 1310)
    )
    predicted = macs_per_token(small.config, 1000, 20)["total"] / macs_per_token(large.config, 1310, 20)["total"]
    assert predicted == pytest.approx(hand_macs(small, 20) / hand_macs(large, 20), rel=1e-12)
    assert predicted < 1  # the larger lm_head cannot decode faster


def test_speed_rounds_report_medians_of_per_round_values(loaded):
    qwen, llama = loaded["qwen"], loaded["llama"]
    prompts = [Prompt("Расскажи о городе."), Prompt("Москва — столица России, крупнейший по численности город.")]
    speed = measure_speed([qwen, llama], prompts, new_tokens=4, rounds=3)
    assert speed["rounds"] == 3 and speed["baseline"] == "qwen"
    assert speed["order"] == [["qwen", "llama"], ["llama", "qwen"]] * 3  # rotating, every model first as often
    for _name, s in speed["models"].items():
        assert s["tokens"] == 3 * 2 * 4 and s["generations"] == 6 and s["decode_steps"] == 6 * 3
        for rate in ("tokens_per_s", "chars_per_s", "decode_tokens_per_s"):
            values, base = s[f"{rate}_rounds"], speed["models"]["qwen"][f"{rate}_rounds"]
            assert len(values) == 3 and all(v > 0 for v in values)
            assert s[rate] == statistics.median(values)
            assert s[f"{rate}_spread"]["min"] == min(values) and s[f"{rate}_spread"]["max"] == max(values)
            assert s[f"{rate}_spread"]["rel"] == pytest.approx((max(values) - min(values)) / 2 / s[rate])
            ratios = [v / b for v, b in zip(values, base)]
            assert s[f"{rate}_ratio_rounds"] == ratios and s[f"{rate}_ratio"] == statistics.median(ratios)
        # greedy output is the same every round, so chars/s = tokens/s × chars/token holds for the medians too
        assert s["chars_per_s"] == pytest.approx(s["tokens_per_s"] * s["chars_per_token"], rel=1e-9)
    assert speed["models"]["qwen"]["decode_tokens_per_s_ratio"] == 1.0
    # the prediction: MACs per step at the mean context of the measured decoding steps, counted by hand
    contexts = {
        em.name: statistics.mean(len(em.tokenizer(p.text)["input_ids"]) for p in prompts) + 4 / 2
        for em in (qwen, llama)
    }
    for em in (qwen, llama):
        assert speed["models"][em.name]["mean_context"] == pytest.approx(contexts[em.name])
    assert speed["models"]["llama"]["mac_ratio"] == pytest.approx(
        hand_macs(qwen.model, contexts["qwen"]) / hand_macs(llama.model, contexts["llama"]), rel=1e-9
    )


def test_speed_warns_when_the_decode_ratio_disagrees_with_the_mac_count(loaded):
    # 0.25 s per forward pass, far beyond a tiny model's step even on a busy machine, and not in its MACs
    slow = loaded["llama"].model.register_forward_pre_hook(lambda *_: time.sleep(0.25))
    try:
        speed = measure_speed([loaded["qwen"], loaded["llama"]], [Prompt("Привет")], new_tokens=3, rounds=2)
    finally:
        slow.remove()
    llama = speed["models"]["llama"]
    assert llama["decode_tokens_per_s_ratio_spread"]["max"] < 0.8 * llama["mac_ratio"]
    assert len(speed["warnings"]) == 1
    assert speed["warnings"][0].startswith("per-step ratio disagrees with the MAC count: llama decodes at")


def test_cli_report_lm_eval_agreement_and_speed(work, tmp_path):
    root, out = work["root"], tmp_path / "report"
    before = {k: dir_hash(work[k]) for k in ("qwen", "llama")}
    rc = main(
        [
            "-q",
            "eval",
            "--model",
            f"qwen={work['qwen']}",
            "--model",
            f"llama={work['llama']}",
            "--text",
            f"ru={root / 'ru.txt'}",
            "--text",
            f"en={root / 'en.txt'}",
            "--chat",
            f"ru_chat={root / 'chat.jsonl'}",
            "--tasks",
            "bpb_ru,bpb_en",
            "--window",
            "32",
            "--speed-prompts",
            "3",
            "--new-tokens",
            "5",
            "--speed-rounds",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["bpb"]) == {"qwen", "llama"}
    for name in ("qwen", "llama"):
        assert set(report["bpb"][name]) == {"ru", "en", "ru_chat"}
        # lm-eval's loglikelihood_rolling task on the same lines, window 32 (long line split): same number
        for lang in ("ru", "en"):
            theirs = report["lm_eval"][name][f"bpb_{lang}"]["metrics"]["bits_per_byte"]
            assert abs(theirs - report["bpb"][name][lang]["bpb"]) < 1e-4
            assert report["bpb_agreement"][name][lang]["abs_diff"] < 1e-4
        assert report["bpb"][name]["ru"]["windows"] > report["bpb"][name]["ru"]["docs"]  # the long line was split
    assert report["bpb"]["qwen"]["ru"]["bytes"] == report["bpb"]["llama"]["ru"]["bytes"]
    speed = report["speed"]
    assert speed["order"] == [["qwen", "llama"], ["llama", "qwen"]] * 3
    for name, s in speed["models"].items():
        assert s["tokens"] == 2 * 3 * 5 and s["generations"] == 6 and len(s["chars_per_s_rounds"]) == 2
        assert math.isclose(s["tokens_per_s"] * s["chars_per_token"], s["chars_per_s"], rel_tol=1e-9)
    assert speed["models"]["qwen"]["chars_per_s_ratio"] == 1.0
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| llama |") and " ±" in line)
    assert row.endswith(f" {speed['models']['llama']['mac_ratio']:.3f} |")  # the MAC prediction next to the ratios
    assert sum(line.startswith("| qwen |") for line in md.splitlines()) == 4  # models, bpb, speed, lm-eval tables
    assert (out / "bpb.png").stat().st_size > 0 and (out / "speed.png").stat().st_size > 0
    record = check_record(json.loads((out / "ruadapt_eval.json").read_text()))
    assert record["stage"] == "eval" and "model:qwen" in record["inputs"]
    assert before == {k: dir_hash(work[k]) for k in ("qwen", "llama")}
    assert not list(tmp_path.glob(".report.ruadapt-tmp-*"))


def test_copy_task_runs_offline_with_chat_template(work, loaded):
    from ruadapt.eval.lm_eval_runner import available_tasks, run_task
    from ruadapt.eval.tasks.utils import copy_scores

    tasks = available_tasks({"ru": work["root"] / "ru.txt"}, work["root"] / "ru.txt")
    res = run_task(loaded["qwen"], "copy_ru", tasks["copy_ru"], window=128, limit=2)
    assert res["docs"] == 2 and res["chat_template"]
    for s in res["samples"]:
        assert s["prompt"].startswith("<|im_start|>system") and s["doc"]["text"] in s["prompt"]
    # metrics = mean of an independent scoring of the logged answers
    em = [float(s["response"].strip() == s["doc"]["text"]) for s in res["samples"]]
    ratio = [len(s["response"].strip()) / len(s["doc"]["text"]) for s in res["samples"]]
    assert res["metrics"]["exact_match"] == pytest.approx(sum(em) / 2)
    assert res["metrics"]["length_ratio"] == pytest.approx(sum(ratio) / 2)
    assert copy_scores(" Да, верно.\n", "Да, верно.") == {"exact_match": 1.0, "length_ratio": 1.0}


# unknown_task indexes lm-eval's whole registry (≈ 15 s); test_eval_tasks.py checks that error in `make test`
@pytest.mark.parametrize(
    "case",
    ["no_tokenizer", "empty_text", pytest.param("unknown_task", marks=pytest.mark.slow), "unknown_device", "bad_chat"],
)
def test_bad_input_one_line_error(work, tmp_path, capsys, case):
    model, text = work["qwen"], work["root"] / "ru.txt"
    extra: list[str] = []
    if case == "no_tokenizer":
        model = tmp_path / "notok"
        shutil.copytree(work["qwen"], model)
        (model / "tokenizer.json").unlink()
        expect = "tokenizer.json"
    elif case == "empty_text":
        text = tmp_path / "empty.txt"
        text.write_text("\n  \n", encoding="utf-8")
        expect = "empty"
    elif case == "unknown_task":
        extra = ["--tasks", "bpb_ru,no_such_task"]  # looked up in lm-eval's registry too, in vain
        expect = "--tasks no_such_task: unknown task"
    elif case == "unknown_device":
        extra = ["--device", "tpu"]
        expect = "--device tpu"
    else:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
        extra = ["--chat", f"c={bad}"]
        expect = "assistant"
    out = tmp_path / "out"
    rc = main(["eval", "--model", f"m={model}", "--text", f"ru={text}", *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("ruadapt eval: error:") and expect in err
    assert not out.exists()
