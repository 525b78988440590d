"""ruadapt: adapt a pretrained LLM to Russian by changing its vocabulary.

Stages (each a `ruadapt` subcommand): tokenizer, swap, train (CPT/SFT), lep, eval, trim.
See README.md for the pipeline and docs/design.md for the math and the id-layout contract.
"""

__version__ = "0.1.0"
