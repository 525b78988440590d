"""Stage 1: train a Russian-focused tokenizer (``train``: extend / replace) and measure it (``report``)."""
