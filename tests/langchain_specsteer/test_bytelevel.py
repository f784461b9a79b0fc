"""Tokens as bytes: spelling every token, and spelling any byte string back in a vocabulary."""

from __future__ import annotations

import pytest

from langchain_specsteer.bytelevel import TokenBytes, byte_alphabet, split_utf8
from langchain_specsteer.tiny import CORPUS, train_tokenizer


@pytest.fixture(scope="module")
def vocab():
    return TokenBytes(train_tokenizer())


def test_the_byte_alphabet_covers_every_byte_once():
    alphabet = byte_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["Ċ"] == ord("\n") and alphabet["a"] == ord("a")


def test_tokens_spell_what_the_tokenizer_decodes(vocab):
    tokenizer = vocab.tokenizer
    for text in CORPUS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert vocab.spell(ids) == text.encode()
        assert vocab.spell(ids) == tokenizer.decode(ids).encode()
    assert vocab.spell(tokenizer.all_special_ids) == b""


@pytest.mark.parametrize("text", CORPUS)
def test_every_prefix_of_a_text_is_spelled_exactly(vocab, text):
    """Cut anywhere, even inside a multi-byte character (accents, CJK, emoji)."""
    data = text.encode()
    for cut in range(len(data) + 1):
        assert vocab.spell(vocab.encode(data[:cut])) == data[:cut]


def test_whole_characters_keep_the_tokenizers_own_split(vocab):
    text = CORPUS[5]
    assert vocab.encode(text.encode()) == vocab.tokenizer.encode(text, add_special_tokens=False)
    cut = "Le café".encode()[:-1]  # inside "é"
    ids = vocab.encode(cut)
    assert vocab.spell(ids[-1:]) == "é".encode()[:1]


def test_stray_bytes_are_spelled_one_by_one(vocab):
    stray = b"ok \x9f\x98 ok"  # continuation bytes without a lead byte
    assert vocab.spell(vocab.encode(stray)) == stray


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"abc", (b"abc", b"")),
        ("é".encode(), ("é".encode(), b"")),
        ("aé".encode()[:2], (b"a", b"\xc3")),
        ("😀".encode()[:3], (b"", "😀".encode()[:3])),
        ("x😀".encode(), ("x😀".encode(), b"")),
        ("这".encode()[:2], (b"", "这".encode()[:2])),
        (b"", (b"", b"")),
    ],
)
def test_split_utf8(data, expected):
    assert split_utf8(data) == expected
