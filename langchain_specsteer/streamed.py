"""`method="generalist"` as one streamed completion, where the generalist streams.

Over the network the generalist alone is best served as vLLM serves it: one request, its
tokens streamed back as it decodes (`Generalist.stream_tokens`), not one request a token. A
`StreamedRun` commits each event's tokens as a `Round`. If the stream breaks, the specialist
finishes from the committed tokens (`on_generalist_error="fallback"`), as every run does. In
greedy decoding the text is the in-process generalist's; sampled, the server draws (seeded by
`seed`), so the text is the server's own sample.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from langchain_specsteer.run import DecodeStats, Prompts, Round, Run
from langchain_specsteer.verification import Generalist, GeneralistError, PromptTurns

if TYPE_CHECKING:
    from langchain_specsteer.params import DecodingParams
    from langchain_specsteer.remote.stream import Streamed

__all__ = ["StreamedRun"]


class StreamedRun:
    """The generalist's completion of the public prompt, streamed; `for` or `async for`
    yields a `Round` per event, and `stats` fill in as it goes.

    Args:
        generalist: a generalist whose `streams` is true.
        prompts: the run's prompts (the generalist's as ids, or turns it renders).
        params: the decoding parameters (method "generalist").
        spell: the bytes of generalist tokens (the byte-level path), else None.
        fallback: the specialist's run after these committed tokens (or bytes), for the
            rest of the budget, should the stream break.
    """

    def __init__(
        self,
        generalist: Generalist,
        prompts: Prompts,
        params: DecodingParams,
        *,
        spell: Callable[[list[int]], bytes] | None,
        fallback: Callable[[list[int], bytes, DecodingParams], Run],
    ):
        self.generalist = generalist
        self.prompts = prompts
        self.params = params
        self.spell = spell
        self.fallback = fallback
        self.stats = DecodeStats(method=params.method)
        self.committed: list[int] = []
        self.text = bytearray()
        self.watchers: list = []

    def _body(self) -> dict:
        p = self.params
        return {
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed,
        }

    def _prompt(self, prompt: list[int] | PromptTurns) -> list[int]:
        """The generalist's prompt as ids (turns are encoded first: one request more)."""
        if isinstance(prompt, PromptTurns):
            ids = self.generalist.encode_messages(
                list(prompt.messages),
                chat=prompt.chat,
                chat_template_kwargs=prompt.chat_template_kwargs,
            )
            return [*ids, *prompt.then]
        return list(prompt)

    async def _aprompt(self, prompt: list[int] | PromptTurns) -> list[int]:
        if isinstance(prompt, PromptTurns):
            ids = await self.generalist.aencode_messages(
                list(prompt.messages),
                chat=prompt.chat,
                chat_template_kwargs=prompt.chat_template_kwargs,
            )
            return [*ids, *prompt.then]
        return list(prompt)

    def __iter__(self) -> Iterator[Round]:
        start = time.perf_counter()
        try:
            error = None
            try:
                if self.prompts.public_generalist is None:
                    raise GeneralistError(self.prompts.generalist_error or "no generalist prompt")
                prompt = self._prompt(self.prompts.public_generalist)
                stream = self.generalist.stream_tokens(prompt, **self._body())
                try:
                    for event in stream:
                        if round_ := self._commit(event):
                            yield round_
                        if self.stats.finish_reason == "eos":
                            break
                finally:
                    stream.close()
            except GeneralistError as err:
                error = err
            if error is not None:
                yield from self._fall_back(error)
            elif self.stats.finish_reason is None:
                self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - start

    async def __aiter__(self) -> AsyncIterator[Round]:
        start = time.perf_counter()
        try:
            error = None
            try:
                if self.prompts.public_generalist is None:
                    raise GeneralistError(self.prompts.generalist_error or "no generalist prompt")
                prompt = await self._aprompt(self.prompts.public_generalist)
                stream = self.generalist.astream_tokens(prompt, **self._body())
                try:
                    async for event in stream:
                        if round_ := self._commit(event):
                            yield round_
                        if self.stats.finish_reason == "eos":
                            break
                finally:
                    await stream.aclose()
            except GeneralistError as err:
                error = err
            if error is not None:
                async for round_ in self._afall_back(error):
                    yield round_
            elif self.stats.finish_reason is None:
                self.stats.finish_reason = "length"
        finally:
            self.stats.seconds = time.perf_counter() - start

    def _commit(self, event: Streamed) -> Round | None:
        """An event's tokens, up to the end of text, as a round (None: it held none)."""
        if self.stats.generalist_calls == 0:
            self.stats.generalist_calls = 1
        eos = self.generalist.eos_token_ids
        tokens = event.tokens[: self.params.max_new_tokens - self.stats.new_tokens]
        for i, token in enumerate(tokens):
            if token in eos:
                tokens = tokens[: i + 1]
                break
        if event.finish_reason == "stop" or any(t in eos for t in tokens):
            self.stats.finish_reason = "eos"
        if not tokens:
            return None
        self.committed.extend(tokens)
        self.stats.rounds += len(tokens)  # one per token, as in-process: a busy server may
        # send several tokens in one event
        self.stats.new_tokens += len(tokens)
        data = self.spell(tokens) if self.spell is not None else None
        if data is not None:
            self.text.extend(data)
        return Round(tokens, 0, data)

    def _rest(self, error: GeneralistError) -> Run | None:
        """The specialist's run for the rest of the budget (None: nothing left to write)."""
        if self.params.on_generalist_error == "raise":
            raise error
        self.stats.degraded = True
        self.stats.degraded_reason = str(error)
        self.stats.finish_reason = None
        left = self.params.max_new_tokens - self.stats.new_tokens
        if left <= 0:
            self.stats.finish_reason = "length"
            return None
        rest = self.params.model_copy(update={"method": "specialist", "max_new_tokens": left})
        return self.fallback(self.committed, bytes(self.text), rest)

    def _merge(self, run: Run) -> None:
        s, r = self.stats, run.stats
        s.rounds += r.rounds
        s.new_tokens += r.new_tokens
        s.specialist_calls += r.specialist_calls
        s.finish_reason = r.finish_reason

    def _fall_back(self, error: GeneralistError) -> Iterator[Round]:
        if (run := self._rest(error)) is None:
            return
        try:
            yield from run
        finally:
            self._merge(run)

    async def _afall_back(self, error: GeneralistError) -> AsyncIterator[Round]:
        if (run := self._rest(error)) is None:
            return
        try:
            async for round_ in run:
                yield round_
        finally:
            self._merge(run)
