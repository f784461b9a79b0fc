"""ROUGE as LongLaMP scores it: `rouge_score` ROUGE-1 and ROUGE-L F-measure on stripped strings.

    rouge("the cat sat", "the cat lay")          # {"rouge1": 0.667, "rougeL": 0.667}, fractions
    mean_rouge(predictions, references)          # means over examples, ×100 as the paper reports

The official evaluation uses `rouge_score` defaults (its own lower-casing alphanumeric
tokenizer, no stemming); `stem=True` turns on its Porter stemmer for comparison with papers
that stem.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

METRICS = ("rouge1", "rougeL")


@cache
def _scorer(stem: bool) -> RougeScorer:
    """One shared `RougeScorer` per stemming setting (building one loads the tokenizer and
    stemmer)."""
    from langchain_specsteer.extras import optional_import

    rouge_scorer = optional_import(
        "rouge_score.rouge_scorer", extra="eval", purpose="ROUGE", package="rouge-score"
    )
    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=stem)


def rouge(prediction: str, reference: str, *, stem: bool = False) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F-measure of one prediction against its reference, in [0, 1]."""
    # rouge_score's signature is score(target, prediction); F-measure is symmetric anyway.
    scores = _scorer(bool(stem)).score(reference.strip(), prediction.strip())
    return {name: float(scores[name].fmeasure) for name in METRICS}


def mean_rouge(
    predictions: Sequence[str], references: Sequence[str], *, stem: bool = False
) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measure over paired examples, ×100 as in the paper."""
    if len(predictions) != len(references):
        msg = f"{len(predictions)} predictions but {len(references)} references"
        raise ValueError(msg)
    if not predictions:
        msg = "mean_rouge needs at least one example"
        raise ValueError(msg)
    totals = dict.fromkeys(METRICS, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        for name, value in rouge(prediction, reference, stem=stem).items():
            totals[name] += value
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}
