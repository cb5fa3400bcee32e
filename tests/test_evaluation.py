"""Evaluation in query blocks: the same report as ranking every query at once, in bounded memory."""
from __future__ import annotations

import numpy as np
import pytest

from cbir.data import Dataset, Query
from cbir.evaluation import blocked_report
from cbir.method import Method
from cbir.metrics import evaluation_report
from cbir.rerank import rerank
from synthetic import clustered_unit_vectors


def every_image_a_query(n: int = 300, clusters: int = 12):
    """A class dataset where every image is a query (self junk), as a user's own folder."""
    db, labels = clustered_unit_vectors(n, 24, clusters, noise=0.9, seed=3)
    names = [f"im{i:04d}" for i in range(n)]
    label_names = [f"class{c}" for c in labels]
    gnd = []
    for i in range(n):
        same = np.flatnonzero(labels == labels[i])
        gnd.append({"ok": same[same != i], "junk": np.array([i])})
    queries = [Query(name, i, name) for i, name in enumerate(names)]
    dataset = Dataset("own", "", names, names, label_names, queries, {"class": gnd}, n, n)
    return dataset, db.astype(np.float32)


@pytest.mark.parametrize("rerank_name", ["none", "aqe", "diffusion", "fsr", "kreciprocal"])
def test_blocked_report_equals_the_report_of_the_full_ranking(rerank_name):
    dataset, db = every_image_a_query()
    method = Method(pooling="gem").with_rerank(rerank_name, k=10) if rerank_name in ("diffusion", "fsr") else \
        Method(pooling="gem").with_rerank(rerank_name)
    full = evaluation_report(rerank(method, db, db), dataset, "class")
    seen = []
    blocked = blocked_report(method, db, db, dataset, "class", block=64,
                             progress=lambda done, total, what: seen.append((done, total)))
    # k-reciprocal's neighbour sets span queries and database together: it is never blocked
    blocks = [(300, 300)] if rerank_name == "kreciprocal" else [(64, 300), (128, 300), (192, 300), (256, 300),
                                                                (300, 300)]
    assert seen == blocks
    for key in ("mAP", "mP@1", "mP@5", "mP@10", "seed_mAP@10", "seed_mAP@100", "seed_mAP"):
        assert blocked[key] == pytest.approx(full[key], abs=1e-6), key
    assert [q["ap"] for q in blocked["per_query"]] == pytest.approx([q["ap"] for q in full["per_query"]], abs=1e-6)
    assert blocked["n_queries_scored"] == full["n_queries_scored"] == 300
    assert 0.2 < blocked["mAP"] < 0.99  # a real ranking problem, neither trivial nor random


def test_reports_of_a_small_database_are_computed_with_blas_on_one_thread(monkeypatch, tmp_path):
    """numpy's and scipy's OpenBLAS workers spin after each call and took the cores from each
    other's small calls; a small database's reports run BLAS on one thread, a large one's as set."""
    import sys
    from types import SimpleNamespace

    from threadpoolctl import threadpool_info

    import cbir.evaluation as evaluation

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen = []

    def evaluate():
        seen.append(blas_threads())
        return {"scipy's BLAS": "scipy.linalg" in sys.modules}

    def report(directory: str) -> dict:
        manifest = {"files": {"db.npy": "d", "queries.npy": "q"}}
        return evaluation.stored_report(small, tmp_path / directory, manifest, Method(backbone="vgg16",
                                        pooling="mac"), "original", evaluate)

    small = SimpleNamespace(images=["im"] * 250)
    assert report("a") == {"scipy's BLAS": True}  # loaded, so limited
    monkeypatch.setattr(evaluation, "ONE_BLAS_THREAD_UP_TO", 100)  # now 250 images are a large database
    report("b")
    assert seen[0] == {1} and seen[1] == blas_threads() != {1}  # and the limit ends with the call
    with evaluation.ONE_BLAS_THREAD:  # concurrent users share the limit until the last one leaves
        with evaluation.ONE_BLAS_THREAD:
            pass
        assert blas_threads() == {1}
    assert blas_threads() == seen[1]
