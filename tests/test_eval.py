"""Metric code on small hand-checked rankings."""

from __future__ import annotations

import pytest

from mmsearch.eval import Score, recall_at_k, reciprocal_rank


def test_recall_at_1_zero_and_at_5_one():
    ranked = ["b", "c", "a", "d", "e"]
    assert recall_at_k(ranked, {"a"}, 1) == 0.0
    assert recall_at_k(ranked, {"a"}, 2) == 0.0
    assert recall_at_k(ranked, {"a"}, 3) == 1.0
    assert recall_at_k(ranked, {"a"}, 5) == 1.0


def test_reciprocal_rank():
    assert reciprocal_rank(["x", "y", "a"], {"a"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a"], {"a"}) == 1.0
    assert reciprocal_rank(["x", "y"], {"a"}) == 0.0
    assert reciprocal_rank(["x", "b", "a"], {"a", "b"}) == 0.5  # first relevant counts


def test_score_averages_over_queries():
    runs = [
        (["a", "x", "y"], {"a"}),  # rank 1
        (["x", "a", "y"], {"a"}),  # rank 2
        (["x", "y", "z"], {"a"}),  # missed
        (["x"] * 9 + ["a"], {"a"}),  # rank 10
    ]
    s = Score.of("text2image", "t", runs)
    assert s.n == 4
    assert s.recall == {1: 0.25, 5: 0.5, 10: 0.75}
    assert s.mrr == pytest.approx((1 + 0.5 + 0 + 0.1) / 4)


def test_no_queries_is_empty_not_an_error():
    assert Score.of("text2text", "none", []).n == 0


def test_captions_outside_train_are_also_scored_on_their_own(tmp_path):
    from mmsearch.eval import read_captions

    tsv = tmp_path / "captions.tsv"
    tsv.write_text(
        "image\tsplit\tlang\tsource\tidx\tcaption\n"
        "a.jpg\ttrain\ten\ten_x\t0\ta dog\n"
        "b.jpg\tval\ten\ten_x\t0\ta cat\n"
        "b.jpg\tval\tzh\tzh_y\t0\t一只猫\n",
        encoding="utf-8",
    )
    assert read_captions(tsv) == [
        ("a.jpg", "en, en_x", "a dog"),
        ("b.jpg", "en, en_x", "a cat"),
        ("b.jpg", "en, en_x, val only", "a cat"),
        ("b.jpg", "zh, zh_y", "一只猫"),
        ("b.jpg", "zh, zh_y, val only", "一只猫"),
    ]


def test_captions_without_split_column_are_unchanged(tmp_path):
    from mmsearch.eval import read_captions

    tsv = tmp_path / "captions.tsv"
    tsv.write_text("image\tlang\tcaption\na.jpg\ten\ta dog\n", encoding="utf-8")
    assert read_captions(tsv) == [("a.jpg", "en", "a dog")]
