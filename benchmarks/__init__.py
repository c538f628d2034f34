"""Benchmarks: run each from the repository root, `python -m benchmarks.<name>`."""
