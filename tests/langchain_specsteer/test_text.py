"""Streaming text: whole characters (IncrementalDetokenizer), exact stop cuts (StopStringFilter)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from langchain_specsteer.text import IncrementalDetokenizer, StopStringFilter
from langchain_specsteer.tiny import CORPUS, train_tokenizer

TEXTS = [
    "Le café est délicieux, très aromatique. Crème brûlée à la française!",
    "这个产品很好，我很喜欢。质量不错，价格合理。",
    "Love it 😀👍 would buy again 🎉 — shipping was fast ✨",
    # Characters the tokenizer never saw in training: split into raw bytes.
    "Ωμέγα 𝄞 한국어 テスト 🧑‍🚀 naïve Zoë ﬁn ∑x² 🇫🇷!",
    "plain ascii, with  double  spaces and\nnew lines\tand tabs.",
]

REPLACEMENT = "\ufffd"


def sentencepiece_like_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer: Metaspace "▁" words, byte fallback, first leading space stripped.

    Its decode depends on context (a token decoded at the start of a window loses its space),
    which the detokenizer's context window must handle.
    """
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    base.train_from_iterator(CORPUS * 20, trainer=trainer)
    model = json.loads(base.to_str())["model"]
    vocab = dict(model["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece"])
def tok(request):
    if request.param == "byte_level":
        return train_tokenizer()  # the tiny pair's tokenizer
    return sentencepiece_like_tokenizer()


def reference(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def stream(tok, groups) -> list[str]:
    """Pieces an IncrementalDetokenizer emits for these groups of ids, then its flush."""
    detok = IncrementalDetokenizer(tok)
    return [detok.push(group) for group in groups] + [detok.flush()]


def random_groups(ids, rng: random.Random, max_size: int = 4) -> list[list[int]]:
    groups, i = [], 0
    while i < len(ids):
        size = rng.randint(0, max_size)  # 0: an empty push must be harmless too
        groups.append(ids[i : i + size])
        i += size
    return groups


def byte_token_ids(tok, text: str) -> list[int]:
    """One token per UTF-8 byte: "<0xNN>" byte-fallback tokens, or the GPT-2 byte-to-unicode
    characters of byte-level BPE."""
    if "<0x41>" in tok.get_vocab():
        return tok.convert_tokens_to_ids([f"<0x{b:02X}>" for b in text.encode("utf-8")])
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    ids = tok.convert_tokens_to_ids([chars[b] for b in text.encode("utf-8")])
    assert None not in ids and tok.unk_token_id not in ids
    return ids


# --------------------------------------------------------------------------- detokenizer


def test_tokenizer_really_splits_characters_across_tokens(tok):
    """Guards the tests below: some single tokens decode to half a character."""
    split = [
        i
        for text in TEXTS
        for i in tok.encode(text, add_special_tokens=False)
        if REPLACEMENT in reference(tok, [i])
    ]
    assert len(split) > 10


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_concatenates_to_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    pieces = stream(tok, [[i] for i in ids])
    assert "".join(pieces) == reference(tok, ids) == text
    assert not any(REPLACEMENT in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 1  # it streams, not all at the end


@pytest.mark.parametrize("text", TEXTS)
def test_random_groups_concatenate_to_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    rng = random.Random(text)
    for _ in range(20):
        pieces = stream(tok, random_groups(ids, rng))
        assert "".join(pieces) == text
        assert not any(REPLACEMENT in piece for piece in pieces)


def test_special_tokens_are_skipped(tok):
    text = TEXTS[2]
    ids = [tok.bos_token_id, *tok.encode(text, add_special_tokens=False), tok.eos_token_id]
    pieces = stream(tok, [[i] for i in ids])
    assert "".join(pieces) == reference(tok, ids) == text
    assert pieces[0] == ""  # BOS alone is no text


def test_every_piece_is_whole_characters_and_emitted_as_soon_as_complete(tok):
    text = "aé这😀🧑‍🚀 ok"
    ids = byte_token_ids(tok, text)
    assert len(ids) == len(text.encode("utf-8"))
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push([i]) for i in ids]
    # One byte at a time: '' until a character's last byte arrives, then exactly that character.
    ends = set()
    offset = 0
    for ch in text:
        offset += len(ch.encode("utf-8"))
        ends.add(offset - 1)
    assert [p for i, p in enumerate(pieces) if i not in ends] == [""] * (len(ids) - len(ends))
    assert [pieces[i] for i in sorted(ends)] == list(text)
    assert detok.flush() == ""


def test_emoji_bytes_fed_individually(tok):
    ids = byte_token_ids(tok, "😀")
    assert len(ids) == 4 and all(REPLACEMENT in reference(tok, [i]) for i in ids)
    detok = IncrementalDetokenizer(tok)
    assert [detok.push([i]) for i in ids] == ["", "", "", "😀"]


def test_bytes_in_random_groups(tok):
    text = TEXTS[3] + TEXTS[1]
    ids = byte_token_ids(tok, text)
    assert reference(tok, ids) == text
    rng = random.Random(0)
    for _ in range(10):
        pieces = stream(tok, random_groups(ids, rng, max_size=5))
        assert "".join(pieces) == text
        assert not any(REPLACEMENT in piece for piece in pieces)


def test_unfinished_character_is_held_then_flushed_as_replacement(tok):
    ok, half = tok.encode("ok", add_special_tokens=False), byte_token_ids(tok, "😀")[:2]
    ids = ok + half  # "ok" + half an emoji
    detok = IncrementalDetokenizer(tok)
    assert detok.push(ok) == "ok"
    assert detok.push(half[:1]) == detok.push(half[1:]) == ""
    rest = detok.flush()  # U+FFFD (one per byte with byte fallback), as decode gives it
    assert rest and set(rest) == {REPLACEMENT}
    assert "ok" + rest == reference(tok, ids)
    assert detok.flush() == ""  # nothing is emitted twice


# --------------------------------------------------------------------------- stop strings


def first_stop_cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text before the stop string that completes first when the text arrives char by char."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if s and text[:end].endswith(s)]
        if done:
            return text[: end - max(map(len, done))], True
    return text, False


def run_filter(stops, chunks) -> tuple[list[str], StopStringFilter]:
    f = StopStringFilter(stops)
    pieces = [f.push(chunk) for chunk in chunks]
    pieces.append(f.flush())
    return pieces, f


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if text else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_stop_split_across_many_pushes_is_cut_exactly():
    text = "The answer is 42.<|END|> and then garbage"
    pieces, f = run_filter(["<|END|>"], list(text))
    assert "".join(pieces) == "The answer is 42."
    assert f.stopped
    assert f.push("more") == "" and f.flush() == ""


def test_without_stop_everything_is_released():
    rng = random.Random(0)
    for text in ["", "hello", "a" * 50, "日本語のテキスト 😀"]:
        for stops in ([], [""], ["", ""]):
            pieces, f = run_filter(stops, random_chunks(text, rng))
            assert "".join(pieces) == text
            assert not f.stopped
            # With no (non-empty) stop string nothing is ever held back.
            assert "".join(pieces[:-1]) == text


def random_case(rng: random.Random) -> tuple[str, list[str]]:
    """Random text and stop strings over a small alphabet; often one stop occurs in the text and
    sometimes one stop lies strictly inside another."""
    alphabet = "ab c"

    def word(lo, hi):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))

    stops = [word(0, 5) for _ in range(rng.randint(0, 3))]
    if stops and len(stops[0]) >= 3 and rng.random() < 0.5:
        i = rng.randint(1, len(stops[0]) - 2)
        stops.append(stops[0][i : rng.randint(i + 1, len(stops[0]) - 1)])
    middle = rng.choice(stops) if stops and rng.random() < 0.7 else ""
    return word(0, 10) + middle + word(0, 10), stops


def test_random_chunkings_match_the_first_stop():
    rng = random.Random(1234)
    stopped_cases = 0
    for _ in range(2000):
        text, stops = random_case(rng)
        expected, stopped = first_stop_cut(text, stops)
        chunks = random_chunks(text, rng)
        pieces, f = run_filter(stops, chunks)
        assert "".join(pieces) == expected, (text, stops, chunks)
        assert f.stopped == stopped
        stopped_cases += stopped
        # Released pieces are final: each prefix of the stream is a prefix of the result.
        released = ""
        for piece in pieces:
            released += piece
            assert expected.startswith(released)
    assert 500 < stopped_cases < 1900  # both outcomes are well exercised


def test_nothing_is_held_longer_than_a_possible_stop_prefix():
    f = StopStringFilter(["STOP"])
    assert f.push("hello S") == "hello "  # "S" could start "STOP"
    assert f.push("T") == ""  # "ST" still could
    assert f.push("x") == "STx"  # it could not: released at once
    assert f.push("no overlap") == "no overlap"
    assert f.held == ""


def test_earliest_stop_wins_whatever_the_order():
    for stops in (["world", "lo"], ["lo", "world"]):
        for chunks in (["hello world"], list("hello world"), ["hel", "lo wor", "ld"]):
            pieces, f = run_filter(stops, chunks)
            assert "".join(pieces) == "hel" and f.stopped


def test_stop_inside_another_cut_the_same_way_for_every_chunking():
    """ "Human" completes before "\\n\\nHuman:" does, however the text is split."""
    text = "Sure.\n\nHuman: next question"
    stops = ["\n\nHuman:", "Human"]
    results = set()
    rng = random.Random(3)
    for chunks in ([text], list(text), *(random_chunks(text, rng) for _ in range(30))):
        pieces, f = run_filter(stops, chunks)
        assert f.stopped
        results.add("".join(pieces))
    assert results == {"Sure.\n\n"}
    # Stops completing together: the longer one (which starts earlier) is cut.
    pieces, _ = run_filter(["\n\nHuman:", "Human:"], list(text))
    assert "".join(pieces) == "Sure."


def test_empty_stop_strings_are_ignored():
    pieces, f = run_filter(["", "xyz"], ["ab", "c", "xy", "z!"])
    assert "".join(pieces) == "abc" and f.stopped
    assert f.stop == ["xyz"]


def test_flush_releases_held_text_only_without_stop():
    f = StopStringFilter(["</s>"])
    assert f.push("end </") == "end "
    assert f.flush() == "</"  # generation ended without the stop: the held text is real output
    assert f.flush() == ""

    f = StopStringFilter(["</s>", "stop here"])
    assert f.push("end </s") == "end "
    assert f.push("> stop her") == ""
    assert f.stopped
    assert f.flush() == ""


def test_overlapping_prefixes():
    # "aab" in "aaab": the first "a" is safe only once the third "a" shows it cannot start "aab".
    f = StopStringFilter(["aab"])
    assert [f.push(c) for c in "aaab"] == ["", "", "a", ""]
    assert f.stopped and f.flush() == ""
    for chunks in (["aaab"], ["aa", "ab"], ["a", "aa", "b"], ["aaa", "b"]):
        pieces, f = run_filter(["aab"], chunks)
        assert "".join(pieces) == "a" and f.stopped
    pieces, f = run_filter(["abab"], list("abaabab!"))
    assert "".join(pieces) == "aba" and f.stopped
    pieces, f = run_filter(["aab"], list("aaaa"))
    assert "".join(pieces) == "aaaa" and not f.stopped
