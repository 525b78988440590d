"""The architecture table (archs.yaml) is read through a schema, and its data drive the tie rule and vocab size."""

import pytest

from ruadapt.errors import RuadaptError
from ruadapt.vocab.arch import INPUT, OUTPUT, Arch, _table, arch_for_config, parse_arch_table


def test_shipped_table_parses_and_names_every_supported_type():
    assert {"qwen2", "qwen3", "llama", "mistral", "gemma2", "gemma3_text", "t5", "mt5"} <= set(_table())


def test_misspelt_or_missing_key_is_an_error_naming_the_entry():
    with pytest.raises(RuadaptError, match=r"unknown key 'tie_defualt' in archs.yaml: qwen2"):
        parse_arch_table(
            "qwen2:\n  input: [model.embed_tokens.weight]\n  output: lm_head.weight\n  tie_defualt: false\n"
        )
    with pytest.raises(RuadaptError, match=r"missing required key 'output' in archs.yaml: llama"):
        parse_arch_table("llama:\n  input: [model.embed_tokens.weight]\n  tie_default: false\n")
    with pytest.raises(RuadaptError, match=r"archs.yaml: gemma2.tie_default: expected true or false"):
        parse_arch_table("gemma2:\n  input: [e]\n  output: h\n  tie_default: maybe\n")


def test_tie_rule_and_nested_vocab_size_keys():
    t5 = arch_for_config({"model_type": "t5"})  # tied by default, three stored input names
    stored = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    assert t5.matrix_roles(stored) == dict.fromkeys(stored, INPUT)
    untied = arch_for_config({"model_type": "qwen2", "tie_word_embeddings": False})
    assert untied.matrix_roles(["model.embed_tokens.weight", "lm_head.weight"]) == {
        "model.embed_tokens.weight": INPUT,
        "lm_head.weight": OUTPUT,
    }
    nested = Arch("x", ("e",), "h", tied=True, vocab_size_keys=("vocab_size", "text_config.vocab_size"))
    cfg = {"vocab_size": 10, "text_config": {"vocab_size": 10, "hidden_size": 4}}
    out = nested.with_vocab_size(cfg, 16)
    assert out == {"vocab_size": 16, "text_config": {"vocab_size": 16, "hidden_size": 4}} and cfg["vocab_size"] == 10
