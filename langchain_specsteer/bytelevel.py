"""Tokens as bytes: what each token id spells, and any byte string spelled in a vocabulary.

Two models with different tokenizers share only text. `TokenBytes` gives, for one
tokenizer, the raw bytes of every token (special tokens spell nothing) and the canonical
tokenization of any byte string, including one that ends inside a multi-byte UTF-8
character (its last bytes become single-byte tokens). The byte-level decoding path
(`byte_engine.py`) converts drafts and committed text between the two vocabularies with it.

Supported: byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, ...), whose token strings map to
bytes through GPT-2's byte alphabet, and SentencePiece-style vocabularies ("▁" for a space,
"<0xNN>" byte fallback).
"""

from __future__ import annotations

import json
import math
import weakref
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from langchain_specsteer.algorithms import pick

__all__ = [
    "TokenBytes",
    "aligned_boundaries",
    "byte_alphabet",
    "byte_delta",
    "prefix_mass",
    "recover_bytewise",
    "recover_token",
    "split_utf8",
]

END = 256
"""Next-byte bucket: the token ends exactly here."""
EOS = 257
"""Next-byte bucket: the model ends the text."""


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character → the byte it represents (byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def split_utf8(data: bytes) -> tuple[bytes, bytes]:
    """(`data` up to its last unfinished UTF-8 character, that character's bytes so far)."""
    start = len(data) - 1
    while start >= 0 and len(data) - start < 4 and data[start] >> 6 == 0b10:
        start -= 1  # continuation bytes: step back to the lead byte
    if start < 0:
        return data, b""
    lead = data[start]
    need = (
        2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    )
    if len(data) - start < need:
        return data[:start], data[start:]
    return data, b""


class TokenBytes:
    """The bytes of every token of one tokenizer, and byte strings back to token ids.

    Args:
        tokenizer: a Hugging Face tokenizer (fast or slow).
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", []))
        to_bytes = _byte_level_table() if _is_byte_level(tokenizer) else None
        vocab = tokenizer.get_vocab()
        self.table: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            if index not in special:
                self.table[index] = _spelling(token, to_bytes)
        self.single_byte: dict[int, int] = {}
        self.by_spelling: dict[bytes, list[int]] = {}
        for index, spelled in enumerate(self.table):
            if spelled:
                self.by_spelling.setdefault(spelled, []).append(index)
                if len(spelled) == 1:
                    self.single_byte.setdefault(spelled[0], index)
        table = self.table
        ordered = sorted((i for i, spelled in enumerate(table) if spelled), key=table.__getitem__)
        self._keys: list[bytes] = [table[i] for i in ordered]  # type: ignore[misc]
        self._ids = torch.tensor(ordered, dtype=torch.long)
        # Every spelling's bytes, back to back in sorted order, so that "the byte at position
        # k of each token in a range" is one gather instead of a Python loop.
        lengths = torch.tensor([len(key) for key in self._keys], dtype=torch.long)
        self._starts = torch.cumsum(lengths, 0) - lengths
        self._lengths = lengths
        self._bytes = torch.frombuffer(bytearray(b"".join(self._keys) or b"\0"), dtype=torch.uint8)
        self._first = self._bytes[self._starts].long() if self._keys else torch.zeros(0).long()

    @classmethod
    def of(cls, tokenizer: Any) -> TokenBytes:
        """The tables of `tokenizer`, built once per tokenizer object (they take seconds at
        a 262k-token vocabulary) and rebuilt if tokens were added since."""
        try:
            cached = _TABLES.get(tokenizer)
        except TypeError:  # not hashable or not weakly referenceable: no cache
            return cls(tokenizer)
        if cached is None or cached.size != len(tokenizer):
            cached = _TABLES[tokenizer] = cls(tokenizer)
        return cached

    def __len__(self) -> int:
        return len(self.table)

    def spell(self, ids: Sequence[int]) -> bytes:
        """The bytes of `ids` (special tokens spell nothing)."""
        return b"".join(self.table[i] or b"" for i in ids if i < len(self.table))

    def encode(self, data: bytes) -> list[int]:
        """A tokenization of `data` that spells it exactly: the tokenizer's own for the whole
        UTF-8 characters, single-byte tokens for an unfinished character at the end (and for
        any piece the tokenizer would not spell back exactly)."""
        text_part, tail = split_utf8(data)
        ids: list[int] = []
        if text_part:
            try:
                text = text_part.decode("utf-8")
                ids = self.tokenizer.encode(text, add_special_tokens=False)
            except UnicodeDecodeError:  # stray bytes a model emitted: spell them one by one
                ids = []
            if self.spell(ids) != text_part:  # or e.g. a tokenizer adding a prefix space
                ids = self._bytewise(text_part)
        return ids + self._bytewise(tail)

    def _range(self, prefix: bytes) -> tuple[int, int]:
        """Where the spellings that start with `prefix` lie in the sorted order."""
        if not prefix:
            return 0, len(self._keys)
        lo = bisect_left(self._keys, prefix)
        upper = prefix.rstrip(b"\xff")
        if not upper:
            return lo, len(self._keys)
        hi = bisect_left(self._keys, upper[:-1] + bytes([upper[-1] + 1]))
        return lo, hi

    def extending(self, prefix: bytes) -> torch.Tensor:
        """Ids of the tokens whose spelling starts with `prefix` (every spelled token for b"")."""
        lo, hi = self._range(prefix)
        return self._ids[lo:hi]

    def next_byte_logprobs(
        self, logp: torch.Tensor, prefix: bytes = b"", eos_ids: Sequence[int] = ()
    ) -> torch.Tensor:
        """A next-token distribution as a distribution over what follows `prefix`.

        Among the tokens whose spelling starts with `prefix` (and `eos_ids`), renormalised,
        tokens are grouped by their next byte (log-sum-exp): buckets 0–255 are bytes, `END`
        the tokens spelling exactly `prefix`, `EOS` the end-of-text ids.

        Returns:
            (258,) log-probs (−inf for buckets no token reaches).
        """
        lo, hi = self._range(prefix)
        ids = self._ids[lo:hi]
        if prefix:  # a narrow range: the byte after the prefix, or END
            at = len(prefix)
            ends = self._lengths[lo:hi] <= at
            where = (self._starts[lo:hi] + at).masked_fill_(ends, 0)
            index = self._bytes[where].long().masked_fill_(ends, END)
        else:  # the whole vocabulary: first bytes, precomputed
            index = self._first
        eos = [i for i in eos_ids if i < logp.shape[-1]]
        if eos:
            ids = torch.cat([ids, torch.tensor(eos, dtype=torch.long)])
            index = torch.cat([index, torch.full((len(eos),), EOS, dtype=torch.long)])
        out = torch.full((EOS + 1,), -math.inf)
        if ids.numel() == 0:
            return out
        values = logp[ids.to(logp.device)].float().cpu()
        peak = values.max()
        if not torch.isfinite(peak):  # every token in reach has no mass (−inf)
            return out
        mass = torch.zeros(EOS + 1).index_add_(0, index, torch.exp(values - peak))
        out = torch.log(mass) + peak
        return out - torch.logsumexp(out, dim=-1)

    def _bytewise(self, data: bytes) -> list[int]:
        missing = sorted({b for b in data if b not in self.single_byte})
        if missing:
            msg = f"the tokenizer has no single-byte tokens for bytes {missing[:8]}"
            raise ValueError(msg)
        return [self.single_byte[b] for b in data]


_TABLES: weakref.WeakKeyDictionary[Any, TokenBytes] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[int, int]:
    """`str.translate` table from GPT-2's byte alphabet to latin-1 characters of the same
    bytes; every other character below 256 maps to one that latin-1 cannot encode."""
    table = {c: 0x110000 - 1 for c in range(256)}
    table.update({ord(char): byte for char, byte in byte_alphabet().items()})
    return table


def _spelling(token: str, byte_level: dict[int, int] | None) -> bytes:
    """The bytes a vocabulary entry spells."""
    if byte_level is not None:
        try:
            return token.translate(byte_level).encode("latin-1")
        except UnicodeEncodeError:  # not in the byte alphabet (e.g. an added token)
            pass
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode()


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    config = json.loads(decoder.__getstate__())  # the decoder's JSON only, not the vocabulary
    kinds = [config.get("type")] + [d.get("type") for d in config.get("decoders", [])]
    return "ByteLevel" in kinds


def aligned_boundaries(first: Sequence[int], second: Sequence[int]) -> list[tuple[int, int]]:
    """Where two tokenizations of the same bytes both have a token boundary.

    Args:
        first: end offsets (bytes) of each token of the first tokenization, non-decreasing.
        second: the same for the second tokenization.

    Returns:
        (tokens of `first`, tokens of `second`) before each common boundary after offset 0,
        in order; the spans between consecutive ones are the aligned chunks.
    """
    common, i, j = [], 0, 0
    while i < len(first) and j < len(second):
        if first[i] < second[j]:
            i += 1
        elif second[j] < first[i]:
            j += 1
        else:
            offset = first[i]
            while i < len(first) and first[i] == offset:  # tokens that add no bytes join it
                i += 1
            while j < len(second) and second[j] == offset:
                j += 1
            if offset > 0:
                common.append((i, j))
    return common


BYTE_FLOOR = 1e-4
"""Probability floor in δ = log(M_ctx + ε) − log(M_gen + ε): where the specialist's one-token
lookahead gives a candidate no mass with or without the context, δ is 0."""

CANDIDATES = 256
"""Recovery considers the generalist's top tokens by log p_G (over the network: the hint)."""


def prefix_mass(
    log_q: torch.Tensor, vocab: TokenBytes, pending: bytes, spellings: Sequence[bytes]
) -> torch.Tensor:
    """log P(the specialist's next bytes start with each spelling | they start with `pending`).

    Looks one token ahead: the mass of the tokens whose spelling starts with
    `pending + spelling`, over the mass of those that start with `pending` (cumulative sums
    over the vocabulary in byte order, so each spelling costs two binary searches).

    Args:
        log_q: (V,) the specialist's next-token log-probs.
        vocab: its vocabulary.
        pending: bytes its next token must start with.
        spellings: byte strings to measure.

    Returns:
        (len(spellings),) log-probabilities (−inf where no token starts so).
    """
    values = log_q[vocab._ids.to(log_q.device)].double().cpu()
    values = torch.exp(values - values.max())
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(values, 0)])
    lo, hi = vocab._range(pending)
    norm = cumulative[hi] - cumulative[lo]
    ranges = torch.tensor([vocab._range(pending + s) for s in spellings], dtype=torch.long)
    if ranges.numel() == 0:
        return torch.zeros(0)
    mass = (cumulative[ranges[:, 1]] - cumulative[ranges[:, 0]]).clamp_min(0) / norm
    return torch.log(mass).float()


def byte_delta(
    candidates: Sequence[int],
    log_q_ctx: torch.Tensor,
    log_q_gen: torch.Tensor,
    generalist: TokenBytes,
    specialist: TokenBytes,
    pending: bytes = b"",
    specialist_eos: Sequence[int] = (),
) -> torch.Tensor:
    """δ = log M_ctx − log M_gen of each generalist candidate, measured on its bytes.

    M is the specialist's probability that its next bytes spell the candidate (`prefix_mass`,
    floored at `BYTE_FLOOR`); a candidate that ends the text (no spelling) compares the
    specialist's own end-of-text ids, when nothing is pending.
    """
    spellings = [generalist.table[t] if t < len(generalist.table) else None for t in candidates]
    spelled = [i for i, s in enumerate(spellings) if s]
    ctx = torch.full((len(candidates),), -math.inf)
    gen = torch.full((len(candidates),), -math.inf)
    if spelled:
        words = [spellings[i] for i in spelled]
        ctx[spelled] = prefix_mass(log_q_ctx, specialist, pending, words)
        gen[spelled] = prefix_mass(log_q_gen, specialist, pending, words)
    ends = [i for i, s in enumerate(spellings) if not s]
    if ends and specialist_eos and not pending:  # the generalist's end of text
        ids = torch.tensor(list(specialist_eos), device=log_q_ctx.device)
        ctx[ends] = float(torch.logsumexp(log_q_ctx[ids].float(), -1))
        gen[ends] = float(torch.logsumexp(log_q_gen[ids].float(), -1))
    floor = torch.tensor(math.log(BYTE_FLOOR))
    return torch.logaddexp(ctx, floor) - torch.logaddexp(gen, floor)


def recover_token(
    *,
    log_p_G: torch.Tensor,
    log_q_ctx: torch.Tensor,
    log_q_gen: torch.Tensor,
    generalist: TokenBytes,
    specialist: TokenBytes,
    pending: bytes = b"",
    fuse: Any = None,
    greedy: bool = True,
    generator: torch.Generator | None = None,
    specialist_eos: Sequence[int] = (),
    candidates: int = CANDIDATES,
) -> int:
    """Token-candidate recovery across tokenizers (`byte_recovery="token"`).

    Candidates are the generalist's top tokens by log p_G; each is scored
    `fuse(log p_G, δ)` with δ measured on its bytes by the specialist (`byte_delta`), and
    the best (or a sample) is taken. With α = 0 this is the generalist's own choice.

    Args:
        log_p_G: (V_G,) the generalist's next-token log-probs (−inf where not sent).
        log_q_ctx, log_q_gen: (V_S,) the specialist's, with and without the private context.
        generalist, specialist: the two vocabularies.
        pending: bytes the specialist's next token must start with.
        fuse: `(log p_G, δ) -> scores` over the candidates (default: log p_G + δ).
        greedy: argmax; else a sample from softmax(scores).
        specialist_eos: the specialist's end-of-text ids.
        candidates: how many of the generalist's top tokens are considered.
    """
    fuse = fuse or (lambda p, d: p + d)
    finite = int(torch.isfinite(log_p_G).sum())
    top = torch.topk(log_p_G.float(), max(1, min(candidates, finite)))
    ids = top.indices.tolist()
    delta = byte_delta(
        ids, log_q_ctx, log_q_gen, generalist, specialist, pending, specialist_eos
    ).to(top.values.device)
    return ids[pick(fuse(top.values, delta), greedy=greedy, generator=generator)]


def recover_bytewise(
    *,
    log_p_G: torch.Tensor,
    log_q_ctx: torch.Tensor,
    log_q_gen: torch.Tensor,
    generalist: TokenBytes,
    specialist: TokenBytes,
    pending: bytes = b"",
    fuse: Any = None,
    greedy: bool = True,
    generator: torch.Generator | None = None,
    generalist_eos: Sequence[int] = (),
    specialist_eos: Sequence[int] = (),
) -> int:
    """docs/design.md §2's byte-by-byte recovery (`byte_recovery="byte"`, the default): fuse the
    two models' next-byte distributions, one byte at a time, until the generalist's token
    ends.

    Buckets are the 256 bytes, `END` (the generalist's token ends here) and `EOS`. δ per
    bucket = log(Q_ctx + ε) − log(Q_gen + ε) from the specialist's next-byte distributions
    (after its pending bytes); the specialist does not vote on `END`.

    Returns:
        The generalist token spelling the chosen bytes (or its end-of-text id).
    """
    fuse = fuse or (lambda p, d: p + d)
    chosen = b""
    while True:
        P = generalist.next_byte_logprobs(log_p_G, chosen, () if chosen else generalist_eos)
        at = pending + chosen
        eos = () if at else specialist_eos
        q_ctx = specialist.next_byte_logprobs(log_q_ctx, at, eos).exp()
        q_gen = specialist.next_byte_logprobs(log_q_gen, at, eos).exp()
        delta = torch.log(q_ctx + BYTE_FLOOR) - torch.log(q_gen + BYTE_FLOOR)
        delta[END] = 0.0
        scores = torch.where(torch.isfinite(P), fuse(P, delta), -math.inf)
        bucket = pick(scores, greedy=greedy, generator=generator)
        if bucket == EOS:
            ids = [i for i in generalist_eos if i < log_p_G.shape[-1]]
            return max(ids, key=lambda i: float(log_p_G[i]))
        if bucket == END:
            return max(generalist.by_spelling[chosen], key=lambda i: float(log_p_G[i]))
        chosen += bytes([bucket])
