"""llama.cpp: GGUF export with llama.cpp's own converter, and the check text that keeps a vocabulary recognisable.

* :mod:`.checktext` – llama.cpp's check text; the merges ``tokenizer train --mode extend`` must not learn;
* :mod:`.prename`   – the pre-tokenizer name for a tokenizer, from ``pre_names.yaml``;
* :mod:`.source`    – the converter on disk (checkout or llama-cpp-python sdist) and its own name table;
* :mod:`.export`    – ``ruadapt gguf``: run the converter (:mod:`.convert_child`), check, record;
* :mod:`.readback`  – the written GGUF's vocabulary against the model directory;
* :mod:`.verify`    – ids and logits in llama.cpp (llama-cpp-python) against transformers.
"""
