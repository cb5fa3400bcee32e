"""Search at scale: the persisted kNN-graph index (cbir.annindex) and re-rankings over database +
distractors without stacking them (cbir.scalererank), each against brute force on the stack."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.annindex import (AnnParams, array_stamp, ensure_graph, graph_recall, knn_graph, load_graph, load_index,
                           stacked_rows)
from cbir.cache import CacheError
from cbir.diffusion import DiffusionRanker, knn_neighbours
from cbir.method import Method
from cbir.ranking import search
from cbir.rerank import query_expansion
from cbir.scalererank import TruncatedDiffusion, rerank_topk
from synthetic import clustered_unit_vectors

N, DIM, K = 400, 16, 10


@pytest.fixture(scope="module")
def stacked():
    """400 database + distractor rows (as three parts) and 12 queries."""
    x, _ = clustered_unit_vectors(N + 12, DIM, clusters=6, noise=0.7, seed=3)
    db, queries = x[:N], x[N:]
    return db, [db[:150], db[150:151], db[151:]], queries


def exact_graph(tmp_path, parts, **params):
    return ensure_graph(tmp_path / "ann", parts, array_stamp(*parts), AnnParams(kind="flat", k=K, **params))


def test_stacked_rows_gathers_global_indices_across_parts(stacked):
    db, parts, _ = stacked
    ids = np.array([399, 0, 150, 151, 149])
    np.testing.assert_array_equal(stacked_rows(parts, ids), db[ids])
    with pytest.raises(ValueError, match=r"\[0, 400\)"):
        stacked_rows(parts, np.array([400]))


def test_exact_index_graph_equals_exact_neighbours_with_recall_one(stacked, tmp_path):
    db, parts, _ = stacked
    graph = exact_graph(tmp_path, parts, recall_sample=50)
    sims, ids = knn_neighbours(db, K)
    np.testing.assert_array_equal(graph.ids, ids)
    np.testing.assert_allclose(graph.sims, sims, atol=1e-6)
    assert graph.recall == 1.0 and graph.status == "built"
    assert graph.describe() == "exact kNN graph (flat index; recall@10 1.000 on 50 sampled items)"


def test_recall_figure_equals_a_brute_force_count(stacked, tmp_path):
    db, parts, _ = stacked
    params = AnnParams(kind="hnsw", hnsw_m=2, ef_construction=4, ef_search=1, k=K, recall_sample=N)
    graph = ensure_graph(tmp_path / "ann", parts, array_stamp(*parts), params)
    _, exact = knn_neighbours(db, K)
    found = sum(np.intersect1d(e, a).size for e, a in zip(exact, graph.ids))
    assert graph.recall == pytest.approx(found / (N * K)) and graph.recall < 0.99  # every item sampled
    sampled = graph_recall(parts, graph.ids, sample=40, seed=7)
    chosen = np.sort(np.random.default_rng(7).choice(N, 40, replace=False))
    found = sum(np.intersect1d(exact[i], graph.ids[i]).size for i in chosen)
    assert sampled == {"at": K, "value": pytest.approx(found / (40 * K)), "sample": 40, "seed": 7}
    assert "approximate kNN graph (HNSW M=2, efConstruction=4, efSearch=1; recall@10" in graph.describe()


def test_float16_distractors_make_an_approximate_index_store_float16(stacked, tmp_path):
    db, _, _ = stacked
    parts = [db[:200], db[200:].astype(np.float16)]
    graph = ensure_graph(tmp_path / "ann", parts, array_stamp(*parts), AnnParams(k=K, recall_sample=100))
    assert graph.record["index"]["storage"] == "float16" and graph.recall > 0.95
    exact = ensure_graph(tmp_path / "flat", parts, array_stamp(*parts), AnnParams("flat", k=K, recall_sample=100))
    assert exact.record["index"]["storage"] == "float32" and exact.recall == 1.0


def test_persisted_index_and_graph_reload_identically(stacked, tmp_path):
    _, parts, _ = stacked
    stamp, params = array_stamp(*parts), AnnParams(kind="hnsw", hnsw_m=4, k=K, recall_sample=100)
    built = ensure_graph(tmp_path / "ann", parts, stamp, params)
    loaded = ensure_graph(tmp_path / "ann", parts, stamp, params)
    assert (built.status, loaded.status) == ("built", "loaded") and loaded.record == built.record
    np.testing.assert_array_equal(loaded.ids, built.ids)
    index, _ = load_index(tmp_path / "ann", parts, stamp, params)
    np.testing.assert_array_equal(knn_graph(index, parts, params)[1], built.ids)
    wider = ensure_graph(tmp_path / "ann", parts, stamp, AnnParams(kind="hnsw", hnsw_m=4, k=K + 2, recall_sample=100))
    assert wider.status.startswith("graph rebuilt from the stored index (") and wider.ids.shape == (N, K + 2)
    assert wider.record["index"]["build_seconds"] == built.record["index"]["build_seconds"]  # the index reused


def test_stale_or_damaged_index_is_refused_and_rebuilt(stacked, tmp_path):
    _, parts, _ = stacked
    params = AnnParams(kind="hnsw", hnsw_m=4, k=K, recall_sample=100)
    ensure_graph(tmp_path / "ann", parts, array_stamp(*parts), params)
    changed = [parts[0], parts[1], parts[2][::-1].copy()]
    with pytest.raises(CacheError, match="stale, the index was built over other descriptors"):
        load_graph(tmp_path / "ann", changed, array_stamp(*changed), params)
    rebuilt = ensure_graph(tmp_path / "ann", changed, array_stamp(*changed), params)
    assert rebuilt.status.startswith("rebuilt (") and "stale" in rebuilt.status
    stamp = array_stamp(*changed)
    with open(tmp_path / "ann" / "index.faiss", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CacheError, match="index.faiss: missing, truncated or modified"):
        load_index(tmp_path / "ann", changed, stamp, params)
    (tmp_path / "ann" / "graph.npz").write_bytes(b"not a graph")
    assert "graph.npz: missing, truncated or modified" in ensure_graph(tmp_path / "ann", changed, stamp, params).status
    assert load_graph(tmp_path / "ann", changed, stamp, params).status == "loaded"  # both files written afresh
    load_index(tmp_path / "ann", changed, stamp, params)
    record = json.loads((tmp_path / "ann" / "ann.json").read_text())
    assert record["params"]["hnsw_m"] == 4 and record["source"]["stamp"] == stamp


@pytest.mark.parametrize("rerank, exponent", [("aqe", 3.0), ("qe", 0.0)])
def test_query_expansion_over_parts_equals_brute_force_on_the_stack(stacked, rerank, exponent):
    db, parts, queries = stacked
    ids, scores = rerank_topk(Method(rerank=rerank, qe_n=5), parts, queries, k=100)
    expected_scores, expected_ids = search(db, query_expansion(db, queries, 5, exponent), topk=100)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_truncated_diffusion_equals_in_memory_diffusion_on_the_stack(stacked, tmp_path):
    db, parts, queries = stacked
    graph = exact_graph(tmp_path, parts, recall_sample=20)
    diffusion = TruncatedDiffusion(graph.sims, graph.ids, k=K)
    ranker = DiffusionRanker(db, k=K)
    method = Method(rerank="diffusion", k=K, alpha=0.9)
    for truncate in (60, N):
        ids, scores = rerank_topk(method, parts, queries, k=150, diffusion=diffusion, truncate=truncate)
        np.testing.assert_array_equal(ids, ranker.rank(queries, alpha=0.9, truncate=truncate)[:, :150])
        F, _ = ranker.scores(queries, alpha=0.9, truncate=truncate)
        expected = np.maximum(np.take_along_axis(F.T, ids, axis=1), 0)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(ids, ranker.rank(queries, alpha=0.9)[:, :150])  # T = every item: no truncation
    first = diffusion.rank(*rerank_inputs(parts, queries, 60), alpha=0.99, truncate=60, k=60)
    again = diffusion.rank(*rerank_inputs(parts, queries, 60), alpha=0.5, truncate=60, k=60)  # bases kept
    fresh = TruncatedDiffusion(graph.sims, graph.ids, k=K).rank(*rerank_inputs(parts, queries, 60), alpha=0.5,
                                                                  truncate=60, k=60)
    np.testing.assert_array_equal(again[0], fresh[0])
    assert not np.array_equal(first[0], again[0])


def rerank_inputs(parts, queries, width):
    from cbir.topk import exact_topk

    return exact_topk(parts, queries, k=width)


def test_diffusion_needs_the_graph_of_its_k(stacked, tmp_path):
    _, parts, queries = stacked
    graph = exact_graph(tmp_path, parts, recall_sample=20)
    with pytest.raises(ValueError, match="needs the graph of k=20"):
        rerank_topk(Method(rerank="diffusion", k=20), parts, queries,
                    diffusion=TruncatedDiffusion(graph.sims, graph.ids, K))
    with pytest.raises(ValueError, match="fewer than k=20"):
        TruncatedDiffusion(graph.sims, graph.ids, k=20)
