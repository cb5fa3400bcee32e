"""Inner-product search with faiss (cbir.ranking)."""
import numpy as np
import pytest

from cbir.diffusion import knn_neighbours
from cbir.ranking import knn_graph_search, search
from synthetic import clustered_unit_vectors


def clustered(n=400, dim=24, clusters=8, noise=0.5, seed=0):
    return clustered_unit_vectors(n, dim, clusters, noise, seed)[0]


def test_full_ranking_is_every_item_by_descending_inner_product():
    db, queries = clustered(seed=1), clustered(n=7, seed=2)
    scores, ranks = search(db, queries)
    assert ranks.shape == scores.shape == (7, len(db))
    assert ranks.dtype == np.int64
    expected = np.argsort(-(queries @ db.T), axis=1)
    np.testing.assert_array_equal(ranks, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ db.T, expected, axis=1), rtol=1e-5, atol=1e-6)
    assert all(sorted(row) == list(range(len(db))) for row in ranks)


def test_query_identical_to_a_database_item_ranks_it_first():
    db = clustered(seed=3)
    _, ranks = search(db, db[[5, 17, 200]])
    assert ranks[:, 0].tolist() == [5, 17, 200]


def test_topk_is_the_prefix_of_the_full_ranking_and_is_clipped_to_the_database():
    db, queries = clustered(seed=4), clustered(n=3, seed=5)
    _, full = search(db, queries)
    scores, top = search(db, queries, topk=10)
    assert top.shape == (3, 10)
    np.testing.assert_array_equal(top, full[:, :10])
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert search(db, queries, topk=10_000)[1].shape == (3, len(db))


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_indexes_find_most_true_neighbours(index):
    db, queries = clustered(n=2000, seed=6), clustered(n=20, seed=7)
    _, exact = search(db, queries, topk=10)
    _, approx = search(db, queries, topk=10, index=index)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, f"{index} recall@10 {recall:.2f}"


def test_approximate_index_refuses_a_full_ranking():
    db = clustered(n=100)
    with pytest.raises(ValueError, match="approximate"):
        search(db, db[:2], index="hnsw")


def test_bad_inputs_are_rejected():
    db = clustered(n=50)
    with pytest.raises(ValueError, match="dimension"):
        search(db, np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        search(db, db[0])
    with pytest.raises(ValueError, match="unknown index"):
        search(db, db[:1], topk=3, index="lsh")
    with pytest.raises(ValueError, match="topk"):
        search(db, db[:1], topk=0)
    with pytest.raises(ValueError, match="empty"):
        search(np.zeros((0, 24), np.float32), db[:1])


def test_knn_graph_search_excludes_self_and_matches_the_exact_blocked_search():
    db = clustered(n=300, seed=8)
    sims, nbrs = knn_graph_search(db, 6, block=64)
    exact_sims, exact_nbrs = knn_neighbours(db, 6)
    np.testing.assert_array_equal(nbrs, exact_nbrs)
    np.testing.assert_allclose(sims, exact_sims, rtol=1e-5, atol=1e-6)
    assert not np.any(nbrs == np.arange(300)[:, None])


def test_knn_graph_search_with_ivf_feeds_the_affinity_graph():
    from cbir.diffusion import affinity_graph

    db = clustered(n=1500, seed=9)
    approx = affinity_graph(db, k=10, neighbours=knn_graph_search(db, 10, index="ivf"))
    exact = affinity_graph(db, k=10)
    assert abs(approx - approx.T).max() == 0
    shared = approx.multiply(exact).nnz / exact.nnz
    assert shared >= 0.9, f"only {shared:.2f} of the exact mutual edges found"
