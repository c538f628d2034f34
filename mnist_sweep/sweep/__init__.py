"""Sweeps: which trials run (`sweeper`, with `storage` and `liveness`), which sweep a job
belongs to (`job`), and what a finished sweep records (`callback`, `summary`) and keeps
(`keep`)."""
