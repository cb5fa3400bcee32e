"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), parametrised as PyRetri does (k1=20, k2=6, lambda=0.3).

The published method, on the pool of queries and database items together:

- `d(p, g)`: squared Euclidean distance of L2-normalised descriptors (`2 - 2 s`),
  each row divided by its maximum over the pool (as the authors' code does);
- `N(p, k)`: the k + 1 nearest items of p, p itself first; the k-reciprocal set
  `R(p, k) = {g in N(p, k) : p in N(g, k)}`;
- expansion: `R*(p) = R(p, k1)` united with every `R(c, k1/2)`, c in `R(p, k1)`, that
  shares more than 2/3 of its items with `R(p, k1)`;
- `V_p[g] = exp(-d(p, g))` over `R*(p)`, normalised to sum 1; local query expansion
  replaces `V_p` by the mean of `V` over `N(p, k2 - 1)` (p and its k2 - 1 nearest);
- Jaccard distance `d_J(p, g) = 1 - sum min(V_p, V_g) / sum max(V_p, V_g)`;
- final distance `(1 - lambda) d_J + lambda d`; the database is ranked by it, ascending.

Sets and vectors are sparse matrices over the pool, so the cost is one blocked
similarity pass (the neighbour lists) plus sparse products. Arithmetic is float64
(the authors' code stores V in float16).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .diffusion import unit_rows

PAIR_CHUNK = 1 << 16  # distances of this many (row, column) pairs at a time


def nearest_in_pool(pool: np.ndarray, n_nearest: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(nearest (n, n_nearest) indices by ascending distance, each row's own item first; max distance per row)."""
    n = pool.shape[0]
    nearest = np.empty((n, n_nearest), np.int64)
    row_max = np.empty(n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = pool[start:stop] @ pool.T
        rows = np.arange(stop - start)
        row_max[start:stop] = np.maximum(2.0 - 2.0 * sims.min(axis=1).astype(np.float64), 0.0)
        sims[rows, rows + start] = np.inf  # the item itself comes first, as at distance 0
        top = np.argpartition(-sims, n_nearest - 1, axis=1)[:, :n_nearest]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        nearest[start:stop] = np.take_along_axis(top, order, axis=1)
    return nearest, row_max


def reciprocal_sets(nearest: np.ndarray, k: int) -> sp.csr_matrix:
    """Binary (n, n): row p marks `R(p, k)`, the items among p's k + 1 nearest that have p among theirs."""
    n = nearest.shape[0]
    forward = nearest[:, :k + 1]
    backward = nearest[forward, :k + 1]  # (n, k + 1, k + 1)
    mutual = (backward == np.arange(n)[:, None, None]).any(axis=2)
    rows = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    return sp.csr_matrix((np.ones(mutual.sum()), (rows[mutual], forward[mutual])), shape=(n, n))


def expanded_sets(nearest: np.ndarray, k1: int) -> sp.csr_matrix:
    """Binary (n, n): row p marks `R*(p)`, `R(p, k1)` with its candidates' `R(c, k1/2)` that overlap it by > 2/3."""
    full = reciprocal_sets(nearest, k1)
    half = reciprocal_sets(nearest, int(np.around(k1 / 2)))
    overlap = sp.csr_matrix((full @ half.T).multiply(full))  # (p, c): |R(p, k1) & R(c, k1/2)| for c in R(p, k1)
    half_sizes = np.asarray(half.sum(axis=1)).ravel()
    overlap.data = (overlap.data > 2.0 / 3.0 * half_sizes[overlap.indices]).astype(np.float64)
    overlap.eliminate_zeros()
    expanded = full + overlap @ half
    expanded.data[:] = 1.0
    return sp.csr_matrix(expanded)


def pair_distances(pool: np.ndarray, row_max: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Normalised distances `d(rows[i], cols[i])`, computed in chunks of pairs."""
    out = np.empty(rows.size)
    for start in range(0, rows.size, PAIR_CHUNK):
        r, c = rows[start:start + PAIR_CHUNK], cols[start:start + PAIR_CHUNK]
        sims = np.einsum("ij,ij->i", pool[r], pool[c]).astype(np.float64)
        out[start:start + PAIR_CHUNK] = np.maximum(2.0 - 2.0 * sims, 0.0)
    return out / np.where(row_max[rows] > 0, row_max[rows], 1.0)


def encodings(pool: np.ndarray, nearest: np.ndarray, row_max: np.ndarray, k1: int, k2: int) -> sp.csr_matrix:
    """The vectors V (n, n) of every pool item after local query expansion, each row summing to 1."""
    n = pool.shape[0]
    expanded = sp.coo_matrix(expanded_sets(nearest, k1))
    weights = np.exp(-pair_distances(pool, row_max, expanded.row, expanded.col))
    V = sp.csr_matrix((weights, (expanded.row, expanded.col)), shape=(n, n))
    V = sp.diags(1.0 / np.asarray(V.sum(axis=1)).ravel()) @ V
    if k2 > 1:
        expansion = sp.csr_matrix((np.full(n * k2, 1.0 / k2), (np.repeat(np.arange(n), k2), nearest[:, :k2].ravel())),
                                  shape=(n, n))
        V = expansion @ V
    return sp.csr_matrix(V)


def jaccard_distances(V: sp.csr_matrix, query_rows: np.ndarray, db_rows: np.ndarray) -> np.ndarray:
    """(n_q, n_db) `1 - sum min(V_p, V_g) / sum max(V_p, V_g)` for the given pool rows."""
    columns = sp.csc_matrix(V[db_rows])
    totals = np.asarray(V.sum(axis=1)).ravel()
    out = np.empty((query_rows.size, db_rows.size))
    for i, p in enumerate(query_rows):
        row = V[p]
        sub = sp.csc_matrix(columns[:, row.indices])
        sub.data = np.minimum(sub.data, np.repeat(row.data, np.diff(sub.indptr)))
        shared = np.asarray(sub.sum(axis=1)).ravel()
        out[i] = 1.0 - shared / (totals[p] + totals[db_rows] - shared)
    return out


def kreciprocal_distances(db: np.ndarray, queries: np.ndarray, k1: int = 20, k2: int = 6,
                          lam: float = 0.3) -> np.ndarray:
    """(n_q, n_db) final distances `(1 - lambda) d_J + lambda d` of Zhong et al. (module docstring)."""
    db = unit_rows(db, "database")
    queries = unit_rows(queries, "queries")
    if db.shape[1] != queries.shape[1]:
        raise ValueError(f"database has dimension {db.shape[1]} but queries have {queries.shape[1]}")
    n_q = queries.shape[0]
    pool = np.concatenate([queries, db])
    if not 1 <= k1 < pool.shape[0] or not 1 <= k2 <= k1 + 1:
        raise ValueError(f"k-reciprocal needs 1 <= k1 < {pool.shape[0]} (queries + database) and "
                         f"1 <= k2 <= k1 + 1; got k1={k1}, k2={k2}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    nearest, row_max = nearest_in_pool(pool, k1 + 1)
    V = encodings(pool, nearest, row_max, k1, k2)
    jaccard = jaccard_distances(V, np.arange(n_q), np.arange(n_q, pool.shape[0]))
    original = np.maximum(2.0 - 2.0 * (queries @ db.T).astype(np.float64), 0.0)
    original /= np.where(row_max[:n_q] > 0, row_max[:n_q], 1.0)[:, None]
    return (1.0 - lam) * jaccard + lam * original


def kreciprocal_ranks(db: np.ndarray, queries: np.ndarray, k1: int = 20, k2: int = 6,
                      lam: float = 0.3) -> np.ndarray:
    """Full rankings (n_q, n_db) by k-reciprocal distance, ascending (ties: database order)."""
    return np.argsort(kreciprocal_distances(db, queries, k1, k2, lam), axis=1, kind="stable")
