"""`python -m eval.bench_bytes` on one tiny case: every row, and what must hold."""

from __future__ import annotations

import json

from eval.bench_bytes import main


def test_the_byte_path_on_the_demo_pair(world_dir, demo_pair, tmp_path):
    out = tmp_path / "bench"
    record = main(
        ["--data", str(world_dir), "--cases", "1", "--max-new-tokens", "6", "--out", str(out)]
    )
    rows = {(r["generalist"], r["method"]): r for r in record["rows"]}
    methods = ("generalist", "speculative", "specsteer", "light_costeer")
    assert set(rows) == {(g, m) for g in ("token", "byte") for m in methods}
    for method in ("generalist", "speculative"):  # exact on the byte path too
        assert rows["byte", method]["same_text_as_token_path"] == 1.0
    for row in record["rows"]:
        assert row["tokens_per_second"] > 0 and 0 <= row["rouge_l"] <= 100
    assert json.loads((out / "bench_bytes.json").read_text())["rows"] == record["rows"]
    assert "| byte | specsteer |" in (out / "bench_bytes.md").read_text()
