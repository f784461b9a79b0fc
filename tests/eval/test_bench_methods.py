"""eval.bench_methods: its raw cached forwards use the model's current cache keyword."""

from __future__ import annotations

import warnings

from eval.bench_methods import forward_seconds


def test_cached_forwards_raise_no_deprecation(generalist):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        for pad in (0, 1):
            seconds = forward_seconds(
                generalist.model, batch=2, new=2, prefix=4, repeats=1, pad=pad
            )
            assert seconds > 0
