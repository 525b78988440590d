"""`ruadapt inspect`: the vocabulary layout read from headers and configs, checked against the model itself."""

import json

from tiny import make_tiny_model

from ruadapt.cli import main


def test_inspect_reports_padded_rows_tie_and_specials(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = make_tiny_model(tmp_path / "m", "qwen2", tied=False, max_shard_size="150KB")
    assert main(["inspect", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model, tok = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    rows = model.get_input_embeddings().weight.shape[0]
    assert info["embedding_rows"] == rows == info["config_vocab_size"]
    assert info["tokenizer_tokens"] == len(tok) and info["padded_rows"] == rows - len(tok) > 0
    assert info["tied"] is False and info["lm_head_in_checkpoint"] is True
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["special_tokens"]["<|im_end|>"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert info["shards"] == len(list(d.glob("model-*.safetensors"))) > 1
    assert info["chat_template"] is True

    cfg = json.loads((d / "config.json").read_text())
    del cfg["vocab_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert main(["inspect", str(d)]) == 0
    assert "config.vocab_size not set" in capsys.readouterr().out


def test_inspect_bad_dir_is_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ruadapt inspect: error: {tmp_path / 'missing'}: model directory not found"]
