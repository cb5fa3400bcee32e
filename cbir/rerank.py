"""Re-ranking after the initial search: query expansion, database augmentation, diffusion.

`rerank(method, db, queries)` is what `python -m cbir evaluate --rerank ...` calls;
it dispatches on `method.rerank`:

- `none`: the plain inner-product ranking;
- `qe`: average query expansion (Chum et al. 2007): the query is replaced by the
  L2-normalised sum of itself and its top `qe_n` database items, then searched again;
- `aqe`: alpha-weighted query expansion (alpha-QE, Radenovic et al. 2018): the
  same sum weighted by `max(s, 0)^AQE_EXPONENT` with the fixed exponent 3 of that
  paper (the query itself has weight 1). `Method.alpha` is diffusion's alpha and is
  not used here;
- `diffusion`: `cbir.diffusion.DiffusionRanker` with `method.k`, `gamma`, `alpha`, `kq`;
- `fsr`: fast spectral ranking (`cbir.spectral.SpectralRanker`), the same diffusion
  from the graph's top `method.fsr_rank` eigenpairs;
- `kreciprocal`: k-reciprocal re-ranking (`cbir.kreciprocal`) with `k1`, `k2`, `kr_lambda`.

Every result is a full ranking (n_queries, n_db) of database indices.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .diffusion import DiffusionRanker, unit_rows
from .method import Method
from .ranking import search, without_self

AQE_EXPONENT = 3.0


def expand(db: np.ndarray, queries: np.ndarray, ranks: np.ndarray, sims: np.ndarray, n: int,
           exponent: float) -> np.ndarray:
    """L2-normalised `q + sum_i w_i x_i` over the first `n` ranked items, `w_i = max(s_i, 0)^exponent`.

    With `exponent = 0` every neighbour has weight 1 (plain averaging).
    `ranks`/`sims` are (n_q, >= n) top lists for the rows of `queries`.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    top, top_sims = ranks[:, :n], sims[:, :n]
    weights = np.maximum(top_sims, 0.0) ** exponent if exponent else np.ones_like(top_sims)
    n_q = top.shape[0]
    neighbour_sum = sp.csr_matrix((weights.ravel(), top.ravel(), np.arange(0, n_q * n + 1, n)),
                                  shape=(n_q, db.shape[0])) @ db
    expanded = queries + neighbour_sum
    return unit_rows(expanded, "expanded queries")


def query_expansion(db: np.ndarray, queries: np.ndarray, n: int, exponent: float = 0.0) -> np.ndarray:
    """Expanded queries: average QE (`exponent=0`) or alpha-QE (`exponent=3`)."""
    db = unit_rows(db, "database")
    queries = unit_rows(queries, "queries")
    sims, ranks = search(db, queries, topk=n)
    return expand(db, queries, ranks, sims, min(n, db.shape[0]), exponent)


def database_augmentation(db: np.ndarray, n: int, exponent: float = AQE_EXPONENT) -> np.ndarray:
    """Database-side augmentation (DBA): each item becomes the weighted sum of itself and its top n others.

    Weights as in `expand` (`exponent=3`: alpha-DBA, Radenovic et al.; 0: plain
    average, Arandjelovic & Zisserman 2012). Apply it to the database before
    ranking; queries are searched against the augmented database unchanged.
    """
    db = unit_rows(db, "database")
    if not 1 <= n < db.shape[0]:
        raise ValueError(f"n must lie in [1, n_db - 1] = [1, {db.shape[0] - 1}], got {n}")
    sims, ranks = search(db, db, topk=n + 1)
    other_sims, others = without_self(sims, ranks, np.arange(db.shape[0]))
    return expand(db, db, others, other_sims, n, exponent)


def graph_ranker(db: np.ndarray, method: Method):
    """The ranker of a graph re-ranking built from the descriptors: the diffusion graph, or for
    `fsr` its top eigenpairs (`cbir.spectral.stored_ranker` reads stored ones instead)."""
    graph = DiffusionRanker(db, method.k, method.gamma)
    if method.rerank == "diffusion":
        return graph
    from .spectral import SpectralRanker, spectrum
    return SpectralRanker(graph.db, *spectrum(graph.S, method.fsr_rank), gamma=method.gamma, k=method.k)


def rerank(method: Method, db: np.ndarray, queries: np.ndarray, ranker=None) -> np.ndarray:
    """Full rankings (n_q, n_db) of the database for `method.rerank`.

    `ranker` reuses a diffusion graph (`DiffusionRanker`) built for this database with
    `method.k` and `method.gamma`, or for `fsr` its eigenpairs (`SpectralRanker`, e.g.
    `cbir.spectral.stored_spectral_ranker`); otherwise one is built.
    """
    if method.rerank == "none":
        return search(db, queries)[1]
    if method.rerank in ("qe", "aqe"):
        exponent = AQE_EXPONENT if method.rerank == "aqe" else 0.0
        return search(db, query_expansion(db, queries, method.qe_n, exponent))[1]
    if method.rerank == "diffusion":
        if ranker is None:
            ranker = graph_ranker(db, method)
        elif (ranker.k, ranker.gamma, ranker.db.shape) != (method.k, method.gamma, np.shape(db)):
            raise ValueError(f"the diffusion graph was built with k={ranker.k}, gamma={ranker.gamma} "
                             f"on {ranker.db.shape} descriptors; the method asks for k={method.k}, "
                             f"gamma={method.gamma} on {np.shape(db)}")
        return ranker.rank(queries, alpha=method.alpha, kq=method.kq)
    if method.rerank == "fsr":
        if ranker is None:
            ranker = graph_ranker(db, method)
        elif (ranker.k, ranker.gamma, ranker.db.shape) != (method.k, method.gamma, np.shape(db)) \
                or ranker.rank_used != min(method.fsr_rank, np.shape(db)[0]):
            raise ValueError(f"the eigenpairs were computed for rank {ranker.rank_used}, k={ranker.k}, "
                             f"gamma={ranker.gamma} on {ranker.db.shape} descriptors; the method asks for rank "
                             f"{method.fsr_rank}, k={method.k}, gamma={method.gamma} on {np.shape(db)}")
        return ranker.rank(queries, alpha=method.alpha, kq=method.kq)
    if method.rerank == "kreciprocal":
        from .kreciprocal import kreciprocal_ranks

        return kreciprocal_ranks(db, queries, method.k1, method.k2, method.kr_lambda)
    raise ValueError(f"unknown re-ranking {method.rerank!r}")
