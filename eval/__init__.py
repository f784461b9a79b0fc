"""LongLaMP evaluation: `python -m eval run ...`, `python -m eval report RUN...` (docs/eval.md).

Also the benchmarks `python -m eval.bench`, `eval.bench_remote`, `eval.bench_vllm`,
`eval.bench_bytes`, `eval.bench_real` and `eval.bench_retrieval`, each its settings, phases
and report over one harness, `eval.harness` (docs/eval.md, "Benchmarks").
"""
