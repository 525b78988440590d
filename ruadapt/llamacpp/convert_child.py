"""Run llama.cpp's ``convert_hf_to_gguf.py`` with a given pre-tokenizer name (a child process of ``ruadapt gguf``).

usage: python convert_child.py LLAMA_CPP_DIR PRE -- CONVERTER_ARGS...

``PRE`` is the ``tokenizer.ggml.pre`` to write, or ``-`` for the converter's own check-text lookup. The name is
given the way the converter's own code does it for some models: ``get_vocab_base_pre`` returns it instead of
hashing the check text. Everything else — tensors, vocabulary, merges, special tokens, metadata — is the
converter's. Standalone on purpose (no ruadapt import): it runs with the converter's directory and gguf-py first
on ``sys.path``, as the converter expects.
"""

import sys
from pathlib import Path
from typing import Any


def _patch(module, pre: str) -> int:
    """Make every class of ``module`` that defines ``get_vocab_base_pre`` return ``pre``; returns how many."""

    def get_vocab_base_pre(self, tokenizer) -> str:
        return pre

    n = 0
    for obj in list(vars(module).values()):
        if isinstance(obj, type) and "get_vocab_base_pre" in vars(obj) and obj.__module__ == module.__name__:
            cls: Any = obj  # a converter class of the loaded module: give it our method
            cls.get_vocab_base_pre = get_vocab_base_pre
            n += 1
    return n


def main(argv: list) -> None:
    if len(argv) < 3 or argv[2] != "--":
        sys.exit(__doc__.split("\n\n")[1])
    root, pre, args = Path(argv[0]), argv[1], argv[3:]
    del sys.path[0]  # this file's directory: its module names must not shadow anything the converter imports
    sys.path.insert(0, str(root))
    import convert_hf_to_gguf as converter  # puts root/gguf-py on sys.path itself

    if pre != "-":
        try:
            import conversion.base as where  # the converter split into a package (2026)
        except ImportError:
            where = converter
        if _patch(where, pre) == 0:
            sys.exit(f"ruadapt: no get_vocab_base_pre() in {where.__file__}; cannot set the pre-tokenizer name")
        print(f"ruadapt: tokenizer.ggml.pre = {pre!r} (given, not looked up by the check-text hash)", file=sys.stderr)
    sys.argv = [str(root / "convert_hf_to_gguf.py"), *args]
    converter.main()


if __name__ == "__main__":
    main(sys.argv[1:])
