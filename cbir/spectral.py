"""Fast spectral ranking (Iscen et al., CVPR 2018): diffusion from the top-r eigenpairs of S.

With `S = U diag(lambda) U^T` restricted to its r largest eigenvalues, the diffusion
`(I - alpha S)^-1 y` becomes `U diag(1 / (1 - alpha lambda)) U^T y`: the paper's
`U diag((1 - alpha) / (1 - alpha lambda)) U^T y` divided by `(1 - alpha)`, the scale
every solver of `cbir.diffusion` returns. At full rank it is the exact solve; below,
the spectrum's small eigenvalues are dropped. The eigenpairs depend on the graph
(database, k, gamma) only, so they are computed once (`spectrum`), stored next to the
descriptors (`stored_spectrum`), and an alpha change or a query not in the database
(an uploaded image) costs `U^T y` over the query's kq items and one (n x r) product.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .cache import Entry
from .method import Method
from .diffusion import (DiffusionRanker, affinity_graph, normalize_graph, ranking_from_scores, unit_rows,
                        vectors_from_similarities)
from .neighbours import load_arrays, neighbours_for, store_arrays

DEFAULT_RANK = 256
RESOLUTION = 1e-6  # float32 eigenvectors: scores below this share of a query's largest are noise
# `auto` eigensolver: dense up to DENSE_SMALL items, or for more than DENSE_FRACTION of the
# spectrum up to DENSE_LARGEST items (a dense S of 16384 takes 2 GB); eigsh otherwise. Measured
# at 6392 items, r = 256: eigsh 47 s, dense 174 s; at 1500 items, r = 256: eigsh 15 s, dense 0.6 s.
DENSE_SMALL = 2048
DENSE_FRACTION = 0.1
DENSE_LARGEST = 16384


def spectrum(S: sp.spmatrix, rank: int, solver: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """`(values (r,), vectors (n, r) float32)`: the r = min(rank, n) largest eigenpairs of symmetric S, descending.

    `solver`: `dense` (LAPACK `eigh` on the dense matrix, only the wanted eigenpairs),
    `eigsh` (scipy's implicitly restarted Lanczos), or `auto`: dense for small databases
    and large shares of the spectrum, where it is faster (a clustered graph has many
    eigenvalues near 1, which Lanczos resolves slowly), eigsh otherwise (constants above).
    """
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    n = S.shape[0]
    if rank < 1:
        raise ValueError(f"the FSR rank must be at least 1, got {rank}")
    if solver not in ("auto", "dense", "eigsh"):
        raise ValueError(f"unknown eigensolver {solver!r}; choose auto, dense or eigsh")
    r = min(rank, n)
    if solver == "auto":
        dense = n <= DENSE_SMALL or (r > DENSE_FRACTION * n and n <= DENSE_LARGEST)
        solver = "dense" if dense else "eigsh"
    if solver == "dense" or r >= n - 1:
        values, vectors = eigh(S.toarray(), subset_by_index=[n - r, n - 1])
    else:
        v0 = np.random.default_rng(0).standard_normal(n)
        values, vectors = eigsh(sp.csr_matrix(S, dtype=np.float64), k=r, which="LA", v0=v0)
    order = np.argsort(-values)
    return values[order], np.ascontiguousarray(vectors[:, order], dtype=np.float32)


def projections(vectors: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """`U^T Y` (r, n_q) from Y's non-zero entries only (a query's kq neighbours)."""
    Y = sp.csc_matrix(np.asarray(Y).reshape(vectors.shape[0], -1), dtype=vectors.dtype)
    return np.asarray((Y.T @ vectors).T, dtype=np.float64)


def filtered(values: np.ndarray, vectors: np.ndarray, P: np.ndarray, alpha: float) -> np.ndarray:
    """F (n, n_q) = `U diag(1 / (1 - alpha lambda)) P` for projections `P = U^T Y`."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    return vectors @ (P / (1.0 - alpha * values)[:, None]).astype(vectors.dtype)


def spectral_scores(values: np.ndarray, vectors: np.ndarray, Y: np.ndarray, alpha: float) -> np.ndarray:
    """FSR's F (n, n_q) for the query vectors Y (n, n_q), on the scale of the exact solve."""
    return filtered(values, vectors, projections(vectors, Y), alpha)


class SpectralRanker:
    """FSR ranking over one database from its stored eigenpairs; no graph needed at query time.

    Keeps, for the last query batch and kq, the similarities, the initial order and
    `U^T Y`, so an alpha change costs one (n x r) x (r x n_q) product and the sort.
    Share an instance read-only: only that one-entry query cache changes.
    """

    def __init__(self, db: np.ndarray, values: np.ndarray, vectors: np.ndarray, gamma: float = 3.0, k: int = 50):
        """`k` and `gamma`: the graph the eigenpairs are of (checked against a method before use)."""
        self.db = unit_rows(db, "database")
        if vectors.shape != (self.db.shape[0], values.size):
            raise ValueError(f"eigenvectors of shape {vectors.shape} do not fit {self.db.shape[0]} database "
                             f"items and {values.size} eigenvalues")
        self.values, self.vectors, self.gamma, self.k = values, vectors, gamma, k
        self._batch: dict | None = None

    @property
    def rank_used(self) -> int:
        return self.values.size

    def _query_batch(self, queries: np.ndarray, kq: int) -> dict:
        queries = unit_rows(queries, "queries")
        if queries.shape[1] != self.db.shape[1]:
            raise ValueError(f"database has dimension {self.db.shape[1]} but queries have {queries.shape[1]}")
        digest = hashlib.blake2b(f"{queries.shape} {kq}".encode(), digest_size=16)
        digest.update(memoryview(queries))
        key = digest.digest()
        if self._batch is None or self._batch["key"] != key:
            sims = queries @ self.db.T
            Y = vectors_from_similarities(sims, kq, self.gamma)
            self._batch = {"key": key, "sims": sims, "initial": np.argsort(-sims, axis=1, kind="stable"),
                           "projections": projections(self.vectors, Y)}
        return self._batch

    def scores(self, queries: np.ndarray, alpha: float = 0.99, kq: int = 10) -> np.ndarray:
        """F (n_db, n_q), on the scale of the exact solve of `(I - alpha S) F = Y`."""
        return filtered(self.values, self.vectors, self._query_batch(queries, kq)["projections"], alpha)

    def rank(self, queries: np.ndarray, alpha: float = 0.99, kq: int = 10) -> np.ndarray:
        """Full rankings (n_q, n_db) by FSR score; scores under `RESOLUTION` of the query's
        largest count as unreached and follow in initial order, as CG's zeros do."""
        F = self.scores(queries, alpha, kq)
        F[F < RESOLUTION * F.max(axis=0, initial=0.0)] = 0.0
        batch = self._query_batch(queries, kq)
        return ranking_from_scores(F, batch["sims"], batch["initial"])


def spectrum_path(entry: Entry, k: int, gamma: float, rank: int) -> Path:
    return Path(entry.path) / f"spectrum-k{k}-g{gamma:g}-r{rank}.npz"


def stored_spectrum(entry: Entry, k: int = 50, gamma: float = 3.0, rank: int = DEFAULT_RANK,
                    A: sp.spmatrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The entry's graph eigenpairs (`spectrum`): from its directory, else computed (on `A`
    when the caller has the graph, else from the stored neighbour list) and stored there."""
    n = len(entry.db)
    r = min(rank, n)
    db_sha256 = entry.manifest["files"]["db.npy"]
    path = spectrum_path(entry, k, gamma, r)
    found = load_arrays(path, db_sha256, ("values", "vectors"))
    if found is not None and found["vectors"].shape == (n, r) == (n, found["values"].size):
        return found["values"], found["vectors"]
    if A is None:
        A = affinity_graph(entry.db, k, gamma, neighbours_for(entry, k))
    values, vectors = spectrum(normalize_graph(A), r)
    store_arrays(path, db_sha256, values=values, vectors=vectors)
    return values, vectors


def stored_spectral_ranker(entry: Entry, k: int = 50, gamma: float = 3.0, rank: int = DEFAULT_RANK,
                           A: sp.spmatrix | None = None) -> SpectralRanker:
    """A `SpectralRanker` on the entry's stored (or newly stored) eigenpairs."""
    return SpectralRanker(entry.db, *stored_spectrum(entry, k, gamma, rank, A), gamma=gamma, k=k)


def stored_ranker(entry: Entry, method: Method):
    """The graph ranker `cbir.rerank.rerank` takes for `method` on this entry, from its stored
    neighbour list and eigenpairs (None for re-rankings without a graph)."""
    if method.rerank == "diffusion":
        return DiffusionRanker(entry.db, method.k, method.gamma, neighbours_for(entry, method.k))
    if method.rerank == "fsr":
        return stored_spectral_ranker(entry, method.k, method.gamma, method.fsr_rank)
    return None
