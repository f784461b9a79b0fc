"""LongLaMP evaluation: `python -m eval run ...`, `python -m eval report RUN...` (docs/eval.md).

Also the benchmarks `python -m eval.bench`, `eval.bench_bytes`, `eval.bench_remote` and
`eval.bench_retrieval`.
"""
