"""Diffusion re-ranking on a kNN graph of the database (Iscen et al. 2017, "global diffusion").

The semantics are those of REFERENCE.md, "Diffusion":

- affinity `A`: kNN graph by dot product of L2-normalised descriptors (self
  excluded), an edge kept only if it is mutual, weight `max(s, 0)^gamma`, zero diagonal;
- `S = D^-1/2 A D^-1/2` with `D = diag(A 1)`; isolated nodes get a zero row;
- a query is not inserted into the graph: its vector `y` holds its top-kq
  similarities to the database as `max(s, 0)^gamma`, zero elsewhere;
- the scores `f` solve `(I - alpha S) f = y`, for all queries at once (one column
  each) by a blocked conjugate gradient. The seed's iteration
  `f_t = alpha S f_(t-1) + (1 - alpha) y` (Jacobi's method) converges to
  `(1 - alpha) f`; it is offered as a solver and rescaled, so every solver returns
  the same `f` and, once converged, the same ranking;
- the ranking sorts the database by `f` descending; items with `f <= 0` (not
  reachable from the query's neighbours, or numerically zero: the exact `f` is
  never negative) follow, in the order of their initial similarity;
- truncation (large databases): each query diffuses only over its top N items of
  the initial ranking, on the re-normalised sub-graph of `A`; the rest follow in
  initial order.

`DiffusionRanker` builds the graph once per (database, k, gamma) and keeps CG's
Krylov (Lanczos) basis per query batch, which does not depend on alpha, so an
alpha change re-solves in milliseconds (see `bench/diffusion.py`).

Only numpy and scipy are used, so the dashboard can import this module cheaply.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .ranking import as_float32_rows

SOLVERS = ("cg", "iteration", "scipy-cg")
RANKER_SOLVERS = ("krylov",) + SOLVERS
BASIS_ALPHA = 0.99  # one basis built for this alpha normally serves the whole slider range below it


def unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """float32 rows of unit L2 norm (zero rows stay zero); copies only when needed."""
    x = as_float32_rows(x, name)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if not np.all(np.isfinite(norms)):
        raise ValueError(f"{name}: descriptors contain NaN or infinite values")
    if np.allclose(norms[norms > 0], 1.0, atol=1e-5):
        return x
    return x / np.where(norms > 0, norms, 1.0)[:, None]


def knn_neighbours(db: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every database item by dot product, itself excluded.

    Blocked matrix products and `argpartition`, so memory stays at `block x n`.
    Returns `(sims, neighbours)`, (n, k) each, by descending similarity.
    """
    db = unit_rows(db, "database")
    n = db.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, n_db - 1] = [1, {n - 1}], got {k}")
    sims = np.empty((n, k), np.float32)
    nbrs = np.empty((n, k), np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        block_sims = db[start:stop] @ db.T
        rows = np.arange(stop - start)
        block_sims[rows, rows + start] = -np.inf
        top = np.argpartition(-block_sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(block_sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        nbrs[start:stop] = np.take_along_axis(top, order, axis=1)
        sims[start:stop] = np.take_along_axis(top_sims, order, axis=1)
    return sims, nbrs


def affinity_graph(db: np.ndarray, k: int = 50, gamma: float = 3.0,
                   neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> sp.csr_matrix:
    """Mutual kNN affinity `A` (symmetric, zero diagonal), weights `max(s, 0)^gamma`.

    `neighbours` = `(sims, indices)` of shape (n, >= k), self excluded, replaces
    the exact search (e.g. `cbir.ranking.knn_graph_search(db, k, index="ivf")`
    for large databases); -1 entries are ignored.
    """
    n = np.asarray(db).shape[0]
    if neighbours is None:
        sims, nbrs = knn_neighbours(db, k)
    else:
        sims, nbrs = (np.asarray(a) for a in neighbours)
        if sims.shape != nbrs.shape or sims.ndim != 2 or sims.shape[0] != n or sims.shape[1] < k:
            raise ValueError(f"neighbours must be two (n_db={n}, >= k={k}) arrays, "
                             f"got {sims.shape} and {nbrs.shape}")
        sims, nbrs = sims[:, :k], nbrs[:, :k]
    return mutual_graph(sims, nbrs, gamma)


def mutual_graph(sims: np.ndarray, nbrs: np.ndarray, gamma: float = 3.0) -> sp.csr_matrix:
    """`A` of `affinity_graph` from neighbour lists (n, k) alone: a graph too large to hold its
    descriptors in float32 (database + a million distractors) is built from a stored list."""
    n = nbrs.shape[0]
    rows = np.repeat(np.arange(n), sims.shape[1])
    cols = nbrs.ravel()
    found = (cols >= 0) & (cols != rows)
    pattern = sp.csr_matrix((np.ones(found.sum()), (rows[found], cols[found])), shape=(n, n))
    weights = sp.csr_matrix((np.maximum(sims.ravel()[found].astype(np.float64), 0.0) ** gamma,
                             (rows[found], cols[found])), shape=(n, n))
    mutual = pattern.multiply(pattern.T)
    A = sp.csr_matrix(weights.multiply(mutual))
    A = A.maximum(A.T)  # exact dot products are symmetric; this removes float noise of approximate search
    A.eliminate_zeros()
    A.sort_indices()
    return A


def normalize_graph(A: sp.spmatrix) -> sp.csr_matrix:
    """`S = D^-1/2 A D^-1/2`; rows and columns of zero-degree nodes stay zero."""
    A = sp.csr_matrix(A, dtype=np.float64)
    degree = np.asarray(A.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    D = sp.diags(inv_sqrt)
    S = sp.csr_matrix(D @ A @ D)
    S.sort_indices()
    return S


def query_similarities(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n_q, n_db) dot products of L2-normalised queries and database items."""
    db = unit_rows(db, "database")
    queries = unit_rows(queries, "queries")
    if db.shape[1] != queries.shape[1]:
        raise ValueError(f"database has dimension {db.shape[1]} but queries have {queries.shape[1]}")
    return queries @ db.T


def vectors_from_similarities(sims: np.ndarray, kq: int = 10, gamma: float = 3.0) -> np.ndarray:
    """Y (n_db, n_q): each query's top-kq similarities as `max(s, 0)^gamma`, zero elsewhere."""
    sims = np.asarray(sims)
    n_q, n = sims.shape
    if kq < 1:
        raise ValueError(f"kq must be at least 1, got {kq}")
    kq = min(kq, n)
    top = np.argpartition(-sims, kq - 1, axis=1)[:, :kq]
    Y = np.zeros((n, n_q))
    cols = np.repeat(np.arange(n_q), kq)
    Y[top.ravel(), cols] = np.maximum(np.take_along_axis(sims, top, axis=1).ravel(), 0.0) ** gamma
    return Y


def query_vectors(db: np.ndarray, queries: np.ndarray, kq: int = 10, gamma: float = 3.0) -> np.ndarray:
    """Y (n_db, n_q) for queries not inserted into the graph (see module docstring)."""
    return vectors_from_similarities(query_similarities(db, queries), kq, gamma)


def _check_system(S, Y, alpha) -> np.ndarray:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != S.shape[0]:
        raise ValueError(f"Y must have shape (n_db={S.shape[0]}, n_q), got {Y.shape}")
    return Y


def _warn_unconverged(name: str, iterations: np.ndarray, maxiter: int, converged: np.ndarray) -> None:
    if not converged.all():
        warnings.warn(f"{name}: {int((~converged).sum())} of {converged.size} columns did not reach "
                      f"the tolerance in {maxiter} iterations", RuntimeWarning, stacklevel=3)


def conjugate_gradient(S: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                       maxiter: int | None = None, x0: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Solve `(I - alpha S) F = Y` for every column at once by blocked conjugate gradient.

    One sparse matrix-matrix product per iteration serves all columns; step sizes
    are per column, and a column leaves the block once its relative residual
    `|r| / |y|` is at most `tol`. `x0` is a starting guess (default zero).
    Returns `(F, iterations per column)`.
    """
    Y = _check_system(S, Y, alpha)
    n, m = Y.shape
    maxiter = 10 * n if maxiter is None else maxiter
    F = np.zeros((n, m)) if x0 is None else np.array(x0, dtype=np.float64).reshape(n, m)
    iterations = np.zeros(m, np.int64)
    target = tol ** 2 * np.einsum("ij,ij->j", Y, Y)
    residual = Y if x0 is None else Y - (F - alpha * (S @ F))
    rr = np.einsum("ij,ij->j", residual, residual)
    converged = rr <= target
    active = np.flatnonzero(~converged)
    X = F[:, active]
    R = residual[:, active].copy()
    P = R.copy()
    rr = rr[active]
    for it in range(1, maxiter + 1):
        if active.size == 0:
            break
        Q = P - alpha * (S @ P)
        step = rr / np.einsum("ij,ij->j", P, Q)
        X += step * P
        R -= step * Q
        rr_new = np.einsum("ij,ij->j", R, R)
        P *= rr_new / rr
        P += R
        rr = rr_new
        iterations[active] = it
        done = rr <= target[active]
        if done.any():
            F[:, active[done]] = X[:, done]
            converged[active[done]] = True
            keep = ~done
            active, X, R, P, rr = active[keep], X[:, keep], R[:, keep], P[:, keep], rr[keep]
    F[:, active] = X
    _warn_unconverged("conjugate gradient", iterations, maxiter, converged)
    return F, iterations


def jacobi_iteration(S: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                     maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The seed's iteration `f_t = alpha S f_(t-1) + (1 - alpha) y` from `f_0 = 0`, per column.

    `f_(t+1) - f_t` is the residual of `f_t` in `(I - alpha S) f = (1 - alpha) y`,
    so a column stops when `|f_(t+1) - f_t| <= tol (1 - alpha) |y|`: the same
    relative-residual test as `conjugate_gradient`. The default `maxiter`,
    `log(tol) / log(alpha)`, guarantees it (the residual shrinks at least by alpha
    per step). Returns `(f / (1 - alpha), iterations per column)`, i.e. the
    solution of `(I - alpha S) f = y` like the other solvers.
    """
    Y = _check_system(S, Y, alpha)
    n, m = Y.shape
    if maxiter is None:
        maxiter = 1 if alpha == 0.0 else math.ceil(math.log(tol) / math.log(alpha)) + 1
    F = np.zeros((n, m))
    iterations = np.zeros(m, np.int64)
    target = (tol * (1.0 - alpha)) ** 2 * np.einsum("ij,ij->j", Y, Y)
    converged = target == 0.0
    active = np.flatnonzero(~converged)
    base = (1.0 - alpha) * Y[:, active]
    f = base.copy()
    for it in range(1, maxiter + 1):
        if active.size == 0:
            break
        f_next = alpha * (S @ f) + base
        change = np.einsum("ij,ij->j", f_next - f, f_next - f)
        f = f_next
        iterations[active] = it
        done = change <= target[active]
        if done.any():
            F[:, active[done]] = f[:, done]
            converged[active[done]] = True
            keep = ~done
            active, f, base = active[keep], f[:, keep], base[:, keep]
    F[:, active] = f
    _warn_unconverged("iteration", iterations, maxiter, converged)
    return F / (1.0 - alpha), iterations


def scipy_conjugate_gradient(S: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                             maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`scipy.sparse.linalg.cg` once per column: the slow baseline the blocked solver is measured against."""
    from scipy.sparse.linalg import cg

    Y = _check_system(S, Y, alpha)
    n, m = Y.shape
    maxiter = 10 * n if maxiter is None else maxiter
    system = sp.csr_matrix(sp.identity(n) - alpha * S)
    F = np.zeros((n, m))
    iterations = np.zeros(m, np.int64)
    converged = np.ones(m, bool)
    for j in range(m):
        count = [0]

        def step(_, count=count):
            count[0] += 1

        F[:, j], info = cg(system, Y[:, j], rtol=tol, atol=0.0, maxiter=maxiter, callback=step)
        iterations[j] = count[0]
        converged[j] = info == 0
    _warn_unconverged("scipy cg", iterations, maxiter, converged)
    return F, iterations


@dataclass(frozen=True, eq=False)
class KrylovBasis:
    """Lanczos bases of the Krylov spaces `span(y, S y, S^2 y, ...)` of each column of Y.

    CG on `(I - alpha S) f = y` searches exactly these spaces, whatever alpha, so
    one basis serves every alpha: after an alpha change only a tridiagonal system
    per column is solved (`krylov_solve`). Column q has `lengths[q]` vectors:
    step j holds `V[j]` (n, len(columns[j])) for the columns `columns[j]` still
    growing, and `diagonal[j]`, `offdiagonal[j]` (m,) the Lanczos tridiagonal T
    (meaningful for j < lengths). Memory: sum(lengths) x n doubles.
    """
    V: list
    columns: list
    diagonal: np.ndarray
    offdiagonal: np.ndarray
    lengths: np.ndarray
    y_norm: np.ndarray
    alpha: float
    tol: float


def _galerkin_last(diagonal, offdiagonal, y_norm, alpha):
    """Per step m and column: the last entry of the solution of `(I - alpha T_m) c = |y| e1`.

    Forward elimination of the tridiagonal system (symmetric positive definite,
    so no pivoting), one step at a time; returns (pivots u, eliminated rhs z, last entries).
    """
    steps, m = diagonal.shape
    u = np.ones((steps, m))
    z = np.zeros((steps, m))
    u[0] = 1.0 - alpha * diagonal[0]
    z[0] = y_norm
    for j in range(1, steps):
        coupling = -alpha * offdiagonal[j - 1]
        u[j] = 1.0 - alpha * diagonal[j] - coupling ** 2 / u[j - 1]
        z[j] = -coupling * z[j - 1] / u[j - 1]
    return u, z, z / u


def lanczos_basis(S: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                  maxiter: int | None = None) -> KrylovBasis:
    """Run Lanczos on every column of Y at once until CG at `alpha` would have converged to `tol`.

    The Galerkin solution on the first m vectors is CG's m-th iterate, and its
    residual norm is `alpha * offdiagonal[m-1] * |c_m|`; a column stops growing
    when that is at most `tol |y|` (or its Krylov space is exhausted), so each
    column keeps only as many vectors as CG would take iterations.
    """
    Y = _check_system(S, Y, alpha)
    n, m = Y.shape
    maxiter = 10 * n if maxiter is None else maxiter
    y_norm = np.sqrt(np.einsum("ij,ij->j", Y, Y))
    lengths = np.zeros(m, np.int64)
    active = np.flatnonzero(y_norm > 0)
    v = Y[:, active] / y_norm[active]
    v_prev = np.zeros_like(v)
    beta = np.zeros(active.size)
    basis, columns, diagonal, offdiagonal = [], [], [], []
    u = z = None
    for _ in range(maxiter):
        if active.size == 0:
            break
        w = S @ v
        a = np.einsum("ij,ij->j", w, v)
        w -= a * v + beta * v_prev
        beta = np.sqrt(np.einsum("ij,ij->j", w, w))
        beta[beta <= 1e-12] = 0.0  # invariant subspace reached: the Galerkin solution is exact
        basis.append(v)
        columns.append(active)
        lengths[active] += 1
        diagonal.append(np.zeros(m))
        offdiagonal.append(np.zeros(m))
        diagonal[-1][active], offdiagonal[-1][active] = a, beta
        # One more step of the forward elimination in `_galerkin_last`, for the growing columns.
        if u is None:
            u, z = 1.0 - alpha * a, y_norm[active]
        else:
            coupling = -alpha * offdiagonal[-2][active]
            u, z = 1.0 - alpha * a - coupling ** 2 / u, -coupling * z / u
        growing = alpha * beta * np.abs(z / u) > tol * y_norm[active]
        next_v = w[:, growing] / beta[growing]
        v_prev, v = v[:, growing], next_v
        active, beta, u, z = active[growing], beta[growing], u[growing], z[growing]
    return KrylovBasis(basis, columns, np.array(diagonal).reshape(-1, m), np.array(offdiagonal).reshape(-1, m),
                       lengths, y_norm, alpha, tol)


def krylov_solve(S: sp.spmatrix, Y: np.ndarray, basis: KrylovBasis, alpha: float = 0.99,
                 tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """CG's solution of `(I - alpha S) F = Y` from a cached Lanczos basis of Y's columns.

    Each column takes the first iterate whose residual estimate is at most `tol |y|`,
    as CG would stop. The true residual is then checked with one product by S;
    columns above `tol` (alpha beyond the basis, rounding) are finished by
    `conjugate_gradient` from there, so the result always meets `tol`.
    Returns `(F, iterations per column)`.
    """
    Y = _check_system(S, Y, alpha)
    if Y.shape[1] != basis.y_norm.size or Y.shape[0] != S.shape[0]:
        raise ValueError(f"the Krylov basis was built for {basis.y_norm.size} right-hand sides, got {Y.shape}")
    steps = basis.diagonal.shape[0]
    iterations = np.zeros(Y.shape[1], np.int64)
    F = np.zeros(Y.shape)
    if steps:
        u, z, last = _galerkin_last(basis.diagonal, basis.offdiagonal, basis.y_norm, alpha)
        stored = np.arange(steps)[:, None] < basis.lengths[None, :]
        done = stored & (alpha * basis.offdiagonal * np.abs(last) <= tol * basis.y_norm)
        iterations = np.where(done.any(axis=0), done.argmax(axis=0) + 1, basis.lengths)
        coeffs = np.zeros_like(z)
        for j in range(steps - 1, -1, -1):
            following = coeffs[j + 1] if j + 1 < steps else 0.0
            inner = (z[j] + alpha * basis.offdiagonal[j] * following) / u[j]
            coeffs[j] = np.where(iterations == j + 1, z[j] / u[j], np.where(iterations > j + 1, inner, 0.0))
        for V, columns, c in zip(basis.V, basis.columns, coeffs):
            F[:, columns] += V * c[columns]
    residual = Y - (F - alpha * (S @ F))
    off = np.einsum("ij,ij->j", residual, residual) > (tol ** 2) * np.einsum("ij,ij->j", Y, Y)
    if off.any():
        F[:, off], extra = conjugate_gradient(S, Y[:, off], alpha, tol, x0=F[:, off])
        iterations[off] += extra
    return F, iterations


def solve(S: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, solver: str = "cg", tol: float = 1e-6,
          maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(F, iterations per column)` of `(I - alpha S) F = Y` by the named solver."""
    solvers = {"cg": conjugate_gradient, "iteration": jacobi_iteration,
               "scipy-cg": scipy_conjugate_gradient}
    if solver not in solvers:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    return solvers[solver](S, Y, alpha, tol, maxiter)


def diffuse(S: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, solver: str = "cg", tol: float = 1e-6,
            maxiter: int | None = None) -> np.ndarray:
    """F (n_db, n_q) solving `(I - alpha S) F = Y`, whichever solver."""
    return solve(S, Y, alpha, solver, tol, maxiter)[0]


def solve_with_basis(S: sp.spmatrix, Y: np.ndarray, alpha: float, solver: str = "krylov", tol: float = 1e-6,
                     maxiter: int | None = None, basis: KrylovBasis | None = None
                     ) -> tuple[np.ndarray, np.ndarray, KrylovBasis | None]:
    """`(F, iterations, basis)` of `(I - alpha S) F = Y`; with `krylov` the Lanczos basis given
    is reused when it serves alpha and tol (else rebuilt and returned), so the caller keeps it
    for the next alpha. Other solvers return no basis."""
    if solver != "krylov":
        return (*solve(S, Y, alpha, solver, tol, maxiter), None)
    if basis is None or basis.alpha < alpha or basis.tol > tol:
        basis = lanczos_basis(S, Y, max(alpha, BASIS_ALPHA), tol, maxiter)
    return (*krylov_solve(S, Y, basis, alpha, tol), basis)


def truncated_subgraphs(A: sp.spmatrix, sims: np.ndarray, n_top: int) -> list[tuple[np.ndarray, sp.csr_matrix]]:
    """Per query: its top `n_top` items of the initial ranking (sorted indices) and their re-normalised sub-graph `S`.

    They do not depend on alpha, so a caller that re-solves for several alphas keeps them.
    A query's y lives on its top kq items, inside the sub-graph when kq <= n_top
    (with kq > n_top the entries outside are dropped).
    """
    sims = np.asarray(sims)
    if n_top < 1:
        raise ValueError(f"n_top must be at least 1, got {n_top}")
    A = sp.csr_matrix(A)
    n = A.shape[0]
    if sims.ndim != 2 or sims.shape[1] != n:
        raise ValueError(f"sims must have shape (n_q, n_db={n}), got {sims.shape}")
    n_top = min(n_top, n)
    subgraphs = []
    for row in sims:
        items = np.sort(np.argpartition(-row, n_top - 1)[:n_top]) if n_top < n else np.arange(n)
        subgraphs.append((items, normalize_graph(A[items][:, items])))
    return subgraphs


def ranking_from_scores(F: np.ndarray, sims: np.ndarray, initial: np.ndarray | None = None,
                        head: int | None = None) -> np.ndarray:
    """Ranks (n_q, n_db): by diffusion score F (n_db, n_q) descending, then by initial similarity.

    Scores `<= 0` count as zero, so unreached items keep their initial order after
    the reached ones; ties in F also fall back on the initial order. `initial`
    is `argsort(-sims)` when the caller already has it; `head` = N says that only
    the first N items of the initial order can have positive scores (truncation),
    which spares sorting the rest.
    """
    if initial is None:
        initial = np.argsort(-np.asarray(sims), axis=1, kind="stable")
    F = np.asarray(F)
    if head is None:
        scores = np.take_along_axis(np.maximum(F.T, 0.0), initial, axis=1)
        # Only the prefix of the initial order up to the last reached item can move.
        reached = scores > 0
        head = int((reached.shape[1] - np.argmax(reached[:, ::-1], axis=1))[reached.any(axis=1)].max(initial=0))
        scores = scores[:, :head]
    else:
        head = min(head, initial.shape[1])
        scores = np.maximum(np.take_along_axis(F.T, initial[:, :head], axis=1), 0.0)
    ranks = initial.copy()
    ranks[:, :head] = np.take_along_axis(initial[:, :head], np.argsort(-scores, axis=1, kind="stable"), axis=1)
    return ranks


class DiffusionRanker:
    """Diffusion ranking over one database with its graph built once.

    The graph depends on (database, k, gamma) only; alpha, kq, the solver and
    truncation act at query time, so changing them (the dashboard's sliders)
    re-solves without rebuilding. For the last query batch and kq the ranker also
    keeps the similarities, the initial order and the Lanczos basis of the
    default solver `krylov` (CG's iterates, which do not depend on alpha), so an
    alpha change costs one small tridiagonal solve per query, one check product
    by S and the final sort. With truncation, the per-query sub-graphs and their
    bases are kept instead. Share an instance read-only: only that one-entry
    query cache changes after construction.
    """

    def __init__(self, db: np.ndarray, k: int = 50, gamma: float = 3.0,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None):
        self.db = unit_rows(db, "database")
        self.k = k
        self.gamma = gamma
        self.A = affinity_graph(self.db, k, gamma, neighbours)
        self.S = normalize_graph(self.A)
        self._batch: dict | None = None

    @property
    def n_edges(self) -> int:
        return self.A.nnz // 2

    def _query_batch(self, queries: np.ndarray, kq: int) -> dict:
        """Similarities, initial order and Y of this query batch, from the cache when it matches."""
        queries = unit_rows(queries, "queries")
        digest = hashlib.blake2b(f"{queries.shape} {kq}".encode(), digest_size=16)
        digest.update(memoryview(queries))
        key = digest.digest()
        batch = self._batch
        if batch is None or batch["key"] != key:
            sims = self._similarities(queries)
            batch = {"key": key, "sims": sims, "initial": np.argsort(-sims, axis=1, kind="stable"),
                     "Y": vectors_from_similarities(sims, kq, self.gamma), "basis": None, "truncated": {}}
            self._batch = batch
        return batch

    def _similarities(self, queries: np.ndarray) -> np.ndarray:
        if queries.shape[1] != self.db.shape[1]:
            raise ValueError(f"database has dimension {self.db.shape[1]} but queries have {queries.shape[1]}")
        return queries @ self.db.T

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """(n_q, n_db) initial similarities of L2-normalised queries to the database."""
        return self._similarities(unit_rows(queries, "queries"))

    def scores(self, queries: np.ndarray, alpha: float = 0.99, kq: int = 10, solver: str = "krylov",
               tol: float = 1e-6, maxiter: int | None = None, truncate: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """`(F (n_db, n_q), iterations (n_q,))`; `truncate=N` diffuses over each query's top N only.

        Solvers: `krylov` (cached Lanczos basis, CG's result), `cg`, `iteration`,
        `scipy-cg` (see `solve`). Truncation solves each query's own sub-graph
        with `solver`; F is zero outside it, so those items follow in initial order.
        """
        if solver not in RANKER_SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {RANKER_SOLVERS}")
        batch = self._query_batch(queries, kq)
        if truncate is not None:
            return self._truncated_scores(batch, alpha, solver, tol, maxiter, truncate)
        F, iterations, batch["basis"] = solve_with_basis(self.S, batch["Y"], alpha, solver, tol, maxiter,
                                                         batch["basis"])
        return F, iterations

    def _truncated_scores(self, batch: dict, alpha: float, solver: str, tol: float, maxiter: int | None,
                          truncate: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-query sub-graph diffusion; sub-graphs (and with `krylov`, their bases) kept for the batch."""
        cached = batch["truncated"].get(truncate)
        if cached is None:
            subgraphs = truncated_subgraphs(self.A, batch["sims"], truncate)
            cached = {"subgraphs": subgraphs, "bases": [None] * len(subgraphs)}
            batch["truncated"] = {truncate: cached}
        Y = batch["Y"]
        F = np.zeros_like(Y)
        iterations = np.zeros(Y.shape[1], np.int64)
        for q, (items, S_sub) in enumerate(cached["subgraphs"]):
            f, iterations[q:q + 1], cached["bases"][q] = solve_with_basis(
                S_sub, Y[items, q:q + 1], alpha, solver, tol, maxiter, cached["bases"][q])
            F[items, q] = f[:, 0]
        return F, iterations

    def rank(self, queries: np.ndarray, alpha: float = 0.99, kq: int = 10, solver: str = "krylov",
             tol: float = 1e-6, maxiter: int | None = None, truncate: int | None = None) -> np.ndarray:
        """Full rankings (n_q, n_db) after diffusion (ties and unreached items: initial order)."""
        F, _ = self.scores(queries, alpha, kq, solver, tol, maxiter, truncate)
        batch = self._query_batch(queries, kq)
        return ranking_from_scores(F, batch["sims"], batch["initial"], truncate)
