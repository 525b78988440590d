"""llama.cpp: GGUF export with llama.cpp's own converter. The check text that keeps a vocabulary recognisable
is :mod:`ruadapt.vocab.checktext` (the tokenizer stage uses it too, so it sits below both).

* :mod:`.prename`   – the pre-tokenizer name for a tokenizer, from ``pre_names.yaml``;
* :mod:`.source`    – the converter on disk (checkout or llama-cpp-python sdist) and its own name table;
* :mod:`.export`    – ``ruadapt gguf``: run the converter (:mod:`.convert_child`), check, record;
* :mod:`.readback`  – the written GGUF's vocabulary against the model directory;
* :mod:`.verify`    – ids and logits in llama.cpp (llama-cpp-python) against transformers.
"""
