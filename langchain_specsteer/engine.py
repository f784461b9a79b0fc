"""The engine: any method of docs/design.md §1 on a specialist and a generalist.

`SpecSteerEngine` picks the alignment and starts runs. On one shared vocabulary a run is a
`DecodeRun`: the specialist drafts token ids the generalist verifies as they are; the loop,
its drivers and the fallback are `run.Run`'s, each method a row of `methods.METHOD_SPECS`,
the math in `algorithms`, the models behind `ModelSequence` (transformers or llama.cpp).
Different tokenizers take the byte-level path (`byte_engine.ByteDecodeRun`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

from langchain_specsteer import algorithms as alg
from langchain_specsteer.byte_engine import ByteDecodeRun, ByteVocabularies
from langchain_specsteer.methods import METHOD_SPECS, MethodSpec
from langchain_specsteer.models import ModelSequence, Specialist
from langchain_specsteer.params import DecodingParams
from langchain_specsteer.run import Accepted, DecodeStats, Draft, Flight, Prompts, Round, Run
from langchain_specsteer.streamed import StreamedRun
from langchain_specsteer.verification import Generalist, GeneralistUnreachable, Rule, Verdict

__all__ = [
    "METHOD_SPECS",
    "DecodeRun",
    "DecodeStats",
    "MethodSpec",
    "Prompts",
    "Round",
    "SpecSteerEngine",
]


class SpecSteerEngine:
    """Runs any method of docs/design.md §1 on a specialist and a generalist (one vocabulary, or
    different tokenizers on the byte-level path).

    Args:
        specialist: the on-device model (q_ctx, and q_gen in-process).
        generalist: the model that verifies (p_G).
        batch_specialist: compute q_ctx and q_gen in one batch-of-2 specialist forward per
            step (the two prompts left-padded), instead of drafting on q_ctx and then scoring
            the draft on q_gen in a second forward. None (default): batch on CUDA, where a
            batch of two costs about one step; not on CPU, where the padded batch measured
            1.0–1.2× slower than the two passes apart (docs/index.md).
        alignment: "token" (one shared vocabulary), "byte" (the two models share only text;
            `byte_engine.py`), or "auto" (default): "token" when the vocabularies match.
    """

    def __init__(
        self,
        specialist: Specialist,
        generalist: Generalist,
        *,
        batch_specialist: bool | None = None,
        alignment: Literal["auto", "token", "byte"] = "auto",
    ):
        self.specialist = specialist
        self.generalist = generalist
        if batch_specialist is None:
            batch_specialist = specialist.device.type == "cuda"
        self.batch_specialist = batch_specialist
        if alignment not in ("auto", "token", "byte"):
            msg = f"alignment must be 'auto', 'token' or 'byte', got {alignment!r}"
            raise ValueError(msg)
        self.asked_alignment = alignment
        self.alignment: Literal["token", "byte"] | None = None
        self.vocab_size = specialist.vocab_size
        # A generalist that cannot describe itself yet (a verifier service down) is aligned
        # with at the first run it answers; runs before that fall back to the specialist.
        with contextlib.suppress(GeneralistUnreachable):
            self._align()

    def _align(self) -> None:
        """Pick the alignment from both vocabularies (a remote generalist's may need it to
        answer: GeneralistUnreachable while it does not)."""
        specialist, generalist, alignment = self.specialist, self.generalist, self.asked_alignment
        if alignment == "auto":
            shared = generalist.vocab_signature in (None, specialist.vocab_signature)
            alignment = "token" if shared else "byte"
        if alignment == "token":
            self.vocab_size = _shared_vocab_size(specialist, generalist)
        else:
            self.bytes = ByteVocabularies.of(specialist, generalist)
        self.alignment = alignment

    def run(self, prompts: Prompts, params: DecodingParams) -> Run | StreamedRun:
        """A lazy generation: `for` (or `async for`) over it gives `Round`s; its `stats` fill
        in as it goes. Until the generalist could be aligned with, a run whose prompt it did
        not encode (it was unreachable, or the method does not use it) runs on the
        specialist's vocabulary, and falls back to the specialist alone when it needs it."""
        if self.alignment is None and prompts.public_generalist is not None:
            self._align()  # it answered this run's prompt, so it describes itself now
        if params.method == "generalist" and self.generalist.streams and self.alignment:
            return self._streamed(prompts, params)
        if self.alignment == "byte":
            return ByteDecodeRun(
                self.specialist, self.generalist, prompts, params, vocabularies=self.bytes
            )
        return DecodeRun(
            self.specialist,
            self.generalist,
            prompts,
            params,
            vocab_size=self.vocab_size,
            batch_specialist=self.batch_specialist,
        )

    def _streamed(self, prompts: Prompts, params: DecodingParams) -> StreamedRun:
        """The generalist alone as one streamed completion; the specialist finishes from what
        it committed if the stream breaks."""
        byte_level = self.alignment == "byte"

        def fallback(committed: list[int], text: bytes, rest: DecodingParams) -> Run:
            if byte_level:
                run = ByteDecodeRun(
                    self.specialist, self.generalist, prompts, rest, vocabularies=self.bytes
                )
                run.text = bytearray(text)
                return run
            private = dataclasses.replace(prompts, private=[*prompts.private, *committed])
            return DecodeRun(
                self.specialist,
                self.generalist,
                private,
                rest,
                vocab_size=self.vocab_size,
                batch_specialist=self.batch_specialist,
            )

        spell = self.bytes.generalist.spell if byte_level else None
        return StreamedRun(self.generalist, prompts, params, spell=spell, fallback=fallback)


class DecodeRun(Run):
    """One generation on one shared vocabulary: drafts are verified as they are."""

    pipelines = True

    def __init__(
        self,
        specialist: Specialist,
        generalist: Generalist,
        prompts: Prompts,
        params: DecodingParams,
        *,
        vocab_size: int,
        batch_specialist: bool,
    ):
        super().__init__(specialist, generalist, prompts, params)
        self.vocab_size = vocab_size
        self.batch_specialist = batch_specialist
        self.committed: list[int] = []
        self.eos = generalist.eos_token_ids | specialist.eos_token_ids

    @property
    def _eos(self) -> frozenset[int]:
        return self.eos

    @property
    def _sampled_match(self) -> bool:
        """Standard speculative sampling: it needs q_ctx(d_i), so only the device decides."""
        return self.spec.verify == "match" and not self.params.greedy

    def _open(self) -> None:
        """The generalist's session (hosting q_gen when it can), then the specialist's
        sequences: with the context [+ without it, batched], and without it."""
        spec, prompts, V = self.spec, self.prompts, self.vocab_size
        # The context gate reads q_gen's whole rows next to q_ctx: q_gen stays on the device.
        hostable = spec.uses_q_gen and not self._context_gate
        q_gen_prompt = prompts.public_specialist if hostable else None
        self.target = self._open_target(V, q_gen_prompt=q_gen_prompt)
        hosted = self.target is not None and self.target.hosts_q_gen
        q_gen_on_device = spec.uses_q_gen and not hosted
        needs_q_ctx = spec.drafts or spec.recovers_with_q_ctx
        # ctx is the only sequence that sees the private context; it never leaves the device.
        if needs_q_ctx and q_gen_on_device and self.batch_specialist:
            self.ctx = self.specialist.sequence(
                prompts.private, prompts.public_specialist, vocab_size=V
            )
            return
        if needs_q_ctx:
            self.ctx = self.specialist.sequence(prompts.private, vocab_size=V)
        if q_gen_on_device:
            self.gen = self.specialist.sequence(prompts.public_specialist, vocab_size=V)

    def _draft(self, remaining: int, position: int) -> Draft:
        k = self._draft_length(remaining) if self.spec.drafts else 0
        draft = Draft(position=position)
        draft.ids = self._draft_tokens(self.ctx, k, self.eos, draft)
        if draft.ids and self.spec.verify == "ratio" and not self.params.greedy:
            # made here, applied where verified
            draft.uniforms = self._draws(len(draft.ids), position)
        return draft

    def _rule(self, draft: Draft) -> Rule:
        return "device" if self._sampled_match or self._context_gate else self.spec.verify

    def _prepare(self, flight: Flight, before: Flight | None) -> None:
        """q_gen over the draft on the device (after the guessed last token of the round in
        flight before it), while the generalist side verifies it."""
        if self.gen is None:
            return
        if before is not None:
            self.gen.append([before.predicted])
        flight.draft.q_gen = list(self._score(self.gen, flight.draft.ids))

    def _accept(self, draft: Draft, verdict: Verdict | None) -> Accepted:
        if self.gen is None and verdict is not None and verdict.log_q_gen is not None:
            draft.q_gen = list(verdict.log_q_gen)
        if not draft.ids:
            return Accepted(0, 0)
        gamma = self._gates(draft, len(draft.ids)) if self._context_gate else None
        n = self._decide(draft, verdict, self.spec.verify, gamma)
        return Accepted(n, n)

    def _recover(self, draft: Draft, verdict: Verdict | None, accepted: Accepted) -> int:
        reads, n = self.spec.reads, accepted.verified
        rejected = n < len(draft.ids)
        rows = alg.Rows(
            log_p_G=verdict.log_p_G[n] if "p_G" in reads else None,
            log_q_ctx=draft.q_ctx[n] if "q_ctx" in reads else None,
            log_q_gen=draft.q_gen[n] if "q_gen" in reads else None,
            proposal=draft.q_ctx[n] if rejected and self._sampled_match else None,
        )
        return self._choose(self.spec.recover(rows, self.knobs), draft.position + n)

    def _roll_back(self, draft: Draft, accepted: Accepted, token: int) -> None:
        keep = len(self.committed) + accepted.verified
        for seq in (self.ctx, self.gen):
            if seq is not None:
                seq.rollback(seq.prompt_length + keep)
                seq.append([token])

    def _commit(self, draft: Draft, accepted: Accepted, token: int, *, rolled: bool) -> Round:
        round_ = super()._commit(draft, accepted, token, rolled=rolled)
        self.committed.extend(round_.tokens)
        return round_

    def _specialist_alone(self) -> ModelSequence:
        if self.ctx is None:
            ctx = self.specialist.sequence(self.prompts.private, vocab_size=self.vocab_size)
            ctx.append(self.committed)
            return ctx
        self.ctx.rollback(self.ctx.prompt_length + len(self.committed))
        return self.ctx


def _shared_vocab_size(specialist: Specialist, generalist: Generalist) -> int:
    """The common vocabulary width, or a clear error when the tokenizers differ."""
    signature = generalist.vocab_signature
    if signature is not None and signature != specialist.vocab_signature:
        g_tokenizer = generalist.tokenizer
        detail = ""
        if g_tokenizer is not None:
            s_vocab, g_vocab = specialist.tokenizer.get_vocab(), g_tokenizer.get_vocab()
            detail = (
                f" ({len(s_vocab)} vs {len(g_vocab)} tokens, "
                f"{len(s_vocab.items() ^ g_vocab.items())} entries differ)"
            )
        msg = (
            f"The specialist and generalist tokenizers have different vocabularies{detail}. "
            "The token-level path needs one shared vocabulary; use alignment='byte' (or "
            "'auto') for models with different tokenizers."
        )
        raise ValueError(msg)
    width = specialist.vocab_size
    if generalist.vocab_size is not None:  # None: unknown (an OpenAI server, no tokenizer)
        width = min(width, generalist.vocab_size)
    tokens = len(specialist.tokenizer.get_vocab())
    if width < tokens:
        msg = f"model output width {width} is smaller than the tokenizer's {tokens} tokens"
        raise ValueError(msg)
    return width
