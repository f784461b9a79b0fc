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
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["TokenBytes", "byte_alphabet", "split_utf8"]


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
        special = set(getattr(tokenizer, "all_special_ids", []))
        byte_level = _is_byte_level(tokenizer)
        alphabet = byte_alphabet()
        size = max(tokenizer.get_vocab().values()) + 1
        self.table: list[bytes | None] = [None] * size
        for token, index in tokenizer.get_vocab().items():
            if index in special:
                continue
            if byte_level and all(c in alphabet for c in token):
                self.table[index] = bytes(alphabet[c] for c in token)
            elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                self.table[index] = bytes([int(token[3:5], 16)])
            else:
                self.table[index] = token.replace("▁", " ").encode()
        self.single_byte: dict[int, int] = {}
        for index, spelled in enumerate(self.table):
            if spelled is not None and len(spelled) == 1:
                self.single_byte.setdefault(spelled[0], index)

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

    def _bytewise(self, data: bytes) -> list[int]:
        missing = sorted({b for b in data if b not in self.single_byte})
        if missing:
            msg = f"the tokenizer has no single-byte tokens for bytes {missing[:8]}"
            raise ValueError(msg)
        return [self.single_byte[b] for b in data]


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    config = json.loads(backend.to_str())
    decoder = config.get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", [])]
    return "ByteLevel" in kinds
