"""Prefect front door: the `train-and-eval` flow (flows/pipeline.py, entrypoint
flows/train_and_eval.py), its served deployment (flows/serve.py), the workspace lock and the
Prefect-server check."""
