"""Decoding parameters shared by every LangChain surface and the engine, validated once."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from langchain_specsteer import algorithms as alg
from langchain_specsteer.methods import METHODS
from langchain_specsteer.protocol import MIN_TEMPERATURE, check_temperature
from retrievers.templates import DEFAULT_CONTEXT_TEMPLATE, template_fields

__all__ = [
    "DEFAULT_CONTEXT_TEMPLATE",
    "MAX_COSTEER_COEFFICIENT",
    "METHODS",
    "MIN_TEMPERATURE",
    "DecodingParams",
    "MethodName",
    "check_draft_tokens",
]

MethodName = Literal[METHODS]
"""A method's name: one of `methods.METHODS`, the rows of `methods.METHOD_SPECS`."""

MAX_COSTEER_COEFFICIENT = 1e8
"""The largest |c_t| CoSteer's knobs may give the coefficient of the specialist's delta
(`algorithms.costeer_coefficient`); far past it the steered scores overflow float32 (and at it
the policy is already the argmax of delta)."""

COSTEER_BOUND = 1e6
"""|costeer_a|, |costeer_b| and costeer_lambda at most this, costeer_eta at least its inverse,
so CoSteer's float32 iteration stays finite."""

SEED_RANGE = (-(2**63), 2**64)
"""Seeds torch's generators accept: [-2**63, 2**64)."""


class DecodingParams(BaseModel):
    """How one text is decoded: the method and its knobs (docs/design.md §1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: MethodName = "specsteer"
    """Decoding method: specsteer, or a baseline (`methods.METHOD_SPECS` describes each)."""
    gamma: float = Field(default=0.5, ge=0)
    """Verification gate γ: accept drafts while p_G/q_gen ≥ γ (larger is stricter; inf: none)."""
    alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """Steering strength α: weight of log q_ctx − log q_gen in recovery."""
    draft_tokens: int | Literal["auto"] = 6
    """K: tokens the specialist drafts per round (6: fastest-quality trade-off measured on the
    demo pair, docs/results.md; sweep it with `python -m eval.bench` for your pair), or
    "auto": the device chooses each round's length, at most `max_draft_tokens`
    (`algorithms.keep_drafting`, docs/concepts.md). A verifier service (`RemoteGeneralist`)
    takes at most its `max_draft_tokens` per round: a larger K (or `max_draft_tokens` under
    "auto") is clamped to that limit, and `generation_info["draft_tokens_clamped_to"]`
    reports it."""
    max_draft_tokens: int = Field(default=16, ge=1)
    """With `draft_tokens="auto"`: the longest draft of a round."""
    draft_stop: float | None = Field(default=0.1, ge=0, le=1)
    """With `draft_tokens="auto"`: stop drafting once the device's estimate that the whole
    draft is accepted falls below this (about c_S / c_G, a specialist step's cost over a
    generalist step's: 0.1 on the demo pair's CPU; lower it where verifying is dearer). None:
    no threshold; the round's cost, measured as the run goes (the round trip, the
    verification and the device's steps), says when one more draft stops paying
    (`algorithms.worth_drafting`, docs/concepts.md)."""
    rounds_in_flight: int | Literal["auto"] = "auto"
    """Over a network generalist that takes them: how many rounds may be verified at once
    while the device drafts on (docs/concepts.md). "auto": up to what the session takes
    (`max_in_flight`), each sent while the measured round trip and the drafts' confidence say
    it pays (`algorithms.send_ahead`); an integer N: always N (at most the session's limit);
    1: one round at a time. In-process generalists verify one round at a time whatever this
    says. With one draft length, or drafts sized by confidence (`draft_stop` set), the text
    is the same either way; drafts sized by measured cost depend on timing."""
    gate: Literal["fixed", "context"] = "fixed"
    """The ratio test's gate per draft position: "fixed" uses γ everywhere; "context"
    (AsymSpec) uses γ · exp(−JSD(q_ctx, q_gen)), looser where the private context moved the
    specialist. "context" is decided on the device (it reads q_ctx), which therefore computes
    q_gen itself."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens to generate."""
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """0 decodes greedily; otherwise at least `MIN_TEMPERATURE` (1e-4), sampling every choice
    at this temperature."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling mass for drafts and recoveries (sampling mode only); the most likely
    token is always kept."""
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], lt=SEED_RANGE[1])
    """Seed of the sampling RNG (an integer in [-2**63, 2**64), torch's range); the same seed
    reproduces the same text."""
    byte_recovery: Literal["byte", "token"] = "byte"
    """Byte-level path only (different tokenizers): "byte" fuses the two models' next-byte
    distributions one byte at a time until the generalist's token ends; "token" scores the
    generalist's top tokens by the specialist's mass on their bytes (then α = 0 is exactly
    the generalist). docs/bytelevel.md compares them."""
    on_generalist_error: Literal["fallback", "raise"] = "fallback"
    """When the generalist stays unreachable (after the client's retries): "fallback" finishes
    the text with the specialist alone and reports `degraded` in the statistics; "raise"
    raises `GeneralistError`. Tokens already generated are kept either way."""
    costeer_steps: int = Field(default=20, ge=1, le=10_000)
    """CoSteer: iterations T of the fusion per token."""
    costeer_a: float = Field(default=2.0, ge=-COSTEER_BOUND, le=COSTEER_BOUND, allow_inf_nan=False)
    """CoSteer: weight a of the policy drift in Q_t (|a| ≤ 1e6)."""
    costeer_b: float = Field(default=1.0, ge=-COSTEER_BOUND, le=COSTEER_BOUND, allow_inf_nan=False)
    """CoSteer: weight b of the specialist's delta in Q_t (|b| ≤ 1e6)."""
    costeer_lambda: float = Field(default=2.0, gt=0, le=COSTEER_BOUND, allow_inf_nan=False)
    """CoSteer: pull λ towards the generalist's policy (at most 1e6)."""
    costeer_eta: float = Field(default=10.0, ge=1 / COSTEER_BOUND, allow_inf_nan=False)
    """CoSteer: step size η (at least 1e-6). Together the CoSteer knobs must keep the
    coefficient c_t of the specialist's delta within ±`MAX_COSTEER_COEFFICIENT` (1e8)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def recovery(self) -> alg.RecoveryParams:
        """The knobs the recoveries read, taken from these fields."""
        names = alg.RecoveryParams.__dataclass_fields__
        return alg.RecoveryParams(**{name: getattr(self, name) for name in names})

    @field_validator("draft_tokens", mode="before")
    @classmethod
    def _check_draft_tokens(cls, value: object) -> object:
        return check_draft_tokens(value)

    @field_validator("rounds_in_flight", mode="before")
    @classmethod
    def _check_rounds_in_flight(cls, value: object) -> object:
        if value == "auto":
            return value
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = (
                "rounds_in_flight must be an integer greater than or equal to 1 (1: one round "
                f"at a time) or 'auto' (the device chooses), got {value!r}"
            )
            raise ValueError(msg)
        return value

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, value: float) -> float:
        return check_temperature(value)

    @model_validator(mode="after")
    def _check_costeer(self) -> DecodingParams:
        peak = costeer_peak(
            steps=self.costeer_steps,
            a=self.costeer_a,
            b=self.costeer_b,
            lam=self.costeer_lambda,
            eta=self.costeer_eta,
        )
        if not peak <= MAX_COSTEER_COEFFICIENT:
            msg = (
                f"costeer_a={self.costeer_a}, costeer_b={self.costeer_b}, "
                f"costeer_lambda={self.costeer_lambda}, costeer_eta={self.costeer_eta} and "
                f"costeer_steps={self.costeer_steps} scale the specialist's delta by up to "
                f"{peak:.3g}, past {MAX_COSTEER_COEFFICIENT:g} (CoSteer's scores would overflow); "
                "lower costeer_a or costeer_b, or raise costeer_lambda"
            )
            raise ValueError(msg)
        return self


def check_draft_tokens(value: object) -> int | str:
    """`draft_tokens` as given: an integer ≥ 1 (or its digits, as a command line gives it) or
    "auto"; anything else raises ValueError naming the field."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # as pydantic's lax mode reads "6"
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = (
            "draft_tokens must be an integer greater than or equal to 1 (tokens drafted "
            f"per round) or 'auto' (the device chooses, up to max_draft_tokens), got {value!r}"
        )
        raise ValueError(msg)
    return value


def costeer_peak(*, steps: int, a: float, b: float, lam: float, eta: float) -> float:
    """The largest |c_t|, t ≤ steps, of CoSteer's coefficient on delta
    (`algorithms.costeer_coefficients`); inf when it overflows."""
    peak = 0.0
    for c in alg.costeer_coefficients(steps=steps, a=a, b=b, lam=lam, eta=eta):
        peak = max(peak, abs(c)) if math.isfinite(c) else math.inf
        if peak > MAX_COSTEER_COEFFICIENT:
            break
    return peak


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
