"""Query expansion, database augmentation and the rerank dispatcher (cbir.rerank)."""
import numpy as np
import pytest

from cbir.diffusion import DiffusionRanker
from cbir.method import Method
from cbir.ranking import search
from cbir.rerank import AQE_EXPONENT, database_augmentation, query_expansion, rerank
from synthetic import clustered_unit_vectors


def unit(*rows):
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Three database vectors and a query, in the plane: sims q.x0 = 0.8, q.x1 = 0.6, q.x2 = 0.
DB = unit([1, 0], [0, 1], [-1, 0])
Q = unit([0.8, 0.6])


def clustered(n=200, dim=16, clusters=5, noise=0.7, seed=0):
    return clustered_unit_vectors(n, dim, clusters, noise, seed)[0]


def test_average_query_expansion_by_hand():
    # Top 2 of q are x0 and x1: q' = (q + x0 + x1) / |.| = (1.8, 1.6) / |.|.
    np.testing.assert_allclose(query_expansion(DB, Q, n=2), unit([1.8, 1.6]), rtol=1e-6)


def test_alpha_query_expansion_by_hand():
    # Weights 0.8^3 and 0.6^3: q' = (0.8 + 0.512, 0.6 + 0.216) / |.|.
    assert AQE_EXPONENT == 3.0
    np.testing.assert_allclose(query_expansion(DB, Q, n=2, exponent=3.0), unit([1.312, 0.816]), rtol=1e-6)


def test_database_augmentation_by_hand():
    # db = 0, 60, 90 degrees. Nearest other item: 0 -> 60 (0.5), 60 -> 90 (cos 30), 90 -> 60 (cos 30).
    t = np.radians([0, 60, 90])
    db = np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)
    w = np.cos(np.radians(30))
    plain = database_augmentation(db, n=1, exponent=0.0)
    np.testing.assert_allclose(plain, unit(db[0] + db[1], db[1] + db[2], db[2] + db[1]), rtol=1e-6)
    weighted = database_augmentation(db, n=1)
    np.testing.assert_allclose(weighted, unit(db[0] + 0.125 * db[1], db[1] + w ** 3 * db[2], db[2] + w ** 3 * db[1]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(weighted, axis=1), 1.0, rtol=1e-6)


def test_database_augmentation_rejects_a_bad_n():
    with pytest.raises(ValueError, match="n must lie"):
        database_augmentation(DB, n=3)


def test_rerank_none_is_the_plain_ranking():
    db, queries = clustered(seed=1), clustered(n=4, seed=2)
    np.testing.assert_array_equal(rerank(Method(), db, queries), search(db, queries)[1])


@pytest.mark.parametrize("name, exponent", [("qe", 0.0), ("aqe", AQE_EXPONENT)])
def test_rerank_query_expansion_searches_with_the_expanded_query(name, exponent):
    db, queries = clustered(seed=3), clustered(n=4, seed=4)
    method = Method(rerank=name, qe_n=5)
    expected = search(db, query_expansion(db, queries, 5, exponent))[1]
    ranks = rerank(method, db, queries)
    np.testing.assert_array_equal(ranks, expected)
    assert ranks.shape == (4, len(db))
    assert not np.array_equal(ranks, search(db, queries)[1])


def test_rerank_diffusion_uses_the_method_parameters_and_a_shared_ranker():
    db, queries = clustered(seed=5), clustered(n=4, seed=6)
    method = Method(rerank="diffusion", alpha=0.9, k=8, kq=5, gamma=2.0)
    expected = DiffusionRanker(db, k=8, gamma=2.0).rank(queries, alpha=0.9, kq=5)
    np.testing.assert_array_equal(rerank(method, db, queries), expected)
    ranker = DiffusionRanker(db, k=8, gamma=2.0)
    np.testing.assert_array_equal(rerank(method, db, queries, ranker=ranker), expected)
    with pytest.raises(ValueError, match="k=8"):
        rerank(method, db, queries, ranker=DiffusionRanker(db, k=9, gamma=2.0))


def test_every_rerank_returns_full_permutations():
    db, queries = clustered(seed=7), clustered(n=3, seed=8)
    for name in ("none", "qe", "aqe", "diffusion"):
        ranks = rerank(Method(rerank=name, k=10), db, queries)
        assert ranks.shape == (3, len(db)), name
        assert all(sorted(row) == list(range(len(db))) for row in ranks), name
