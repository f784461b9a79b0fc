"""What both HTTP clients share: the client base, its background session release, `/tokenize`.

`HTTPGeneralist` holds the `HTTPClient` (retries, statistics) and the tokenizer; subclasses
write each conversation once, as an `Exchange`, and its blocking and asynchronous methods
perform it. A session closed by a blocking call is released in the background so that the
caller need not wait a round trip: by one daemon thread per client (`Releaser`), started with
the first release; an asynchronous close releases on the running event loop instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import weakref
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_specsteer.remote.http import (
    Exchange,
    HTTPClient,
    TransportStats,
    error_message,
    refused,
)
from langchain_specsteer.remote.stream import (
    Streamed,
    astream_completion,
    completion_body,
    stream_completion,
)
from langchain_specsteer.verification import Generalist, GeneralistError

__all__ = ["HTTPGeneralist", "Releaser", "tokenize", "wire_turn"]


def wire_turn(turn: dict) -> dict:
    """A chat turn as the OpenAI dialect sends it: a call's `arguments` as a JSON string (vLLM
    parses it back to the object a chat template expects)."""
    if not turn.get("tool_calls"):
        return turn
    calls = []
    for call in turn["tool_calls"]:
        function = call.get("function", {})
        if not isinstance(function.get("arguments"), str):
            arguments = json.dumps(function.get("arguments") or {}, ensure_ascii=False)
            call = {**call, "function": {**function, "arguments": arguments}}
        calls.append(call)
    return {**turn, "tool_calls": calls}


def tokenize(
    http: HTTPClient,
    model: str | None,
    messages: Sequence[dict],
    chat: bool | None,
    kwargs: dict | None,
) -> Exchange:
    """Token ids from the server's vLLM-style `/tokenize`: through the chat template when `chat`
    (None: when asked, if the server has one, else the turns' text as a plain prompt)."""
    base = {"model": model} if model else {}
    if chat is not False:
        kwargs = dict(kwargs or {})
        tools = kwargs.pop("tools", None)  # vLLM takes the template's tools as their own field
        body = {
            **base,
            "messages": [wire_turn(message) for message in messages],
            "add_generation_prompt": True,
            "chat_template_kwargs": kwargs,
            **({"tools": list(tools)} if tools else {}),
        }
        response = yield from http.exchange("POST", "/tokenize", body)
        if response.status_code == 200:
            return response.json()["tokens"]
        if chat or "chat template" not in error_message(response):
            raise refused(response, "tokenize")
    text = "\n\n".join(message["content"] for message in messages)
    response = yield from http.exchange("POST", "/tokenize", {**base, "prompt": text})
    if response.status_code != 200:
        raise refused(response, "tokenize")
    return response.json()["tokens"]


class Releaser:
    """Performs session releases (DELETE exchanges) in the background, in order, on one daemon
    thread started with the first release. `stop` (called once its client is collected) lets
    the thread finish what was submitted, then end."""

    def __init__(self, http: HTTPClient):
        self.http = http
        self._jobs: queue.SimpleQueue[Exchange | None] = queue.SimpleQueue()
        self._pending = 0  # releases submitted and not yet answered (or given up)
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, release: Exchange) -> None:
        """Release in the background (a failure is ignored: the service expires the session)."""
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._release_each, name="specsteer-release", daemon=True
                )
                self._thread.start()
        self._jobs.put(release)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted release was answered; False if `timeout` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self) -> None:
        """End the thread once it performed the releases submitted so far."""
        self._jobs.put(None)

    def _release_each(self) -> None:
        while (release := self._jobs.get()) is not None:
            try:
                with contextlib.suppress(GeneralistError):
                    self.http.run(release)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


class HTTPGeneralist(Generalist):
    """A generalist reached over HTTP: the client with its retries and statistics.

    Subclasses write each conversation once, as an `Exchange` (`_encode_steps`); the blocking
    and asynchronous methods perform it.
    """

    def __init__(self, base_url: str, api_key: str | None, tokenizer: Any, **http: Any):
        self.http = HTTPClient(base_url, api_key, **http)
        self.tokenizer = tokenizer
        self.releaser = Releaser(self.http)  # sessions closed by blocking calls
        weakref.finalize(self, self.releaser.stop)  # its thread holds the releaser, not this
        self._releasing: set[asyncio.Task] = set()  # ... and by asynchronous ones

    @property
    def stats(self) -> TransportStats:
        """Requests, retries, reopened sessions and bytes so far (`stats.reset()` zeroes)."""
        return self.http.stats

    @abstractmethod
    def _encode_steps(
        self, messages: Sequence[dict], chat: bool, chat_template_kwargs: dict | None
    ) -> Exchange:
        """The prompt ids of a conversation (locally with `tokenizer`, else via `/tokenize`)."""

    def encode_messages(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        return self.http.run(self._encode_steps(messages, chat, chat_template_kwargs))

    async def aencode_messages(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        return await self.http.arun(self._encode_steps(messages, chat, chat_template_kwargs))

    streams = True

    def _served_model(self) -> str:
        """The model name completions are asked for."""
        return self.name

    def stream_tokens(self, prompt: Sequence[int], **sampling: Any) -> Iterator[Streamed]:
        """The generalist's completion of `prompt`, streamed (`remote.stream`); `sampling`:
        max_tokens, temperature, top_p, seed."""
        return stream_completion(self.http, self._completion(prompt, sampling))

    def astream_tokens(self, prompt: Sequence[int], **sampling: Any) -> AsyncIterator[Streamed]:
        """`stream_tokens` on the running event loop."""
        return astream_completion(self.http, self._completion(prompt, sampling))

    def _completion(self, prompt: Sequence[int], sampling: dict[str, Any]) -> dict[str, Any]:
        return completion_body(self._served_model(), list(prompt), **sampling)

    def release(self, exchange: Exchange) -> None:
        """Release a session in the background (`wait_released` waits for it)."""
        self.releaser.submit(exchange)

    async def arelease(self, exchange: Exchange) -> None:
        """Release a session on the running event loop, as a task (`aclose` waits for it)."""

        async def delete() -> None:
            with contextlib.suppress(GeneralistError):  # else the service expires it
                await self.http.arun(exchange)

        # The client holds the task (asyncio keeps only weak references).
        task = asyncio.get_running_loop().create_task(delete())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def wait_released(self, timeout: float | None = None) -> bool:
        """Wait for sessions that blocking calls are still releasing in the background; False
        if `timeout` ran out first."""
        return self.releaser.wait(timeout)

    def close(self) -> None:
        """Wait for sessions still being released, then close the blocking HTTP connections
        (the generalist stays usable: they reopen)."""
        self.wait_released()
        self.http.close()

    async def aclose(self) -> None:
        """Wait for sessions still being released, then close the running event loop's
        connections (they reopen on demand). Without it, a loop that ends at once leaves its
        last sessions to the service's idle expiry."""
        loop = asyncio.get_running_loop()
        pending = [t for t in self._releasing if t.get_loop() is loop]
        await asyncio.gather(*pending, return_exceptions=True)
        await self.http.aclose()
