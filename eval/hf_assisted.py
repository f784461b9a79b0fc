"""`transformers` assisted generation (`generate(assistant_model=...)`): eval.bench's outside peer.

The specialist drafts for the generalist as HF's assistant, greedy. HF gives the assistant the
target's prompt, so the specialist drafts from the public prompt here (our `speculative`
drafts from the private one). HF reads its drafting settings from the assistant's
`generation_config`: K tokens a round (`num_assistant_tokens`), a schedule ("constant", or
"heuristic": K + 2 after a round accepted whole, else K − 1) and a confidence threshold below
which the assistant stops drafting (`assistant_confidence_threshold`; 0: none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from eval.harness import PeakMemory, timed
from langchain_specsteer import SpecSteerLLM
from langchain_specsteer.engine import Prompts

__all__ = ["HF_PEER", "assistant_config", "forward_counter", "generate"]

HF_PEER = "hf_assisted"
"""The peer's name in eval.bench's tables."""
INTERNAL_NOTICE = "Passing `generation_config` together with generation-related"
"""transformers' deprecation notice that its own assistant call prints (its candidate
generator passes the assistant's `generation_config` with min/max_new_tokens beside it)."""


@contextmanager
def assistant_config(
    assistant: Any, k: int, schedule: str = "constant", confidence: float = 0.0
) -> Iterator[None]:
    """The assistant's drafting settings that HF reads, restored afterwards (so settings HF
    carries from one call to the next, the heuristic's K and the tuned threshold, start
    afresh each generation). Default: exactly K tokens a round."""
    config = assistant.generation_config
    wanted = {
        "num_assistant_tokens": k,
        "num_assistant_tokens_schedule": schedule,
        "assistant_confidence_threshold": confidence,  # ≤ 0 adds no confidence stopping
    }
    saved = {name: getattr(config, name, None) for name in wanted}
    for name, value in wanted.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


@contextmanager
def forward_counter(model: Any) -> Iterator[list[int]]:
    """Counts the forward calls of a model while the block runs: `counter[0]`."""
    counter = [0]

    def count(*_: object) -> None:
        counter[0] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        yield counter
    finally:
        handle.remove()


class _DropInternalNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return INTERNAL_NOTICE not in record.getMessage()


@contextmanager
def _without_internal_notice() -> Iterator[None]:
    """Drops `INTERNAL_NOTICE` from transformers' log while the block runs: the call that
    prints it is transformers' own, not one this module makes."""
    logger = logging.getLogger("transformers.generation.utils")
    notice = _DropInternalNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def generate(
    llm: SpecSteerLLM,
    prompts: Prompts,
    k: int,
    memory: PeakMemory,
    schedule: str = "constant",
    confidence: float = 0.0,
) -> dict[str, Any]:
    """One greedy assisted generation of the public prompt, the specialist drafting K tokens a
    round (its first K under the heuristic `schedule`; fewer past its `confidence`).

    Returns the tokens, the wall seconds of `generate` and the counts, from forward calls:
    every target forward is one round that commits n_matches + 1 tokens, and every assistant
    forward drafts one token, so accepted = new tokens − rounds.
    """
    target, assistant = llm.generalist.model, llm.specialist.model
    prompt = torch.tensor([prompts.public_generalist], device=target.device)
    eos = sorted(llm.generalist.eos_token_ids | llm.specialist.eos_token_ids)
    pad = llm.generalist.tokenizer.pad_token_id
    sync = torch.cuda.synchronize if target.device.type == "cuda" else lambda: None

    def run() -> torch.Tensor:
        output = target.generate(  # settings as arguments only: no generation_config beside
            prompt,
            attention_mask=torch.ones_like(prompt),
            assistant_model=assistant,
            do_sample=False,
            max_new_tokens=llm.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos[0] if pad is None else pad,
        )
        sync()
        return output

    with (
        assistant_config(assistant, k, schedule, confidence),
        forward_counter(target) as rounds,
        forward_counter(assistant) as drafted,
        memory,
        torch.inference_mode(),
        _without_internal_notice(),
    ):
        output, seconds = timed(run)
    tokens = output[0, prompt.shape[1] :].tolist()
    return {
        "tokens": tokens,
        "new_tokens": len(tokens),
        "seconds": seconds,
        "drafted": drafted[0],
        "accepted": len(tokens) - rounds[0],
        "generalist_calls": rounds[0],
    }
