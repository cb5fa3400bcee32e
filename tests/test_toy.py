"""Toy manifolds (cbir.toy): diffusion follows the manifold where kNN does not."""
import numpy as np
import pytest

from cbir.toy import TOYS, cluster_precision, knn_vs_diffusion, make_toy, toy_graph


def nearest(X, labels, label, point):
    candidates = np.flatnonzero(labels == label)
    return int(candidates[np.argmin(np.linalg.norm(X[candidates] - point, axis=1))])


@pytest.mark.parametrize("kind", TOYS)
def test_make_toy_shapes_and_reproducibility(kind):
    X, labels = make_toy(kind, n=120, noise=0.05, seed=3)
    assert X.shape == (120, 2) and labels.shape == (120,)
    assert len(np.unique(labels)) == (3 if kind == "blobs" else 2)
    X2, labels2 = make_toy(kind, n=120, noise=0.05, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(labels, labels2)


def test_make_toy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy"):
        make_toy("spirals")
    with pytest.raises(ValueError, match="noise"):
        make_toy("moons", noise=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diffusion_beats_knn_on_moons(seed):
    X, labels = make_toy("moons", n=400, noise=0.08, seed=seed)
    # The tip of the upper moon at (1, 0) nests in the lower moon's bend:
    # Euclidean neighbours cross over, the graph does not.
    query = nearest(X, labels, 0, (1.0, 0.0))
    result = knn_vs_diffusion(X, labels, query, k=10, alpha=0.99)
    assert result["diffusion_score"] >= 0.85
    assert result["diffusion_score"] > result["knn_score"] + 0.4
    assert result["top_n"] == np.sum(labels == 0) - 1


def test_diffusion_beats_knn_on_circles():
    X, labels = make_toy("circles", n=400, noise=0.05, seed=0)
    query = nearest(X, labels, 1, (0.5, 0.0))  # on the inner circle
    result = knn_vs_diffusion(X, labels, query)
    assert result["diffusion_score"] >= 0.95 > result["knn_score"] + 0.2


def test_result_arrays_for_plotting():
    X, labels = make_toy("moons", n=150, noise=0.05, seed=4)
    result = knn_vs_diffusion(X, labels, 7, k=8, top_n=20)
    for key in ("knn_ranks", "diffusion_ranks"):
        assert sorted(result[key]) == [i for i in range(150) if i != 7]
    assert result["f"].shape == (150,) and result["f"][7] == result["f"].max()
    edges = result["edges"]
    assert edges.shape[1] == 2 and np.all(edges[:, 0] < edges[:, 1])
    assert len({tuple(e) for e in edges}) == len(edges)
    knn_order = np.argsort(np.linalg.norm(X - X[7], axis=1), kind="stable")
    np.testing.assert_array_equal(result["knn_ranks"], knn_order[knn_order != 7])
    assert result["knn_score"] == cluster_precision(result["knn_ranks"], labels, labels[7], 20)


def test_toy_graph_is_symmetric_gaussian_knn():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    A = toy_graph(X, k=1, sigma=1.0).toarray()
    # 0 <-> 1 at distance 1 (both list each other); 2 lists 1 at distance 2 (union keeps it).
    np.testing.assert_allclose(A, [[0, np.exp(-1), 0], [np.exp(-1), 0, np.exp(-4)], [0, np.exp(-4), 0]])


def test_cluster_precision_by_hand():
    assert cluster_precision(np.array([3, 1, 2, 0]), np.array([0, 1, 1, 0]), 1, 2) == 0.5
