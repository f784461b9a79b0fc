"""The decoding methods of docs/design.md §1, one row each: the single source of their names.

A method is what the specialist drafts, how the generalist side verifies, and which pure
function of `algorithms` recovers the round's last token from the rows at its position.
Adding a method is one row here plus its recovery function there; `METHODS` (and so
`DecodingParams.method`, the CLIs, benches and reports) follow from the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from langchain_specsteer import algorithms as alg

__all__ = ["METHODS", "METHOD_SPECS", "MethodSpec"]

Distribution = Literal["p_G", "q_ctx", "q_gen"]
"""A next-token distribution a recovery may read (docs/design.md §1's notation)."""


@dataclass(frozen=True)
class MethodSpec:
    """What a method does in a round.

    Attributes:
        name: what `DecodingParams.method` calls it.
        description: one line for CLIs, demos and reports.
        drafts: the specialist drafts up to K tokens from q_ctx.
        verify: "ratio" (SpecSteer's p_G/q_gen ≥ γ), "match" (standard speculative), or "none".
        recover: scores of the round's last token from the rows at its position
            (`algorithms.Recovery`).
        reads: the distributions `recover` reads.
    """

    name: str
    description: str
    drafts: bool
    verify: Literal["none", "ratio", "match"]
    recover: alg.Recovery
    reads: frozenset[Distribution]

    @property
    def uses_generalist(self) -> bool:
        return "p_G" in self.reads or self.verify != "none"

    @property
    def uses_q_gen(self) -> bool:
        return self.verify == "ratio" or "q_gen" in self.reads

    @property
    def recovers_with_q_ctx(self) -> bool:
        return "q_ctx" in self.reads

    @property
    def fuses(self) -> bool:
        """The recovery weighs the generalist against the specialist (both p_G and q_ctx)."""
        return {"p_G", "q_ctx"} <= self.reads


P_G: frozenset[Distribution] = frozenset({"p_G"})
Q_CTX: frozenset[Distribution] = frozenset({"q_ctx"})
ALL: frozenset[Distribution] = frozenset({"p_G", "q_ctx", "q_gen"})

METHOD_SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "specsteer",
            "the specialist drafts with the context, the generalist verifies; "
            "one recovered token per round",
            drafts=True,
            verify="ratio",
            recover=alg.recover_steered,
            reads=ALL,
        ),
        MethodSpec(
            "generalist",
            "the large model alone, on the request only (never sees the context)",
            drafts=False,
            verify="none",
            recover=alg.recover_generalist,
            reads=P_G,
        ),
        MethodSpec(
            "specialist",
            "the small model alone, on private context + request",
            drafts=False,
            verify="none",
            recover=alg.recover_specialist,
            reads=Q_CTX,
        ),
        MethodSpec(
            "speculative",
            "standard speculative decoding: same text as the generalist",
            drafts=True,
            verify="match",
            recover=alg.recover_generalist,
            reads=P_G,
        ),
        MethodSpec(
            "light_costeer",
            "one fused token per generalist call",
            drafts=False,
            verify="none",
            recover=alg.recover_steered,
            reads=ALL,
        ),
        MethodSpec(
            "costeer",
            "CoSteer: iterative fusion per token",
            drafts=False,
            verify="none",
            recover=alg.recover_costeer,
            reads=ALL,
        ),
    )
}

METHODS: tuple[str, ...] = tuple(METHOD_SPECS)
"""Every method's name, in the rows' order."""
