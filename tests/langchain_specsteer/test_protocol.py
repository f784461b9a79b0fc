"""The wire's one codec, constants, error body and limits, shared by the service and clients."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

from langchain_specsteer import protocol
from langchain_specsteer.protocol import (
    ERROR_TYPES,
    SESSION_BUSY,
    VLLM_NEG_INF,
    Limits,
    ServiceError,
    ServiceLimits,
    logprobs_from_json,
    logprobs_from_vllm,
    logprobs_to_json,
    vllm_logprob,
)

INF = math.inf


def test_our_protocol_writes_minus_infinity_as_null_and_reads_it_back():
    values = torch.tensor([-0.5, -INF, -12000.0, 0.0])
    sent = logprobs_to_json(values)
    assert sent == [-0.5, None, -12000.0, 0.0]
    assert torch.equal(logprobs_from_json(sent), values)


def test_only_the_openai_dialect_reads_minus_9999_as_minus_infinity():
    """vLLM writes −inf as −9999.0; our protocol sends tempered values, which may be lower and
    must stay finite (a hint of finite values is not a hint of impossible tokens)."""
    received = [-1.0, None, VLLM_NEG_INF, -12000.0]
    assert logprobs_from_json(received).tolist() == [-1.0, -INF, -9999.0, -12000.0]
    assert logprobs_from_vllm(received).tolist() == [-1.0, -INF, -INF, -INF]
    assert vllm_logprob(torch.tensor(-INF)) == VLLM_NEG_INF == -9999.0
    assert vllm_logprob(torch.tensor(-2.5)) == -2.5


def test_a_refusal_is_openais_error_body():
    busy = ServiceError(409, "send one at a time", type=SESSION_BUSY)
    assert busy.body() == {
        "error": {
            "message": "send one at a time",
            "type": "session_busy",
            "param": None,
            "code": 409,
        }
    }
    assert ServiceError(413, "too long", param="draft").body()["error"] == {
        "message": "too long",
        "type": "request_too_large",
        "param": "draft",
        "code": 413,
    }
    assert ServiceError(400, "bad").type == ERROR_TYPES[400] == "invalid_request_error"
    assert ServiceError(503, "down").type == "server_error"


def test_the_advertised_limits_are_the_service_limits_of_the_same_name_and_type():
    """`Limits` (on the wire) is a part of `ServiceLimits` (the service's), not a copy."""
    hints = typing.get_type_hints(ServiceLimits, vars(protocol))
    for name, field in Limits.model_fields.items():
        assert hints[name] is field.annotation, name
    limits = ServiceLimits(max_draft_tokens=3, max_logprobs=7)
    advertised = limits.advertised()
    assert advertised.model_dump() == {name: getattr(limits, name) for name in Limits.model_fields}
    assert advertised.max_draft_tokens == 3
    assert "max_logprobs" not in advertised.model_dump()  # the service's own, not a client's


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ServiceLimits)])
def test_every_service_limit_must_be_positive(field):
    with pytest.raises(ValueError, match=f"ServiceLimits.{field} must be positive"):
        ServiceLimits(**{field: 0})
