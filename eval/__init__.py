"""LongLaMP evaluation: `python -m eval run ...`, `python -m eval report RUN...` (docs/eval.md).

Also the benchmarks `python -m eval.bench_methods` and `python -m eval.bench_retrieval`.
"""
