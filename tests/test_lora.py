"""ruadapt.vocab.lora: the streaming LoRA merge equals peft's ``merge_and_unload`` (rank/alpha patterns, rsLoRA)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny import make_tiny_model

from ruadapt.errors import RuadaptError
from ruadapt.io.checkpoint import CheckpointReader, write_with_replacements
from ruadapt.vocab.lora import merge_replacements, pattern_value, read_adapter

pytestmark = pytest.mark.filterwarnings("ignore:The following alpha_pattern keys did not match")

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]
# the first matching key wins (layer 1's q_proj gets 6, layer 0's 2); "proj" matches nothing ("q_proj" has no "."
# before "proj"), so a plain endswith() would get it wrong; a regex key must be honoured as a regex. Keys are in
# sorted order: peft saves adapter_config.json with sort_keys, so that is the order any reload resolves with
RANK_PATTERN = {"layers.1.self_attn.q_proj": 6, r"model\.layers\.1\.mlp\.down_proj": 7, "q_proj": 2}
ALPHA_PATTERN = {"proj": 100.0, "layers.0.mlp.gate_proj": 3.0, "v_proj": 5.0}


def read_dir(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            out.update({n: h.get_tensor(n) for n in h.keys()})
    return out


def trained_peft(tmp_path: Path, dtype: torch.dtype, use_rslora: bool = True):
    """A tiny qwen2 in ``dtype`` wrapped with patterned LoRA, lora_B randomised (peft starts it at zero), saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_tiny_model(
        tmp_path / "base", "qwen2", tied=False, hidden=32, layers=2, dtype=dtype, max_shard_size="40KB"
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        rank_pattern=RANK_PATTERN,
        alpha_pattern=ALPHA_PATTERN,
        use_rslora=use_rslora,
    )
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g).to(dtype) * 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    return base, peft_model


def streaming_merge(base: Path, adapter: Path, out: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(base)
    repl, skipped = merge_replacements(read_adapter(adapter), reader)
    out.mkdir()
    assert skipped == []
    write_with_replacements(reader, out, repl, progress=False)
    return read_dir(out)


def test_pattern_value_is_peft_get_pattern_key():
    from peft.utils.other import get_pattern_key

    names = [
        f"model.layers.{i}.{m}"
        for i in range(3)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.down_proj")
    ]
    for patterns in (RANK_PATTERN, ALPHA_PATTERN, {"q_proj": 1, "layers.1.self_attn.q_proj": 9}):
        for name in names:
            key = get_pattern_key(patterns.keys(), name)
            assert pattern_value(patterns, name, -1) == patterns.get(key, -1), (name, patterns)


@pytest.mark.parametrize("use_rslora", [True, False])
def test_streaming_merge_equals_merge_and_unload_float32(tmp_path, monkeypatch, use_rslora):
    import ruadapt.vocab.lora

    monkeypatch.setattr(ruadapt.vocab.lora, "MERGE_BLOCK_BYTES", 4 * 32 * 5)  # blocks of 5 rows (2 for down_proj)
    base, peft_model = trained_peft(tmp_path, torch.float32, use_rslora)
    adapter = read_adapter(tmp_path / "adapter")
    # r and scaling resolved from adapter_config.json are the ones peft gave each layer
    layers = dict(peft_model.base_model.model.named_modules())
    assert len(adapter.modules) == 2 * len(TARGETS)
    for m in adapter.modules.values():
        layer = layers[m.module]
        assert (m.r, m.scaling) == (layer.r["default"], layer.scaling["default"]), m.module
    assert len({m.scaling for m in adapter.modules.values()}) >= 4  # the patterns really vary r and alpha

    merged = streaming_merge(base, tmp_path / "adapter", tmp_path / "out")
    original = read_dir(base)
    reference = {k: v.detach() for k, v in peft_model.merge_and_unload().state_dict().items()}
    assert set(merged) == set(original)
    for name, t in merged.items():
        torch.testing.assert_close(t, reference[name], rtol=0, atol=1e-6, msg=name)
        changed = not torch.equal(t, original[name])
        assert changed == (name in adapter.modules), name


def test_streaming_merge_bf16_within_one_rounding_of_peft(tmp_path):
    """peft adds a bf16-rounded delta in bf16; ruadapt rounds W + delta once: at most one bf16 step apart."""
    base, peft_model = trained_peft(tmp_path, torch.bfloat16)
    merged = streaming_merge(base, tmp_path / "adapter", tmp_path / "out")
    reference = peft_model.merge_and_unload().state_dict()
    adapter = read_adapter(tmp_path / "adapter")
    original = read_dir(base)
    for name, t in merged.items():
        assert t.dtype == torch.bfloat16
        if name not in adapter.modules:
            assert torch.equal(t, original[name])
            continue
        ref = reference[name].float()
        step = ref.abs().clamp_min(1e-30) * 2**-7  # one bf16 ulp is ≤ |x|·2^-7
        assert bool(((t.float() - ref).abs() <= step * 1.01 + 1e-6).all()), name
        # and the exact float32 sum rounded once
        m = adapter.modules[name]
        with safe_open(adapter.weights, "pt") as f:
            a, b = f.get_tensor(m.key_a).float(), f.get_tensor(m.key_b).float()
        assert torch.equal(t, (original[name].float() + (b @ a) * m.scaling).to(torch.bfloat16)), name


def edited_adapter(tmp_path: Path, src: Path, **changes) -> Path:
    dst = tmp_path / ("adapter-" + "-".join(changes))
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_refuses_what_it_cannot_merge(tmp_path):
    base, _ = trained_peft(tmp_path, torch.float32)
    src = tmp_path / "adapter"
    reader = CheckpointReader(base)
    for changes, words in (
        ({"use_dora": True}, "DoRA"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"peft_type": "IA3"}, "peft_type 'IA3'"),
        ({"lora_bias": True}, "LoRA biases"),
        ({"rank_pattern": {}}, "has rank"),
    ):
        with pytest.raises(RuadaptError, match=words) as e:
            merge_replacements(read_adapter(edited_adapter(tmp_path, src, **changes)), reader)
        assert "\n" not in str(e.value)
    small = make_tiny_model(tmp_path / "other", "qwen2", tied=False, hidden=16, layers=2)
    with pytest.raises(RuadaptError, match="does not fit"):
        merge_replacements(read_adapter(src), CheckpointReader(small))
    with pytest.raises(RuadaptError, match="adapter_config.json: not found"):
        read_adapter(tmp_path / "base")


def test_train_export_merges_through_the_same_code(tmp_path):
    """export_run (no DeepSpeed: rank 0's part) writes a peft-loadable adapter and merges it like merge_and_unload,
    rank_pattern and rsLoRA included; the LoRA tensors leave ``trained`` once the adapter is on disk."""
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ruadapt.io.record import StageRecord
    from ruadapt.train.config import load_config
    from ruadapt.train.export import export_run
    from ruadapt.train.model import checkpoint_name

    base, peft_model = trained_peft(tmp_path, torch.float32)
    run = {
        "task": "cpt",
        "model": str(base),
        "out": str(tmp_path / "run"),
        "stage": "lora",
        "block_size": 64,
        "deepspeed": str(Path(__file__).resolve().parents[1] / "recipes" / "deepspeed" / "zero2.json"),
        "lora": {"r": 4, "alpha": 8, "targets": TARGETS},
        "data": {"train": [str(tmp_path / "none.txt")]},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    cfg = load_config(tmp_path / "run.yaml", check_files=False)
    trained = {checkpoint_name(n): p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    export_run(cfg, trained, StageRecord("train"), [{"step": 1, "loss": 1.0}], [], peft_model.peft_config["default"])
    assert not trained
    out = tmp_path / "run"
    merged = read_dir(out)
    reference = peft_model.merge_and_unload().state_dict()
    reloaded = (
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter")
        .merge_and_unload()
        .state_dict()
    )
    original = read_dir(base)
    targets = set(read_adapter(out / "adapter").modules)
    assert (
        json.loads((out / "ruadapt_train.json").read_text())["result"]["lora_merged_tensors"]
        == len(targets)
        == 2 * len(TARGETS)
    )
    for name, t in merged.items():
        torch.testing.assert_close(t, reference[name], rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(t, reloaded[name], rtol=0, atol=1e-6, msg=name)
        assert (not torch.equal(t, original[name])) == (name in targets), name
