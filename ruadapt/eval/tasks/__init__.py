"""lm-eval task definitions shipped with ruadapt (YAML + ``utils.py``); data paths are given at run time."""
