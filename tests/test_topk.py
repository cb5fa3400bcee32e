"""Stored top-K evaluation: the full ranking's figures from each query's top K and its positives' ranks."""
from __future__ import annotations

import numpy as np
import pytest

from cbir.data import Dataset, Query
from cbir.metrics import evaluation_report
from cbir.ranking import search
from cbir.topk import exact_topk, load_topk, place_ground_truth, save_topk, topk_report
from synthetic import clustered_unit_vectors

FIGURES = ("mAP", "mP@1", "mP@5", "mP@10", "mAP@10", "mAP@100", "seed_mAP")


def benchmark_like(n: int = 1500, n_queries: int = 20, clusters: int = 12, noise: float = 0.6):
    """Queries outside the database, positives = their cluster, junk = every 7th of it."""
    x, labels = clustered_unit_vectors(n + n_queries, 32, clusters, noise=noise, seed=5)
    db, queries, q_labels = x[:n], x[n:], labels[n:]
    gnd = []
    for c in q_labels:
        same = np.flatnonzero(labels[:n] == c)
        gnd.append({"ok": same[same % 7 != 0], "junk": same[same % 7 == 0]})
    names = [f"im{i:05d}" for i in range(n)]
    dataset = Dataset("bench", "", names, names, [f"c{c}" for c in labels[:n]],
                      [Query(f"q{q}", -1, f"q{q}") for q in range(n_queries)], {"medium": gnd}, n, n_queries)
    return dataset, db, queries


def test_topk_report_equals_the_full_ranking_when_all_positives_are_within_k(tmp_path):
    dataset, db, queries = benchmark_like()
    ids, scores = exact_topk([db], queries, k=1000)
    topk = place_ground_truth(ids, scores, dataset.gnd["medium"], len(db))
    assert not topk.truncated.any()
    save_topk(tmp_path / "topk.npz", topk)
    report = topk_report(load_topk(tmp_path / "topk.npz"), dataset, "medium")
    full = evaluation_report(search(db, queries)[1], dataset, "medium")
    for name in FIGURES:
        assert report[name] == pytest.approx(full[name], abs=1e-12), name
    assert [q["ap"] for q in report["per_query"]] == pytest.approx([q["ap"] for q in full["per_query"]])
    assert report["truncated_at"] == 1000 and report["n_queries_truncated"] == 0
    assert report["mAP_label"] == "mAP"


def test_topk_report_says_truncated_at_k_when_positives_fall_beyond_it():
    dataset, db, queries = benchmark_like(noise=1.5)
    ids, scores = exact_topk([db], queries, k=100)
    topk = place_ground_truth(ids, scores, dataset.gnd["medium"], len(db))
    report = topk_report(topk, dataset, "medium")
    full_ranks = search(db, queries)[1]
    full = evaluation_report(full_ranks, dataset, "medium")
    assert report["n_queries_truncated"] == len(queries)
    assert "truncated at K=100" in report["mAP_label"] and "20 queries" in report["mAP_label"]
    # missing positives count as never retrieved: the truncated list's figures, below the full ones
    assert report["mAP"] == pytest.approx(evaluation_report(full_ranks[:, :100], dataset, "medium")["mAP"])
    assert report["mAP"] < full["mAP"]
    assert report["mP@10"] == pytest.approx(full["mP@10"])


def test_exact_topk_over_parts_equals_one_search_over_their_stack():
    _, db, queries = benchmark_like()
    ids, scores = exact_topk([db[:400], db[400:401], db[401:]], queries, k=50, block=256)
    expected_scores, expected_ids = search(db, queries, topk=50)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_topk_from_another_ground_truth_is_refused():
    dataset, db, queries = benchmark_like()
    ids, scores = exact_topk([db], queries, k=100)
    topk = place_ground_truth(ids, scores, [{"ok": g["ok"][:1]} for g in dataset.gnd["medium"]], len(db))
    with pytest.raises(ValueError, match="another ground truth"):
        topk_report(topk, dataset, "medium")


def test_truncated_lists_keep_the_full_rankings_mp_at_k_and_leave_deeper_seed_columns_empty():
    dataset, db, queries = benchmark_like()
    ids, scores = exact_topk([db], queries, k=30)
    topk = place_ground_truth(ids, scores, dataset.gnd["medium"], len(db))
    assert topk.truncated.all()  # every query has positives beyond its top 30
    report = topk_report(topk, dataset, "medium")
    full = evaluation_report(search(db, queries)[1], dataset, "medium")
    for name in ("mP@1", "mP@5", "mP@10", "mAP@10", "seed_mAP@10"):  # 30 items hold 10 after junk
        assert report[name] == pytest.approx(full[name], abs=1e-12), name
    assert report["mAP"] < full["mAP"]  # positives beyond K count as never retrieved
    assert report["seed_mAP@100"] is None and report["mAP@100"] is None  # not knowable from 30 items
