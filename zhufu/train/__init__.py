"""Training (rules/train.smk, rules/export.smk): profiles, the XTuner config, the base model, the format
check, the launcher of XTuner's tools, checkpoints, training and export.
"""
