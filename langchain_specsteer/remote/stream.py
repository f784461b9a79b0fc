"""A streamed completion: the generalist alone writes the whole text in one request.

`method="generalist"` over a remote generalist is vLLM's `/v1/completions` with `stream`
(server-sent events), which vLLM and our service (`server/openai.py`) both answer: one round
trip and the generalist's own decoding, its tokens committed as they arrive. This is the
baseline "the cloud alone" that SpecSteer over the network is measured against
(eval/bench_network.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from langchain_specsteer.remote.http import HTTPClient, error_message
from langchain_specsteer.verification import GeneralistError, GeneralistUnreachable

__all__ = ["Streamed", "astream_completion", "completion_body", "stream_completion"]


@dataclass
class Streamed:
    """One event of a streamed completion: its token ids, and why it ended (on the last)."""

    tokens: list[int]
    finish_reason: str | None = None


def completion_body(
    model: str,
    prompt: list[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """The `/v1/completions` body that streams `max_tokens` new tokens after `prompt`, each
    event naming its tokens by id (`return_tokens_as_token_ids`)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    if top_p < 1:
        body["top_p"] = top_p
    if seed is not None:
        body["seed"] = seed % 2**63  # vLLM's seeds are signed 64-bit
    return body


def stream_completion(http: HTTPClient, body: dict[str, Any]) -> Iterator[Streamed]:
    """The events of a streamed completion, with the blocking client (its connection is
    released when the iterator is closed or ends)."""
    content = json.dumps(body, separators=(",", ":")).encode()
    start = time.perf_counter()
    try:
        with http.client.stream("POST", "/v1/completions", content=content, headers=_JSON) as r:
            _check(r, r.read() if r.status_code != 200 else b"")
            for line in r.iter_lines():
                if (event := _event(line, http)) is not None:
                    yield event
    except http.httpx.TransportError as err:
        raise _lost(http, err) from err
    finally:
        _count(http, content, start)


async def astream_completion(http: HTTPClient, body: dict[str, Any]) -> AsyncIterator[Streamed]:
    """`stream_completion` with the event loop's asynchronous client."""
    content = json.dumps(body, separators=(",", ":")).encode()
    start = time.perf_counter()
    try:
        async with http.aclient.stream(
            "POST", "/v1/completions", content=content, headers=_JSON
        ) as r:
            _check(r, await r.aread() if r.status_code != 200 else b"")
            async for line in r.aiter_lines():
                if (event := _event(line, http)) is not None:
                    yield event
    except http.httpx.TransportError as err:
        raise _lost(http, err) from err
    finally:
        _count(http, content, start)


_JSON = {"content-type": "application/json"}


def _check(response: Any, body: bytes) -> None:
    """A refused stream: GeneralistError with the server's reason."""
    if response.status_code != 200:
        msg = f"streaming a completion: HTTP {response.status_code}: {error_message(response)}"
        raise GeneralistError(msg)


def _event(line: str, http: HTTPClient) -> Streamed | None:
    """One server-sent event's tokens (None: not a data line, or the end)."""
    http.stats.body_bytes_received += len(line) + 1
    if not line.startswith("data:"):
        return None
    data = line.removeprefix("data:").strip()
    if data == "[DONE]":
        return None
    try:
        (choice,) = json.loads(data)["choices"]
        names = (choice.get("logprobs") or {}).get("tokens") or []
        tokens = [int(name.removeprefix("token_id:")) for name in names]
    except (KeyError, TypeError, ValueError) as err:
        msg = f"unexpected event in a streamed completion from {http.base_url}: {data[:200]!r}"
        raise GeneralistError(msg) from err
    return Streamed(tokens, choice.get("finish_reason"))


def _lost(http: HTTPClient, err: Exception) -> GeneralistError:
    return GeneralistUnreachable(f"streaming a completion from {http.base_url}: {err!r}")


def _count(http: HTTPClient, content: bytes, start: float) -> None:
    stats = http.stats
    stats.requests += 1
    stats.body_bytes_sent += len(content) + len("/v1/completions")
    stats.seconds += time.perf_counter() - start
