"""The verifier service's session protocol, `specsteer/1`: request and response bodies.

Shared by the service (`service.py`) and its client (`RemoteGeneralist`); docs/protocol.md
explains it with examples. A generation is a **session** that holds the generalist's KV cache
(and a public specialist's, when the service hosts one). Each **round** the device sends the
tokens it committed since its last round (normally one: the recovered token), the number of
the session's tokens it keeps, and the new draft. The service answers the accepted count and
a sparse **hint** at the first rejected position. Nothing in either direction is derived from
the private context: the device sends public prompt ids, generated tokens and drafts only.

Log-probabilities are JSON numbers; `null` stands for −inf (probability zero).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MIN_TEMPERATURE",
    "PROTOCOL",
    "Candidates",
    "ErrorBody",
    "ErrorDetail",
    "Limits",
    "OpenSession",
    "RoundRequest",
    "RoundResult",
    "ServiceInfo",
    "SessionOpened",
]

PROTOCOL = "specsteer/1"
"""Bumped on any incompatible change; the client refuses a service that speaks another."""

MIN_TEMPERATURE = 1e-4
"""The smallest temperature above 0 that is accepted anywhere (0 decodes greedily): at smaller
ones the tempered log-probabilities overflow float32 and sampling breaks."""

TokenId = Annotated[int, Field(ge=0, strict=True)]
LogProb = float | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Body):
    """What one service accepts; larger requests get 4xx with the limit named."""

    max_prompt_tokens: int
    max_session_tokens: int
    max_draft_tokens: int
    max_top_m: int
    max_sessions: int
    session_idle_seconds: float
    max_body_bytes: int


class ServiceInfo(_Body):
    """`GET /specsteer/v1/info`: what the service hosts."""

    protocol: str = PROTOCOL
    model: str
    vocab_size: int
    """Width of the generalist's output layer."""
    vocab_signature: str
    """`verification.vocab_signature` of the generalist's tokenizer."""
    eos_token_ids: list[int]
    chat_template: bool
    """Whether the generalist's tokenizer has a chat template (`/tokenize` with `messages`)."""
    public_specialist: str | None
    """Name of the hosted public specialist (q_gen computed in the cloud), or null."""
    public_specialist_vocab_signature: str | None
    limits: Limits


class OpenSession(_Body):
    """`POST /specsteer/v1/sessions`: start a generation after public prompts."""

    prompt_ids: list[TokenId] = Field(min_length=1)
    """The generalist's prompt (the public request in its chat template)."""
    q_gen_prompt_ids: list[TokenId] | None = Field(default=None, min_length=1)
    """The specialist's public prompt, for q_gen; ignored without a hosted public specialist."""
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Rows are tempered at this temperature before ranking and the ratio test (0, 1: raw);
    0 or at least `MIN_TEMPERATURE` (1e-4)."""
    top_m: int = Field(default=20, ge=1)
    """Hint size: candidates per position, ranked by log p_G."""
    vocab_size: int | None = Field(default=None, ge=1)
    """Rows cover token ids below this (the device's shared width); null: the model's width."""

    @field_validator("temperature")
    @classmethod
    def temperature_is_usable(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            msg = (
                f"temperature {value} is too small to temper with: send 0 (raw rows) or at "
                f"least {MIN_TEMPERATURE}"
            )
            raise ValueError(msg)
        return value


class SessionOpened(_Body):
    session_id: str
    hosts_q_gen: bool
    """Whether rounds decide the ratio test and carry q_gen (a public specialist is hosted and
    `q_gen_prompt_ids` was given)."""
    idle_seconds: float
    """The session is dropped after this long without a request (then 404: reopen)."""


class RoundRequest(_Body):
    """`POST /specsteer/v1/sessions/{id}/rounds`: verify one draft.

    The session's generated tokens become `generated[:position] + append + draft`, so a
    retried request gives the same answer, and a rejected draft needs no extra call.
    """

    position: int = Field(ge=0)
    """Generated tokens of the session to keep (the device's committed count before `append`)."""
    append: list[TokenId] = Field(default_factory=list)
    """Committed tokens the session has not seen (normally the last round's recovered token;
    everything generated so far after a reopen)."""
    draft: list[TokenId] = Field(default_factory=list)
    """The specialist's draft."""
    rule: Literal["none", "ratio", "match", "device"] = "ratio"
    """"ratio": accept while p_G/q_gen ≥ γ (needs a hosted public specialist, else as
    "device"); "match": accept while d_i = argmax p_G; "none": verify nothing; "device": the
    device decides, so every position gets a hint and the draft's values."""
    gamma: float | None = Field(default=0.5, ge=0, allow_inf_nan=False)
    """γ of the ratio test; null is ∞ (accept nothing)."""
    uniforms: list[Annotated[float, Field(ge=0, le=1)]] | None = None
    """Sampling mode: the device's uniform draws, one per draft token (accept d_i iff
    u_i < p_G(d_i) / (γ q_gen(d_i))); null: greedy."""


class Candidates(_Body):
    """The top-m tokens at one position, ranked by log p_G (a hint)."""

    position: int
    """0..k: before draft token position+1; k is the position after the draft."""
    token_ids: list[int]
    log_p_G: list[LogProb]
    log_q_gen: list[LogProb] | None = None


class RoundResult(_Body):
    accepted: int | None
    """Leading drafts accepted; null when the device decides ("device", or "ratio" without
    a hosted public specialist)."""
    hints: list[Candidates]
    """One hint at position `accepted` when decided, else one per position 0..k."""
    draft_log_p_G: list[LogProb] | None = None
    """When the device decides: log p_G of each draft token."""
    draft_log_q_gen: list[LogProb] | None = None
    """When the device decides and q_gen is hosted: log q_gen of each draft token."""
    length: int
    """Generated tokens the session now holds (position + len(append) + len(draft))."""


class ErrorDetail(_Body):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(_Body):
    """Every 4xx/5xx answer: OpenAI's error shape."""

    error: ErrorDetail
