"""The verifier service's session protocols, `specsteer/1` and `specsteer/2`: bodies, limits,
errors and codec.

Shared by the service (`server/`) and its clients (`remote/`);
docs/protocol.md explains it with examples. A generation is a **session** that holds the
generalist's KV cache (and a public specialist's, when the service hosts one). Each
**round** the device sends the tokens it committed since its last round (normally one: the
recovered token), the number of the session's tokens it keeps, and the new draft. The
service answers the accepted count and a sparse **hint** at the first rejected position.
Nothing in either direction is derived from the private context: the device sends public
prompt ids, generated tokens and drafts only.

`specsteer/2` (under /specsteer/v2) adds rounds in flight and opens nothing before the first
round: the device names its session, its first rounds carry the opening (`OpenSessionV2`,
the public prompt as ids or as turns the service renders, and the vocabulary the device
expects), and every round carries its number `seq`: the service verifies a session's rounds
in that order, whatever order they arrive in, and answers a retried number again from
memory. A round sent ahead of a verdict is `speculative`: the service voids it without work
when the round before it did not accept its whole draft. `specsteer/1` still answers as it
did.

Log-probabilities are JSON numbers; `null` stands for −inf (probability zero)
(`logprobs_to_json`, `logprobs_from_json`). The OpenAI-compatible dialect (vLLM's
`/v1/completions`) writes −inf as −9999.0 instead (`vllm_logprob`, `logprobs_from_vllm`).
Every refusal is OpenAI's error body (`ErrorBody`, `ServiceError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "API_KEY_ENV",
    "ERROR_TYPES",
    "MIN_TEMPERATURE",
    "PROTOCOL",
    "PROTOCOL_V2",
    "SESSION_BUSY",
    "SESSION_ID_PATTERN",
    "VLLM_NEG_INF",
    "Candidates",
    "ErrorBody",
    "ErrorDetail",
    "Limits",
    "OpenSession",
    "OpenSessionV2",
    "PublicPrompt",
    "RoundRequest",
    "RoundRequestV2",
    "RoundResult",
    "RoundResultV2",
    "ServiceError",
    "ServiceInfo",
    "ServiceInfoV2",
    "ServiceLimits",
    "SessionOpened",
    "check_temperature",
    "error_body",
    "logprobs_from_json",
    "logprobs_from_vllm",
    "logprobs_to_json",
    "vllm_logprob",
]

PROTOCOL = "specsteer/1"
"""Bumped on any incompatible change; the client refuses a service that speaks another."""

PROTOCOL_V2 = "specsteer/2"
"""Rounds in flight and the opening folded into the first round (/specsteer/v2)."""

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
"""A `specsteer/2` session id, chosen by the device (16 random bytes, URL-safe base64)."""

MIN_TEMPERATURE = 1e-4
"""The smallest temperature above 0 that is accepted anywhere (0 decodes greedily): at smaller
ones the tempered log-probabilities overflow float32 and sampling breaks."""

API_KEY_ENV = "SPECSTEER_API_KEY"
"""The environment variable holding the API key: `specsteer serve`'s and the clients' default."""

SESSION_BUSY = "session_busy"
"""Error type of a 409 for a session still serving an earlier request (clients retry it)."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "request_timeout",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
"""Error type by HTTP status (OpenAI's names); any other status is a "server_error"."""

VLLM_NEG_INF = -9999.0
"""vLLM's stand-in for a log-probability of −inf in the OpenAI-compatible dialect."""

TokenId = Annotated[int, Field(ge=0, strict=True)]
LogProb = float | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Body):
    """What one service accepts; larger requests get 4xx with the limit named."""

    # The advertised part of `ServiceLimits` (`ServiceLimits.advertised`), which says what
    # each field means.
    max_prompt_tokens: int
    max_session_tokens: int
    max_draft_tokens: int
    max_top_m: int
    max_sessions: int
    session_idle_seconds: float
    max_body_bytes: int


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on what one service accepts and holds (`Limits` advertises those a client needs).

    Attributes:
        max_prompt_tokens: longest prompt (session open, completions, tokenize); a service
            lowers it to its models' maximum length (`max_position_embeddings`).
        max_session_tokens: longest prompt + generated + draft in one session; lowered to the
            models' maximum length too.
        max_draft_tokens: longest draft per round.
        max_top_m: largest hint per position.
        max_logprobs: largest `logprobs` / `prompt_logprobs` on /v1/completions (vLLM: 20).
        max_sessions: sessions held at once; the least recently used idle one makes room.
        session_idle_seconds: a session without requests this long is dropped.
        max_body_bytes: largest request body.
        max_body_chunks: most chunks in a chunked request body (the HTTP server parses each
            one; see `server.bounded_h11`).
        body_timeout_seconds: a request body must arrive within this long (else 408).
        max_completion_tokens: the most tokens one `/v1/completions` request generates.
        max_rounds_in_flight: `specsteer/2` rounds of one session waiting their turn at once
            (a client sends at most this many before a verdict).
        round_wait_seconds: how long a `specsteer/2` round waits for the rounds numbered
            before it to arrive (then 409 `out_of_order`).
    """

    max_prompt_tokens: int = 8192
    max_session_tokens: int = 16384
    max_draft_tokens: int = 64
    max_top_m: int = 1024
    max_logprobs: int = 20
    max_sessions: int = 256
    session_idle_seconds: float = 300.0
    max_body_bytes: int = 1 << 20
    max_body_chunks: int = 1024
    body_timeout_seconds: float = 30.0
    max_completion_tokens: int = 4096
    max_rounds_in_flight: int = 8
    round_wait_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                msg = f"ServiceLimits.{name} must be positive, got {value!r}"
                raise ValueError(msg)

    def advertised(self) -> Limits:
        """The limits `ServiceInfo` tells clients."""
        return Limits(**{name: getattr(self, name) for name in Limits.model_fields})


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


class ServiceInfoV2(ServiceInfo):
    """`GET /specsteer/v2/info`: `ServiceInfo` for `specsteer/2` clients."""

    protocol: str = PROTOCOL_V2
    max_rounds_in_flight: int
    """Rounds of one session the service takes before it has answered the first."""


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
        return check_temperature(value)


class PublicPrompt(_Body):
    """A public prompt as turns, for the service to render with its generalist's chat
    template (what vLLM's `/tokenize` does), or as plain text."""

    messages: list[dict[str, Any]] | None = None
    """Chat turns, rendered with the chat template and a generation prompt."""
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    """Tools the chat template lists."""
    prompt: str | None = None
    """Plain text, encoded as it is (no chat template)."""
    then_ids: list[TokenId] = Field(default_factory=list)
    """Token ids after the rendered prompt (a forced start of the reply)."""


class OpenSessionV2(OpenSession):
    """How a `specsteer/2` session starts: carried by its first rounds (any of them may
    arrive first; the first to arrive opens it, the others find it open)."""

    prompt_ids: list[TokenId] | None = Field(default=None, min_length=1)  # type: ignore[assignment]
    """The generalist's prompt as ids; or give `public_prompt`."""
    public_prompt: PublicPrompt | None = None
    """The generalist's prompt as turns (or text) the service renders: no `/tokenize` before."""
    vocab_signature: str | None = None
    """The generalist vocabulary the device expects (`verification.vocab_signature`): a
    service whose generalist has another refuses the session (409 `vocab_mismatch`)."""


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


class RoundRequestV2(RoundRequest):
    """`POST /specsteer/v2/sessions/{id}/rounds`: verify one draft, rounds in flight allowed.

    As `RoundRequest`, plus the round's number: the session's generated tokens become
    `generated[:position] + append + draft` once every round numbered before it was served.
    """

    seq: int = Field(ge=0)
    """The round's number in the session (0, 1, 2, ...): the service serves them in order."""
    open: OpenSessionV2 | None = None
    """The session's opening, on every round sent before the device has an answer."""
    speculative: bool = False
    """Sent before the verdict on round `seq` − 1, on all its drafts being accepted: void (no
    work, `voided` true) when that round accepted fewer, or was void itself."""


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


class RoundResultV2(RoundResult):
    seq: int
    """The round's number, as sent."""
    voided: bool = False
    """The service voided the round (`speculative`, and the round before it rejected a
    draft): no hints, nothing changed in the session."""
    hosts_q_gen: bool
    """Whether the session decides the ratio test and carries q_gen (as `SessionOpened`)."""
    prompt_tokens: int
    """The generalist's prompt length (rendered here when the opening gave turns)."""
    verify_seconds: float | None = None
    """How long the service worked on the round (its forward passes and the test); null for a
    voided round. The device weighs rounds in flight with it (`algorithms.send_ahead`)."""


class ErrorDetail(_Body):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(_Body):
    """Every 4xx/5xx answer: OpenAI's error shape."""

    error: ErrorDetail


def check_temperature(value: float) -> float:
    """`value` if it is 0 or at least `MIN_TEMPERATURE`, else a clear error: tempering by less
    overflows float32 (every choice would become inf/nan)."""
    if 0 < value < MIN_TEMPERATURE:
        msg = (
            f"temperature {value!r} is too small to sample at: use 0 (greedy decoding, raw "
            f"rows) or at least {MIN_TEMPERATURE}"
        )
        raise ValueError(msg)
    return value


def error_body(status: int, message: str, type: str, param: str | None = None) -> dict:
    """An `ErrorBody` as JSON data."""
    detail = ErrorDetail(message=message, type=type, param=param, code=status)
    return ErrorBody(error=detail).model_dump()


class ServiceError(Exception):
    """A request the service refuses: HTTP `status` with a reason (and the field, if one)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, type: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self._type = type

    @property
    def type(self) -> str:
        """The error type given, else the status's (`ERROR_TYPES`)."""
        return self._type or ERROR_TYPES.get(self.status, "server_error")

    def body(self) -> dict:
        """This refusal as an `ErrorBody`'s JSON data."""
        return error_body(self.status, self.message, self.type, self.param)


# ---- codec: log-probabilities in JSON ---------------------------------------------------


def logprobs_to_json(values: torch.Tensor) -> list[float | None]:
    """Log-probs for this protocol's bodies: −inf (probability zero) as null."""
    return [None if v == -math.inf else v for v in values.tolist()]


def logprobs_from_json(values: Sequence[float | None]) -> torch.Tensor:
    """Log-probs from this protocol's bodies: null is −inf; every number stands as it is
    (tempered values fall below −9999 at low temperatures)."""
    return torch.tensor([-math.inf if v is None else float(v) for v in values], dtype=torch.float32)


def vllm_logprob(value: Any) -> float:
    """A log-prob for the OpenAI-compatible dialect: −inf as vLLM's −9999.0."""
    v = float(value)
    return VLLM_NEG_INF if v == -math.inf else v


def logprobs_from_vllm(values: Sequence[float | None]) -> torch.Tensor:
    """Log-probs from the OpenAI-compatible dialect: null and vLLM's −9999.0 (or less) are
    −inf."""
    return torch.tensor(
        [-math.inf if v is None or v <= VLLM_NEG_INF else float(v) for v in values],
        dtype=torch.float32,
    )
