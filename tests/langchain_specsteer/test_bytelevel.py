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


def test_prefix_mass_is_the_mass_of_the_tokens_that_start_so(vocab):
    import math

    import torch

    from langchain_specsteer.bytelevel import prefix_mass

    torch.manual_seed(0)
    log_q = torch.log_softmax(torch.randn(len(vocab)), -1)
    table = vocab.table
    for pending, spellings in [(b"", [b" ", b"th", b"\xc3", b"zzzz"]), (b"Th", [b"e", b"e "])]:
        got = prefix_mass(log_q, vocab, pending, spellings)
        inside = [i for i, s in enumerate(table) if s and s.startswith(pending)]
        norm = torch.logsumexp(log_q[inside], -1)
        for value, spelled in zip(got.tolist(), spellings, strict=True):
            ids = [i for i, s in enumerate(table) if s and s.startswith(pending + spelled)]
            expected = float(torch.logsumexp(log_q[ids], -1) - norm) if ids else -math.inf
            assert value == pytest.approx(expected, abs=1e-5)


def test_aligned_boundaries_are_the_common_token_ends():
    from langchain_specsteer.bytelevel import aligned_boundaries

    # "hello world": specialist "hel|lo| wor|ld", generalist "hello| world"
    assert aligned_boundaries([3, 5, 9, 11], [5, 11]) == [(2, 1), (4, 2)]
    # identical tokenizations: every token is a chunk
    assert aligned_boundaries([2, 4, 7], [2, 4, 7]) == [(1, 1), (2, 2), (3, 3)]
    # a first token that only completes pending bytes (ends at 0) joins the first chunk
    assert aligned_boundaries([0, 3, 6], [3, 6]) == [(2, 1), (3, 2)]
    assert aligned_boundaries([4], [1, 2, 3]) == []


def test_byte_delta_compares_the_specialists_mass_on_the_candidates_bytes(vocab):
    import torch

    from langchain_specsteer.bytelevel import BYTE_FLOOR, byte_delta

    ids = vocab.tokenizer.encode(" the", add_special_tokens=False)
    assert len(ids) == 1
    log_q_gen = torch.log_softmax(torch.zeros(len(vocab)), -1)
    log_q_ctx = log_q_gen.clone()
    log_q_ctx[ids[0]] += 5.0  # the context makes " the" far more likely
    log_q_ctx = torch.log_softmax(log_q_ctx, -1)
    other = vocab.tokenizer.encode("zz", add_special_tokens=False)[:1]
    delta = byte_delta([ids[0], other[0]], log_q_ctx, log_q_gen, vocab, vocab)
    assert delta[0] > 1.0 and delta[1] < 0
    same = byte_delta([ids[0]], log_q_gen, log_q_gen, vocab, vocab)
    assert same.abs().max() < 1e-6 and BYTE_FLOOR > 0


def test_next_byte_logprobs_group_the_tokens_by_their_next_byte(vocab):
    import math

    import torch

    from langchain_specsteer.bytelevel import END, EOS

    torch.manual_seed(2)
    logp = torch.log_softmax(torch.randn(len(vocab)), -1)
    eos = vocab.tokenizer.eos_token_id
    for prefix, eos_ids in [(b"", [eos]), (b"Th", []), (b" b", [])]:
        got = vocab.next_byte_logprobs(logp, prefix, eos_ids)
        inside = [i for i, s in enumerate(vocab.table) if s and s.startswith(prefix)]
        total = torch.logsumexp(logp[inside + list(eos_ids)], -1)
        for bucket in range(EOS + 1):
            if bucket == EOS:
                ids = list(eos_ids)
            elif bucket == END:
                ids = [i for i in inside if vocab.table[i] == prefix]
            else:
                ids = [i for i in inside if vocab.table[i][len(prefix) :][:1] == bytes([bucket])]
            expected = float(torch.logsumexp(logp[ids], -1) - total) if ids else -math.inf
            assert float(got[bucket]) == pytest.approx(expected, abs=1e-5)
        assert float(torch.logsumexp(got, -1)) == pytest.approx(0.0, abs=1e-5)


def test_next_byte_logprobs_skip_tokens_without_mass(vocab):
    """Rows masked to −inf (padded or filtered ids) add nothing; a range with no mass is −inf."""
    import torch

    from langchain_specsteer.bytelevel import END

    logp = torch.log_softmax(
        torch.randn(len(vocab), generator=torch.Generator().manual_seed(3)), -1
    )
    inside = [i for i, s in enumerate(vocab.table) if s and s.startswith(b" b")]
    assert len(inside) > 2
    masked = logp.clone()
    masked[inside[::2]] = -float("inf")
    kept = inside[1::2]
    got = vocab.next_byte_logprobs(masked, b" b")
    total = torch.logsumexp(logp[kept], -1)
    for bucket in range(END + 1):
        if bucket == END:
            ids = [i for i in kept if vocab.table[i] == b" b"]
        else:
            ids = [i for i in kept if vocab.table[i][2:3] == bytes([bucket])]
        expected = float(torch.logsumexp(logp[ids], -1) - total) if ids else -float("inf")
        assert float(got[bucket]) == pytest.approx(expected, abs=1e-5)
    masked[inside] = -float("inf")
    assert torch.isneginf(vocab.next_byte_logprobs(masked, b" b")).all()


def test_tables_are_built_once_per_tokenizer_and_again_after_tokens_are_added():
    tokenizer = train_tokenizer()
    first = TokenBytes.of(tokenizer)
    assert TokenBytes.of(tokenizer) is first
    assert TokenBytes.of(train_tokenizer()) is not first  # another object: its own tables
    tokenizer.add_tokens(["hello world"])  # not special: it spells its text
    grown = TokenBytes.of(tokenizer)
    assert grown is not first and len(grown) == len(first) + 1
    assert grown.table[-1] == b"hello world"


def test_sentencepiece_vocabularies_spell_spaces_and_byte_fallback():
    """Gemma- and Llama-2-style vocabularies: "▁" is a space, "<0xNN>" one byte."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<0x20>", "<0xE2>", "<0x82>", "<0xAC>", "▁the", "▁", "the", "é", "s"]
    backend = Tokenizer(models.BPE(vocab={w: i for i, w in enumerate(words)}, merges=[]))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    vocab = TokenBytes(PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>"))
    assert vocab.table == [None, b" ", b"\xe2", b"\x82", b"\xac", b" the", b" ", b"the",
                           "é".encode(), b"s"]  # fmt: skip
    assert vocab.by_spelling[b" "] == [1, 6]
    assert vocab.single_byte[0xE2] == 2 and vocab.single_byte[ord(" ")] == 1
    assert vocab.extending(b" t").tolist() == [5]
