"""The generalist side in this process: a `GeneralistSession` over models loaded here.

`LocalGeneralist.open_session` returns one for `SpecSteerLLM` (q_gen stays with the device's
specialist); the verifier service opens one with its public copy of the specialist, so its
verdicts carry q_gen and the ratio test is decided next to the generalist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.verification import GeneralistSession, Rule, Verdict

if TYPE_CHECKING:
    from langchain_specsteer.models import LocalModel, TokenSequence

__all__ = ["LocalSession"]


class LocalSession(GeneralistSession):
    """A session over models in this process: the generalist, and optionally a public specialist.

    In `SpecSteerLLM` the public specialist is the device's own (the engine scores q_gen
    itself); the verifier service passes its public copy so verdicts carry q_gen.
    """

    def __init__(
        self,
        generalist: LocalModel,
        prompt: Sequence[int],
        *,
        vocab_size: int,
        temperature: float = 0.0,
        public_specialist: LocalModel | None = None,
        q_gen_prompt: Sequence[int] | None = None,
    ):
        self.temperature = temperature
        self.target: TokenSequence = generalist.sequence(prompt, vocab_size=vocab_size)
        self.public: TokenSequence | None = None
        if public_specialist is not None and q_gen_prompt is not None:
            self.public = public_specialist.sequence(q_gen_prompt, vocab_size=vocab_size)
        self.hosts_q_gen = self.public is not None
        self._pending = 0

    @property
    def sequences(self) -> list[TokenSequence]:
        return [s for s in (self.target, self.public) if s is not None]

    @property
    def generated(self) -> list[int]:
        """Tokens after the prompt (committed, then the last draft until `commit`)."""
        return list(self.target.suffix)

    def rows(self, draft: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Append `draft`; the (k+1, V) tempered rows of the generalist (and q_gen)."""
        out = []
        for seq in self.sequences:
            seq.append(draft)
            out.append(alg.temper(seq.forward(len(draft) + 1)[0], self.temperature))
        self._pending = len(draft)
        return out[0], (out[1] if self.public is not None else None)

    def verify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        log_p_G, log_q_gen = self.rows(draft)
        accepted = alg.accept(rule, draft, log_p_G, log_q_gen, gamma, uniforms)
        return Verdict(log_p_G, log_q_gen, accepted)

    def truncate(self, length: int) -> None:
        """Keep the first `length` generated tokens (and cache)."""
        for seq in self.sequences:
            seq.rollback(seq.prompt_length + length)
        self._pending = 0

    def extend(self, tokens: Sequence[int]) -> None:
        """Append committed tokens (computed at the next `rows`)."""
        for seq in self.sequences:
            seq.append(tokens)

    def commit(self, accepted: int, token: int) -> None:
        self.truncate(len(self.target.suffix) - self._pending + accepted)
        self.extend([token])

    def close(self) -> None:
        for seq in self.sequences:
            seq.cache = None
