"""Job two, `finetune.py`: fine-tuning a task over a backbone (run), loading the result
(load), evaluating it (evaluation) and k-fold cross-validation (kfold)."""
