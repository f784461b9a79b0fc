"""Evaluation and benchmarks: `python -m eval.bench_methods`, `python -m eval.bench_retrieval`.

LongLaMP loading, scoring and the experiment runner come in a later issue.
"""
