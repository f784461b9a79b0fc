"""Decoding parameters shared by every LangChain surface and the engine, validated once."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_CONTEXT_TEMPLATE", "METHODS", "DecodingParams", "MethodName"]

MethodName = Literal[
    "specsteer", "generalist", "specialist", "speculative", "light_costeer", "costeer"
]
METHODS: tuple[str, ...] = MethodName.__args__

DEFAULT_CONTEXT_TEMPLATE = "Here is what we know about the user:\n{context}\n\n{prompt}"


class DecodingParams(BaseModel):
    """How one text is decoded: the method and its knobs (DESIGN.md §1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: MethodName = "specsteer"
    """Decoding method: specsteer, or a baseline (generalist, specialist, speculative,
    light_costeer, costeer)."""
    gamma: float = Field(default=0.5, ge=0)
    """Verification gate γ: accept drafts while p_G/q_gen ≥ γ (larger is stricter; inf: none)."""
    alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """Steering strength α: weight of log q_ctx − log q_gen in recovery."""
    draft_tokens: int = Field(default=6, ge=1)
    """K: tokens the specialist drafts per round (6: fastest-quality trade-off measured on the
    demo pair, docs/results.md; sweep it with `python -m eval.bench` for your pair)."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens to generate."""
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """0 decodes greedily; > 0 samples every choice at this temperature."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling mass for drafts and recoveries (sampling mode only)."""
    seed: int | None = None
    """Seed of the sampling RNG; the same seed reproduces the same text."""
    byte_recovery: Literal["byte", "token"] = "byte"
    """Byte-level path only (different tokenizers): "byte" fuses the two models' next-byte
    distributions one byte at a time until the generalist's token ends; "token" scores the
    generalist's top tokens by the specialist's mass on their bytes (then α = 0 is exactly
    the generalist). docs/bytelevel.md compares them."""
    on_generalist_error: Literal["fallback", "raise"] = "fallback"
    """When the generalist stays unreachable (after the client's retries): "fallback" finishes
    the text with the specialist alone and reports `degraded` in the statistics; "raise"
    raises `GeneralistError`. Tokens already generated are kept either way."""
    costeer_steps: int = Field(default=20, ge=1)
    """CoSteer: iterations T of the fusion per token."""
    costeer_a: float = Field(default=2.0, allow_inf_nan=False)
    """CoSteer: weight a of the policy drift in Q_t."""
    costeer_b: float = Field(default=1.0, allow_inf_nan=False)
    """CoSteer: weight b of the specialist's delta in Q_t."""
    costeer_lambda: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    """CoSteer: pull λ towards the generalist's policy."""
    costeer_eta: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """CoSteer: step size η."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def template_fields(template: str) -> set[str]:
    """The named fields of a format string; a clear error for positional or broken ones."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        msg = f"not a valid format string: {template!r} ({err})"
        raise ValueError(msg) from err
    if any(not name or name.isdigit() for name in names):
        msg = f"format string {template!r} has a positional field; name every field"
        raise ValueError(msg)
    return set(names)


def check_context_template(template: str) -> str:
    """Validate a template with exactly the fields {context} and {prompt}."""
    fields = template_fields(template)
    if fields != {"context", "prompt"}:
        msg = (
            "context_template must contain exactly the fields {context} and {prompt}, "
            f"found {sorted(fields)}"
        )
        raise ValueError(msg)
    return template
