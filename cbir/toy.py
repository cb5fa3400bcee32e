"""Two-dimensional toy manifolds where diffusion follows the data and kNN does not.

The toy graph differs from the image graph on purpose, since points in the plane
are not unit vectors: a Euclidean kNN graph (self excluded) with Gaussian weights
`exp(-d^2 / sigma^2)`, sigma the median kNN distance, made symmetric by union (an
edge if either end lists the other) so thin noisy manifolds stay connected. The
query is one of the points, inserted in the graph: `y` is its indicator. The
system `(I - alpha S) f = y` and the ranking rule are those of `cbir.diffusion`.

The score is the precision of the query's own cluster among the first `top_n`
ranked points (the query itself left out); by default `top_n` is the number of
other points in its cluster (R-precision), so 1.0 means the cluster is recovered whole.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .diffusion import diffuse, normalize_graph, ranking_from_scores

TOYS = ("blobs", "circles", "moons")


def make_toy(kind: str = "moons", n: int = 400, noise: float = 0.08, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, 2), labels (n,)) from scikit-learn; `noise` is the Gaussian noise
    standard deviation (for blobs, the cluster standard deviation, 3 centres)."""
    from sklearn import datasets

    if n < 4:
        raise ValueError(f"a toy needs at least 4 points, got n={n}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if kind == "moons":
        X, labels = datasets.make_moons(n_samples=n, noise=noise, random_state=seed)
    elif kind == "circles":
        X, labels = datasets.make_circles(n_samples=n, noise=noise, factor=0.5, random_state=seed)
    elif kind == "blobs":
        X, labels = datasets.make_blobs(n_samples=n, centers=3, cluster_std=noise, random_state=seed)
    else:
        raise ValueError(f"unknown toy {kind!r}; choose one of {TOYS}")
    return X, labels.astype(np.int64)


def toy_graph(X: np.ndarray, k: int = 10, sigma: float | None = None) -> sp.csr_matrix:
    """Symmetric Euclidean kNN affinity with Gaussian weights (see module docstring)."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, n - 1] = [1, {n - 1}], got {k}")
    dist, nbrs = NearestNeighbors(n_neighbors=k).fit(X).kneighbors()  # without X: self excluded
    if sigma is None:
        sigma = float(np.median(dist)) or 1.0
    W = sp.csr_matrix((np.exp(-(dist.ravel() / sigma) ** 2), (np.repeat(np.arange(n), k), nbrs.ravel())),
                      shape=(n, n))
    return sp.csr_matrix(W.maximum(W.T))


def cluster_precision(ranks: np.ndarray, labels: np.ndarray, label: int, top_n: int) -> float:
    """Fraction of the first `top_n` ranked points that carry `label`."""
    return float(np.mean(labels[ranks[:top_n]] == label))


def knn_vs_diffusion(X: np.ndarray, labels: np.ndarray, query_index: int, k: int = 10, alpha: float = 0.99,
                     sigma: float | None = None, top_n: int | None = None) -> dict:
    """Rank all other points for one query point by Euclidean distance and by diffusion.

    Returns a dict of arrays for plotting: `knn_ranks`, `diffusion_ranks` (point
    indices, query excluded), `f` (diffusion score per point), `edges` (m, 2)
    graph edges i < j, and `knn_score`, `diffusion_score`, `top_n`.
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    n = X.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if not 0 <= query_index < n:
        raise ValueError(f"query_index must lie in [0, {n - 1}], got {query_index}")
    label = labels[query_index]
    if top_n is None:
        top_n = int(np.sum(labels == label)) - 1
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    closeness = -np.linalg.norm(X - X[query_index], axis=1)
    A = toy_graph(X, k, sigma)
    y = np.zeros(n)
    y[query_index] = 1.0
    f = diffuse(normalize_graph(A), y, alpha)[:, 0]

    def without_query(ranks):
        return ranks[ranks != query_index]

    knn_ranks = without_query(np.argsort(-closeness, kind="stable"))
    diffusion_ranks = without_query(ranking_from_scores(f[:, None], closeness[None, :])[0])
    upper = sp.triu(A, k=1).tocoo()
    return {
        "knn_ranks": knn_ranks,
        "diffusion_ranks": diffusion_ranks,
        "f": f,
        "edges": np.stack([upper.row, upper.col], axis=1).astype(np.int64),
        "knn_score": cluster_precision(knn_ranks, labels, label, top_n),
        "diffusion_score": cluster_precision(diffusion_ranks, labels, label, top_n),
        "top_n": top_n,
    }
