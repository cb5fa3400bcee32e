"""Nearest-neighbour search by inner product (cosine on L2-normalised descriptors), with faiss.

`search` gives full rankings (n_queries, n_db) for evaluation, where every database
item must be ranked, or top-k lists for galleries. The exact index (`flat`) is the
default; `hnsw` and `ivf` are approximate indexes for databases too large for an
exhaustive scan: they return top-k lists only, and items they miss count as never
retrieved. faiss is imported inside the functions so that importing this module
(the dashboard does) stays cheap.
"""
from __future__ import annotations

import numpy as np

INDEXES = ("flat", "hnsw", "ivf")
HNSW_EF_SEARCH = 128  # below this, recall@10 on noisy clustered 24-d data fell to 0.7-0.86


def as_float32_rows(x: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous float32 2-D array (what faiss needs), or a ValueError naming the input."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, dim), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected floating-point descriptors, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def build_index(db: np.ndarray, index: str = "flat", hnsw_m: int = 32, ivf_lists: int | None = None,
                seed: int = 0):
    """A faiss inner-product index over the database rows.

    `hnsw_m` is the HNSW graph degree; `ivf_lists` the number of IVF cells
    (default about sqrt(n), trained by k-means on at most 64 points per cell).
    """
    import faiss

    db = as_float32_rows(db, "database")
    n, dim = db.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(dim)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = max(40, 2 * hnsw_m)
    elif index == "ivf":
        lists = ivf_lists or max(1, min(n // 39, int(np.sqrt(n))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = db[np.sort(rng.choice(n, size=min(n, 64 * lists), replace=False))]
        idx.train(sample)
    else:
        raise ValueError(f"unknown index {index!r}; choose one of {INDEXES}")
    idx.add(db)
    return idx


def search(db: np.ndarray, queries: np.ndarray, topk: int | None = None, index: str = "flat",
           nprobe: int = 16, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rank the database for each query by descending inner product.

    Returns `(scores, ranks)`, both (n_queries, k): k = n_db when `topk` is None
    (the full ranking evaluation needs), else min(topk, n_db). Approximate indexes
    need a `topk`; slots they could not fill hold rank -1 and score -inf.
    `nprobe` (IVF cells visited) and `ef_search` (HNSW beam, default `HNSW_EF_SEARCH`) trade
    speed for recall.
    """
    db = as_float32_rows(db, "database")
    queries = as_float32_rows(queries, "queries")
    if db.shape[1] != queries.shape[1]:
        raise ValueError(f"database has dimension {db.shape[1]} but queries have {queries.shape[1]}")
    n = db.shape[0]
    if n == 0:
        raise ValueError("cannot search an empty database")
    if topk is None:
        if index != "flat":
            raise ValueError(f"index {index!r} is approximate: it cannot give a full ranking; "
                             "pass topk or use index='flat'")
        k = n
    elif topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    else:
        k = min(topk, n)
    idx = build_index(db, index)
    if index == "ivf":
        idx.nprobe = min(nprobe, idx.nlist)
    elif index == "hnsw":
        idx.hnsw.efSearch = max(ef_search or HNSW_EF_SEARCH, k)
    scores, ranks = idx.search(queries, k)
    scores[ranks < 0] = -np.inf
    return scores, ranks.astype(np.int64)


def knn_graph_search(db: np.ndarray, k: int, index: str = "flat", nprobe: int = 16,
                     block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest database items of every database item, itself excluded.

    Returns `(sims, neighbours)`, (n, k) each, by descending similarity; this is
    the input of `cbir.diffusion.affinity_graph(..., neighbours=...)` for
    databases where its exact blocked search is too slow. Rows with fewer than k
    neighbours found are padded with -1 / -inf.
    """
    db = as_float32_rows(db, "database")
    n = db.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, n_db - 1] = [1, {n - 1}], got {k}")
    idx = build_index(db, index)
    if index == "ivf":
        idx.nprobe = min(nprobe, idx.nlist)
    elif index == "hnsw":
        idx.hnsw.efSearch = max(HNSW_EF_SEARCH, k + 1)
    sims = np.empty((n, k), np.float32)
    nbrs = np.empty((n, k), np.int64)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        s, i = idx.search(db[rows], k + 1)
        sims[rows], nbrs[rows] = without_self(s, i, rows)
    sims[nbrs < 0] = -np.inf
    return sims, nbrs


def without_self(sims: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, k+1) lists of items `rows` searched among themselves, made (n, k) others: each
    item's own entry is dropped, or the last when it was not found (ties, approximation)."""
    n, width = ids.shape
    is_self = ids == np.asarray(rows)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), width - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop] = False
    return sims[keep].reshape(n, width - 1), ids[keep].reshape(n, width - 1)
