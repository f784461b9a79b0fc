"""`eval.metrics`: ROUGE exactly as the official LongLaMP scoring computes it."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest
from rouge_score.rouge_scorer import RougeScorer

from eval.metrics import mean_rouge, rouge

VOCABULARY = (
    "the a cat dog dogs running ran run mat sat lay on of blender is great terrible price "
    "Quality! quality, battery lasts LONG long; I love it. would not buy again 5 stars 2024"
)
WORDS = re.findall(r"\S+", VOCABULARY)

REALISTIC = [
    (
        "This blender is great: it crushes ice in seconds and the price was fair.",
        "Great blender! Crushes ice fast, fair price, but it is loud.",
    ),
    (
        "We propose a method for speculative decoding with a private specialist.",
        "A private specialist drafts tokens which a large generalist verifies.",
    ),
    ("  Leading and trailing whitespace.\n", "\tleading and trailing whitespace "),
    ("Le café est délicieux 😀", "Le café était délicieux"),
    ("", "an empty prediction"),
    ("ALL CAPS TEXT", "all caps text"),
]


def random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(0, 25)))

    return [(text(), text()) for _ in range(n)]


PAIRS = REALISTIC + random_pairs(200)


def official(prediction: str, reference: str, stem: bool = False) -> dict[str, float]:
    scorer = RougeScorer(["rouge1", "rougeL"], use_stemmer=stem)
    scores = scorer.score(reference.strip(), prediction.strip())
    return {"rouge1": scores["rouge1"].fmeasure, "rougeL": scores["rougeL"].fmeasure}


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_equals_rouge_score_on_many_pairs(stem):
    for prediction, reference in PAIRS:
        assert rouge(prediction, reference, stem=stem) == official(prediction, reference, stem)


def test_random_pairs_are_not_trivial():
    values = {rouge(p, r)["rougeL"] for p, r in PAIRS}
    assert len(values) > 50  # the equality check above covers many distinct scores


@pytest.mark.parametrize("stem", [False, True])
def test_mean_rouge_is_the_mean_times_100(stem):
    predictions = [p for p, _ in PAIRS]
    references = [r for _, r in PAIRS]
    expected = {"rouge1": 0.0, "rougeL": 0.0}
    for prediction, reference in PAIRS:
        for name, value in official(prediction, reference, stem).items():
            expected[name] += value
    expected = {name: 100 * total / len(PAIRS) for name, total in expected.items()}
    got = mean_rouge(predictions, references, stem=stem)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-12)


def test_hand_computed_same_words_different_order():
    # prediction "the mat sat on the cat" vs reference "the cat sat on the mat"
    # ROUGE-1: both are {the: 2, cat, mat, sat, on}; clipped overlap 6; P = R = 6/6 → F = 1.
    # ROUGE-L: LCS = "the sat on the" (4 tokens): P = 4/6, R = 4/6 → F = 2/3.
    got = rouge("the mat sat on the cat", "the cat sat on the mat")
    assert got["rouge1"] == pytest.approx(1.0, rel=1e-12)
    assert got["rougeL"] == pytest.approx(float(Fraction(2, 3)), rel=1e-12)


def test_hand_computed_one_word_swapped():
    # prediction "the cat sat on the mat" vs reference "the cat lay on the mat"
    # ROUGE-1: overlap the×2, cat, on, mat = 5 of 6 each side: P = R = 5/6 → F = 5/6.
    # ROUGE-L: LCS = "the cat on the mat" = 5 → F = 5/6.
    got = rouge("the cat sat on the mat", "the cat lay on the mat")
    assert got == pytest.approx({"rouge1": 5 / 6, "rougeL": 5 / 6}, rel=1e-12)


def test_hand_computed_unequal_lengths():
    # prediction "The cat sat on the mat." (6 tokens after lower-casing, punctuation dropped)
    # reference "A cat was sitting on the red mat" (8 tokens)
    # ROUGE-1 overlap: cat, on, the, mat = 4 (the reference has one "the"):
    #   P = 4/6, R = 4/8, F = 2PR/(P+R) = (2·2/3·1/2)/(7/6) = 4/7.
    # ROUGE-L: LCS = "cat on the mat" = 4 → the same 4/7.
    got = rouge("The cat sat on the mat.", "A cat was sitting on the red mat")
    four_sevenths = float(Fraction(4, 7))
    assert got == pytest.approx({"rouge1": four_sevenths, "rougeL": four_sevenths}, rel=1e-12)


def test_mean_of_hand_computed_cases():
    got = mean_rouge(
        ["the mat sat on the cat", "the cat sat on the mat"],
        ["the cat sat on the mat", "the cat lay on the mat"],
    )
    assert got["rouge1"] == pytest.approx(100 * (1 + 5 / 6) / 2, rel=1e-12)
    assert got["rougeL"] == pytest.approx(100 * (2 / 3 + 5 / 6) / 2, rel=1e-12)


def test_stemming_flag_changes_the_score():
    assert rouge("running dogs", "run dog") == {"rouge1": 0.0, "rougeL": 0.0}
    assert rouge("running dogs", "run dog", stem=True) == {"rouge1": 1.0, "rougeL": 1.0}
    assert mean_rouge(["running dogs"], ["run dog"], stem=True)["rouge1"] == 100.0
    assert mean_rouge(["running dogs"], ["run dog"])["rouge1"] == 0.0


def test_default_is_no_stemming_after_a_stemmed_call():
    rouge("running dogs", "run dog", stem=True)  # the cached stemmed scorer must not leak
    assert rouge("running dogs", "run dog")["rouge1"] == 0.0


def test_strings_are_stripped():
    # rouge_score's tokenizer already drops whitespace, so this pins the observable behaviour
    # (surrounding whitespace never counts) rather than the .strip() call itself.
    assert rouge("  the cat \n", "\tthe cat  ") == rouge("the cat", "the cat")
    assert rouge("  the cat \n", "\tthe cat  ") == {"rouge1": 1.0, "rougeL": 1.0}


@pytest.mark.parametrize(
    ("prediction", "reference"), [("", ""), ("", "some words"), ("some words", ""), ("  ", "\n")]
)
def test_empty_strings_score_zero(prediction, reference):
    assert rouge(prediction, reference) == {"rouge1": 0.0, "rougeL": 0.0}
    assert mean_rouge([prediction], [reference]) == {"rouge1": 0.0, "rougeL": 0.0}


def test_punctuation_only_scores_zero_without_crashing():
    assert rouge("!!! ...", "?") == {"rouge1": 0.0, "rougeL": 0.0}


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        mean_rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="0 predictions but 1 references"):
        mean_rouge([], ["a"])


def test_no_examples_raise():
    with pytest.raises(ValueError, match="at least one example"):
        mean_rouge([], [])


def test_values_are_fractions_and_percentages():
    one = rouge("the cat sat", "the cat lay")
    assert all(0.0 <= v <= 1.0 for v in one.values())
    assert mean_rouge(["the cat sat"], ["the cat lay"]) == pytest.approx(
        {name: 100 * value for name, value in one.items()}
    )
