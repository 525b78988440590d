"""Continued pretraining and SFT under DeepSpeed (``deepspeed --num_gpus N --module ruadapt.train --config X.yaml``).

config.py validates the YAML, data.py / cpt.py / sft.py make the token data, model.py picks what trains,
runner.py is the loop (checkpoints, resume), export.py writes the final model directory.
"""
