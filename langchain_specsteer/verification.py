"""The contract of the generalist side of a round, wherever the generalist runs.

The engine drafts on the device, then asks a `GeneralistSession` to verify the draft. A
session may live in this process (`local.LocalSession`, over a `LocalGeneralist`), in our
verifier service (`RemoteGeneralist`), or behind an OpenAI-compatible server
(`OpenAICompatibleGeneralist`). Each answers with a `Verdict`: the generalist's log-probs at
the draft positions and after it (dense in-process; over the network only what was sent, the
rest −inf), q_gen when the generalist side hosts a public copy of the specialist, and the
accepted count when the generalist side could decide it without anything private
(`algorithms.accept`). This module holds the interfaces, the `VerifyCall` a run's driver
performs, and `vocab_signature`.

Rounds in flight: a session whose `max_in_flight` is above 1 takes a round before the earlier
ones are answered (`start(..., after=...)`): the round builds on the committed tokens plus
`after`, the tentative tokens of the rounds in flight. `commit` then settles the oldest round
answered, and `drop` forgets the rounds after it, which a verdict voided.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "Generalist",
    "GeneralistError",
    "GeneralistSession",
    "GeneralistUnreachable",
    "PromptTurns",
    "Rule",
    "Verdict",
    "VerifyCall",
    "vocab_signature",
]

Rule = Literal["none", "ratio", "match", "device"]
"""How a draft is verified: "none" (nothing drafted to verify), "ratio" (SpecSteer's
p_G/q_gen ≥ γ), "match" (greedy speculative: d_i = argmax p_G), or "device" (the device
decides; the generalist side returns what it needs at every position)."""


class GeneralistError(RuntimeError):
    """The generalist side could not answer, after the client's retries."""


class GeneralistUnreachable(GeneralistError):
    """The generalist side gave no answer, after the client's retries (connection errors,
    timeouts, 5xx), as opposed to a refusal (e.g. a wrong API key): it may answer later."""


@dataclass
class Verdict:
    """The generalist side's answer to one draft.

    Attributes:
        log_p_G: (k+1, V) tempered generalist log-probs at each draft position and after the
            draft; entries the generalist side did not send are −inf.
        log_q_gen: (k+1, V) public-specialist log-probs when the generalist side hosts q_gen
            (unsent entries 0, so they never win a fused score), else None.
        accepted: leading drafts accepted, when the generalist side decided; None: the
            device decides from the rows.
        verify_seconds: how long the generalist side worked on it, when it says (the
            `specsteer/2` service); None otherwise.
    """

    log_p_G: torch.Tensor
    log_q_gen: torch.Tensor | None = None
    accepted: int | None = None
    verify_seconds: float | None = None


class GeneralistSession(ABC):
    """One generation's state on the generalist side: a prompt plus the committed tokens."""

    hosts_q_gen: bool = False
    """Whether verdicts carry q_gen (a public copy of the specialist next to the generalist)."""
    awaits_io: bool = False
    """Whether `averify` awaits I/O on the event loop (a network session). Otherwise the
    async engine runs `verify` on the generation's own worker thread."""
    max_in_flight: int = 1
    """How many rounds may be in flight at once (1: each waits for the last one's answer)."""

    @abstractmethod
    def verify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        """Score `draft` after the committed tokens.

        Args:
            draft: the specialist's drafted token ids (may be empty).
            rule: how acceptance is decided (see `Rule`).
            gamma: γ of the ratio test.
            uniforms: the device's uniform draws for a sampled ratio test, one per draft token;
                None in greedy mode.
        """

    async def averify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        """`verify` without blocking the event loop (here: in a worker thread; network
        sessions override it with asynchronous requests)."""
        return await asyncio.to_thread(self.verify, draft, rule, gamma, uniforms)

    def start(
        self,
        draft: list[int],
        rule: Rule,
        gamma: float,
        uniforms: list[float] | None = None,
        *,
        after: Sequence[int] = (),
    ) -> VerifyCall:
        """The call that verifies `draft` after the committed tokens and `after`, for a
        driver to perform (now or, with rounds in flight, on its own thread or task).

        What the call sends is fixed here, so later `commit`s do not change it. Sessions that
        take one round at a time (this default) refuse a non-empty `after`.
        """
        if after:
            msg = f"{type(self).__name__} takes one round at a time (max_in_flight=1)"
            raise ValueError(msg)
        return VerifyCall(
            perform=lambda: self.verify(draft, rule, gamma, uniforms),
            aperform=lambda: self.averify(draft, rule, gamma, uniforms),
            awaits_io=self.awaits_io,
        )

    @abstractmethod
    def commit(self, accepted: int, token: int) -> None:
        """Settle the oldest round answered: keep its first `accepted` drafts, then the
        recovered `token`."""

    def drop(self) -> None:  # noqa: B027 - sessions without rounds in flight hold none
        """Forget the rounds started after the last one committed (a verdict voided them)."""

    def close(self) -> None:  # noqa: B027 - optional for sessions that hold nothing
        """Free what the session holds (idempotent)."""

    async def aclose(self) -> None:
        """`close` from a coroutine (network sessions release themselves asynchronously)."""
        self.close()


@dataclass(frozen=True)
class VerifyCall:
    """A round's request to the generalist side, as `GeneralistSession.start` fixed it.

    The engine's loop is written once, as steps that yield these; the blocking driver calls
    `perform` (on a thread of its own for a round in flight), the asynchronous one awaits
    `aperform` (so a network generalist is awaited on the event loop while no thread waits
    for it).
    """

    perform: Callable[[], Verdict]
    aperform: Callable[[], Awaitable[Verdict]]
    awaits_io: bool = False


@dataclass(frozen=True)
class PromptTurns:
    """A public prompt the generalist side renders itself, with its own chat template.

    A generalist reached without its tokenizer on the device opens its session with these
    turns (`Generalist.public_prompt`), so no request renders them before the first round.

    Attributes:
        messages: the public turns (the conversation ending in a user turn).
        chat: render them with the chat template (else their text, as a plain prompt).
        chat_template_kwargs: the template's options (`tools` among them).
        then: token ids after the rendered turns (a forced start of the reply).
        guess: the device's own rendering of the turns, where the specialist shares the
            generalist's vocabulary: a stateless server may be sent it with the first round,
            before its own rendering confirms it.
    """

    messages: tuple[dict[str, Any], ...]
    chat: bool
    chat_template_kwargs: dict[str, Any] | None = None
    then: tuple[int, ...] = ()
    guess: tuple[int, ...] | None = None

    def followed_by(self, ids: Sequence[int]) -> PromptTurns:
        """These turns, then `ids` after the rendered prompt."""
        return dataclasses.replace(self, then=(*self.then, *ids))


class Generalist(ABC):
    """Where the generalist runs; `open_session` starts one generation there."""

    tokenizer: Any = None
    """The generalist's tokenizer on the device, when there is one (None: a server reached
    without it). The byte-level path needs it to spell and re-tokenise text."""
    streams: bool = False
    """Whether it writes a whole completion in one streamed request (`stream_tokens`,
    `astream_tokens`): what `method="generalist"` uses over the network."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The generalist model's name."""

    @property
    @abstractmethod
    def vocab_size(self) -> int | None:
        """Width of the generalist's output layer (None: unknown)."""

    @property
    @abstractmethod
    def vocab_signature(self) -> str | None:
        """`vocab_signature` of its tokenizer (None: unknown, e.g. a plain OpenAI server)."""

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""

    @property
    def max_draft_tokens(self) -> int | None:
        """The longest draft one round may carry (a service's limit); None: no limit."""
        return None

    @abstractmethod
    def encode_messages(
        self,
        messages: Sequence[dict[str, str]],
        *,
        chat: bool,
        chat_template_kwargs: dict | None = None,
    ) -> list[int]:
        """The generalist's prompt ids for a (public) conversation ending in a user turn."""

    def encode(
        self, text: str, *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        """The generalist's prompt ids for a (public) user turn."""
        return self.encode_messages(
            [{"role": "user", "content": text}],
            chat=chat,
            chat_template_kwargs=chat_template_kwargs,
        )

    def public_prompt(
        self,
        messages: Sequence[dict[str, str]],
        *,
        chat: bool,
        chat_template_kwargs: dict | None = None,
    ) -> list[int] | PromptTurns:
        """What opens a session on the public conversation: its prompt ids
        (`encode_messages`), or `PromptTurns` for a generalist side that renders them with
        its first round."""
        return self.encode_messages(messages, chat=chat, chat_template_kwargs=chat_template_kwargs)

    async def apublic_prompt(
        self,
        messages: Sequence[dict[str, str]],
        *,
        chat: bool,
        chat_template_kwargs: dict | None = None,
    ) -> list[int] | PromptTurns:
        """`public_prompt` without blocking the event loop."""
        return await self.aencode_messages(
            messages, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    async def aencode_messages(
        self,
        messages: Sequence[dict[str, str]],
        *,
        chat: bool,
        chat_template_kwargs: dict | None = None,
    ) -> list[int]:
        """`encode_messages` without blocking the event loop."""
        return await asyncio.to_thread(
            self.encode_messages, messages, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    @abstractmethod
    def open_session(
        self,
        prompt: Sequence[int] | PromptTurns,
        *,
        vocab_size: int,
        temperature: float = 0.0,
        q_gen_prompt: Sequence[int] | None = None,
    ) -> GeneralistSession:
        """Start a generation after `prompt`.

        Args:
            prompt: the generalist's public prompt ids (or turns it renders, where its
                `public_prompt` gave them).
            vocab_size: rows cover the first `vocab_size` token ids.
            temperature: verdict rows are tempered at it (0 and 1: as the model gives them).
            q_gen_prompt: the specialist's public prompt; a generalist side that hosts a
                public specialist computes q_gen after it (others ignore it).
        """


def vocab_signature(tokenizer: Any) -> str:
    """A short fingerprint of a tokenizer's vocabulary (token → id), equal iff they match."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    blob = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
