"""Diffusion (cbir.diffusion): hand-computed tiny graphs, solver agreement, caching, truncation, real data."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from cbir import diffusion
from cbir.diffusion import (DiffusionRanker, affinity_graph, conjugate_gradient, diffuse, jacobi_iteration,
                            knn_neighbours, krylov_solve, lanczos_basis, normalize_graph, query_vectors,
                            ranking_from_scores, solve)
from synthetic import clustered_unit_vectors


def on_circle(*degrees):
    t = np.radians(degrees)
    return np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)


def cosd(deg):
    return np.cos(np.radians(deg))


# Four unit vectors at 0, 50, 80 and 170 degrees. With k = 2 the kNN lists are
# a: {b, c}, b: {c, a}, c: {b, a}, d: {c, b}: a, b, c are mutual neighbours, nobody lists d.
TINY = on_circle(0, 50, 80, 170)
W_AB, W_AC, W_BC = cosd(50) ** 3, cosd(80) ** 3, cosd(30) ** 3


def clustered(n=300, dim=32, clusters=6, noise=0.8, seed=0):
    return clustered_unit_vectors(n, dim, clusters, noise, seed)


def test_affinity_graph_by_hand():
    A = affinity_graph(TINY, k=2, gamma=3.0).toarray()
    expected = np.array([[0, W_AB, W_AC, 0],
                         [W_AB, 0, W_BC, 0],
                         [W_AC, W_BC, 0, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_allclose(A, expected, rtol=1e-6)


def test_affinity_weights_clamp_negative_similarities_and_gamma_one():
    # 0, 100, 200 degrees, k = 2: every pair is mutual but every similarity is negative.
    assert affinity_graph(on_circle(0, 100, 200), k=2, gamma=1.0).nnz == 0
    A = affinity_graph(on_circle(0, 40, 70), k=2, gamma=1.0).toarray()
    np.testing.assert_allclose(A, [[0, cosd(40), cosd(70)], [cosd(40), 0, cosd(30)], [cosd(70), cosd(30), 0]],
                               rtol=1e-6)


def test_normalize_graph_by_hand_with_an_isolated_node():
    S = normalize_graph(affinity_graph(TINY, k=2)).toarray()
    deg = np.array([W_AB + W_AC, W_AB + W_BC, W_AC + W_BC])
    expected = np.zeros((4, 4))
    for i, j, w in ((0, 1, W_AB), (0, 2, W_AC), (1, 2, W_BC)):
        expected[i, j] = expected[j, i] = w / np.sqrt(deg[i] * deg[j])
    np.testing.assert_allclose(S, expected, rtol=1e-6)
    assert np.all(np.isfinite(S))


def test_query_vector_by_hand():
    # A query at 45 degrees: similarities a cos45, b cos5, c cos35, d cos125; kq = 2 keeps b and c.
    Y = query_vectors(TINY, on_circle(45), kq=2, gamma=3.0)
    np.testing.assert_allclose(Y[:, 0], [0, cosd(5) ** 3, cosd(35) ** 3, 0], rtol=1e-6)


@pytest.mark.parametrize("solver", ["cg", "iteration", "scipy-cg"])
def test_two_node_diffusion_by_hand(solver):
    # One edge, so S = [[0, 1], [1, 0]]; (I - 0.5 S) f = (1, 0) gives f = (4/3, 2/3).
    S = normalize_graph(affinity_graph(np.array([[1, 0], [0.6, 0.8]], np.float32), k=1))
    np.testing.assert_allclose(S.toarray(), [[0, 1], [1, 0]])
    F = diffuse(S, np.array([1.0, 0.0]), alpha=0.5, solver=solver, tol=1e-12)
    np.testing.assert_allclose(F[:, 0], [4 / 3, 2 / 3], rtol=1e-9)


def test_two_node_krylov_by_hand():
    S = normalize_graph(affinity_graph(np.array([[1, 0], [0.6, 0.8]], np.float32), k=1))
    Y = np.array([[1.0], [0.0]])
    F, iterations = krylov_solve(S, Y, lanczos_basis(S, Y, 0.5, 1e-12), alpha=0.5, tol=1e-12)
    np.testing.assert_allclose(F[:, 0], [4 / 3, 2 / 3], rtol=1e-9)
    assert iterations[0] <= 2  # a two-dimensional Krylov space


def test_tiny_diffusion_matches_a_dense_solve_and_ranks_the_isolated_node_last():
    S = normalize_graph(affinity_graph(TINY, k=2))
    Y = query_vectors(TINY, on_circle(45), kq=2)
    expected = np.linalg.solve(np.eye(4) - 0.9 * S.toarray(), Y)
    for solver in ("cg", "iteration", "scipy-cg"):
        np.testing.assert_allclose(diffuse(S, Y, alpha=0.9, solver=solver, tol=1e-12), expected, rtol=1e-8)
    assert expected[3, 0] == 0.0
    ranks = DiffusionRanker(TINY, k=2).rank(on_circle(45), alpha=0.9, kq=2)
    assert ranks[0, -1] == 3
    assert list(ranks[0, :3]) == list(np.argsort(-expected[:3, 0]))


def test_unreached_items_follow_in_initial_order():
    F = np.array([[0.0], [0.2], [0.0], [0.5], [-1e-17]])
    sims = np.array([[0.9, 0.1, 0.8, 0.3, 0.95]])
    assert ranking_from_scores(F, sims).tolist() == [[3, 1, 4, 0, 2]]


def test_ranking_from_scores_matches_a_per_row_lexsort():
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((6, 40))
    F = np.where(rng.random((40, 6)) < 0.7, 0.0, rng.random((40, 6)))
    F[:, :2] = 0.0  # query 0 reaches nothing: it keeps its initial order
    F[np.argsort(-sims[1])[:3], 1] = [0.3, 0.1, 0.2]  # reached items only at the head
    expected = np.array([np.lexsort((-sims[q], -F[:, q])) for q in range(6)])
    np.testing.assert_array_equal(ranking_from_scores(F, sims), expected)
    assert ranking_from_scores(F, sims)[1, :3].tolist() == list(np.argsort(-sims[1])[[0, 2, 1]])
    # `head`: scores only among each query's first N items of the initial order (truncation).
    initial = np.argsort(-sims, axis=1)
    truncated = np.zeros_like(F)
    for q in range(6):
        truncated[initial[q, :10], q] = F[initial[q, :10], q]
    np.testing.assert_array_equal(ranking_from_scores(truncated, sims, head=10), ranking_from_scores(truncated, sims))


@pytest.mark.parametrize("seed", [0, 1])
def test_mutual_knn_graph_is_symmetric_and_exactly_mutual(seed):
    X, _ = clustered(n=120, seed=seed)
    k = 7
    A = affinity_graph(X, k=k, gamma=3.0)
    assert (abs(A - A.T)).max() == 0
    assert A.diagonal().sum() == 0
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    knn = [set(np.argsort(-row)[:k]) for row in sims]
    dense = A.toarray()
    for i in range(len(X)):
        for j in range(len(X)):
            mutual = j in knn[i] and i in knn[j]
            expected = max(sims[i, j], 0.0) ** 3 if mutual else 0.0
            assert dense[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_knn_neighbours_exclude_self_and_match_brute_force():
    X, _ = clustered(n=150, seed=3)
    sims, nbrs = knn_neighbours(X, 5, block=32)
    brute = X @ X.T
    np.fill_diagonal(brute, -np.inf)
    np.testing.assert_array_equal(nbrs, np.argsort(-brute, axis=1)[:, :5])
    np.testing.assert_allclose(sims, np.sort(brute, axis=1)[:, ::-1][:, :5], rtol=1e-6)
    assert not np.any(nbrs == np.arange(150)[:, None])


@pytest.mark.parametrize("k", [5, 10, 30])
def test_cg_and_iteration_give_the_same_ranking_once_converged(k):
    X, _ = clustered(n=300, seed=k)
    Q, _ = clustered(n=12, seed=100 + k)
    ranker = DiffusionRanker(X, k=k)
    F_cg, it_cg = solve(ranker.S, query_vectors(X, Q), 0.99, "cg", tol=1e-10)
    F_it, it_it = solve(ranker.S, query_vectors(X, Q), 0.99, "iteration", tol=1e-10)
    np.testing.assert_allclose(F_it, F_cg, rtol=1e-6, atol=1e-8 * np.abs(F_cg).max())
    assert it_cg.max() < it_it.min()  # CG needs far fewer iterations
    rankings = {s: ranker.rank(Q, alpha=0.99, solver=s, tol=1e-10) for s in ("cg", "iteration", "krylov")}
    np.testing.assert_array_equal(rankings["iteration"], rankings["cg"])
    np.testing.assert_array_equal(rankings["krylov"], rankings["cg"])


def test_scipy_baseline_matches_blocked_cg():
    X, _ = clustered(n=200, seed=5)
    S = normalize_graph(affinity_graph(X, k=10))
    Y = query_vectors(X, X[:6] + 0.01, kq=10)
    F, iterations = conjugate_gradient(S, Y, 0.95, tol=1e-8)
    F_scipy, it_scipy = solve(S, Y, 0.95, "scipy-cg", tol=1e-8)
    np.testing.assert_allclose(F, F_scipy, rtol=1e-6, atol=1e-10)
    residual = Y - (F - 0.95 * (S @ F))
    assert np.all(np.linalg.norm(residual, axis=0) <= 1e-8 * np.linalg.norm(Y, axis=0))


def test_krylov_basis_serves_other_alphas_and_larger_alphas_still_meet_the_tolerance():
    X, _ = clustered(n=250, seed=7)
    S = normalize_graph(affinity_graph(X, k=10))
    Y = query_vectors(X, X[:8], kq=5)
    basis = lanczos_basis(S, Y, alpha=0.9, tol=1e-8)
    for alpha in (0.3, 0.8, 0.9, 0.99):  # 0.99 lies beyond the basis: finished by CG
        F, _ = krylov_solve(S, Y, basis, alpha=alpha, tol=1e-8)
        residual = Y - (F - alpha * (S @ F))
        assert np.all(np.linalg.norm(residual, axis=0) <= 1e-8 * np.linalg.norm(Y, axis=0))


def test_jacobi_default_maxiter_converges_without_warning():
    X, _ = clustered(n=100, seed=2)
    S = normalize_graph(affinity_graph(X, k=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F, iterations = jacobi_iteration(S, query_vectors(X, X[:3]), alpha=0.99, tol=1e-6)
    assert iterations.max() > 100


def test_unconverged_solver_warns():
    X, _ = clustered(n=100, seed=2)
    S = normalize_graph(affinity_graph(X, k=10))
    with pytest.warns(RuntimeWarning, match="did not reach"):
        conjugate_gradient(S, query_vectors(X, X[:3]), alpha=0.99, tol=1e-12, maxiter=2)


def test_alpha_change_reuses_the_cached_graph_and_basis(monkeypatch):
    X, _ = clustered(n=200, seed=4)
    Q = X[:5] + 0.05
    ranker = DiffusionRanker(X, k=10)
    graph, S = ranker.A, ranker.S
    ranker.rank(Q, alpha=0.99)
    calls = []
    for name in ("affinity_graph", "normalize_graph", "knn_neighbours", "lanczos_basis", "query_similarities"):
        monkeypatch.setattr(diffusion, name, lambda *a, _name=name, **kw: calls.append(_name))
    for alpha in (0.5, 0.8, 0.95):
        ranks = ranker.rank(Q, alpha=alpha)
        monkeypatch.undo()
        fresh = ranking_from_scores(diffuse(S, query_vectors(X, Q), alpha, tol=1e-6), Q @ X.T)
        agree = (ranks == fresh).mean()
        assert agree > 0.99, f"alpha {alpha}: cached re-ranking agrees on {agree:.3f} of positions"
        for name in ("affinity_graph", "normalize_graph", "knn_neighbours", "lanczos_basis", "query_similarities"):
            monkeypatch.setattr(diffusion, name, lambda *a, _name=name, **kw: calls.append(_name))
    assert calls == []
    assert ranker.A is graph and ranker.S is S


def test_alpha_change_reuses_the_truncated_subgraphs(monkeypatch):
    X, _ = clustered(n=150, seed=14)
    Q = X[:3] + 0.05
    ranker = DiffusionRanker(X, k=10)
    first = ranker.rank(Q, alpha=0.99, truncate=60)
    monkeypatch.setattr(diffusion, "truncated_subgraphs", lambda *a, **kw: pytest.fail("sub-graphs rebuilt"))
    again = ranker.rank(Q, alpha=0.8, truncate=60)
    monkeypatch.undo()
    np.testing.assert_array_equal(again, DiffusionRanker(X, k=10).rank(Q, alpha=0.8, truncate=60))
    assert not np.array_equal(first, again)
    precise = ranker.rank(Q, alpha=0.8, truncate=60, tol=1e-10)
    np.testing.assert_array_equal(precise, ranker.rank(Q, alpha=0.8, truncate=60, tol=1e-10, solver="cg"))


def test_truncation_to_the_whole_database_equals_no_truncation():
    X, _ = clustered(n=200, seed=8)
    Q, _ = clustered(n=6, seed=9)
    ranker = DiffusionRanker(X, k=10)
    full, _ = ranker.scores(Q, solver="cg")
    truncated, _ = ranker.scores(Q, solver="cg", truncate=len(X))
    np.testing.assert_allclose(truncated, full, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(ranker.rank(Q, solver="cg", truncate=len(X)), ranker.rank(Q, solver="cg"))


def test_truncation_keeps_the_rest_in_initial_order():
    X, _ = clustered(n=200, seed=10)
    Q, _ = clustered(n=4, seed=11)
    n_top = 40
    ranks = DiffusionRanker(X, k=10).rank(Q, truncate=n_top)
    initial = np.argsort(-(Q @ X.T), axis=1)
    for q in range(len(Q)):
        assert set(ranks[q, :n_top]) == set(initial[q, :n_top])
        np.testing.assert_array_equal(ranks[q, n_top:], initial[q, n_top:])


def test_truncated_diffusion_solves_the_renormalised_subgraph():
    X, _ = clustered(n=120, seed=12)
    q = X[:1] + 0.02
    ranker = DiffusionRanker(X, k=8)
    F, _ = ranker.scores(q, alpha=0.9, kq=5, solver="cg", tol=1e-12, truncate=30)
    sims = (q @ X.T)[0]
    items = np.sort(np.argsort(-sims)[:30])
    A_sub = ranker.A.toarray()[np.ix_(items, items)]
    deg = A_sub.sum(axis=1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
    S_sub = inv[:, None] * A_sub * inv[None, :]
    y = query_vectors(X, q, kq=5)[items, 0]
    np.testing.assert_allclose(F[items, 0], np.linalg.solve(np.eye(30) - 0.9 * S_sub, y), rtol=1e-8, atol=1e-14)
    assert np.all(F[np.setdiff1d(np.arange(120), items), 0] == 0)


def test_query_identical_to_a_database_item():
    X, _ = clustered(n=200, seed=13)
    ranker = DiffusionRanker(X, k=10)
    # alpha = 0 leaves f = y, whose largest entry is the item itself (similarity 1);
    # moderate alphas keep it first.
    for alpha in (0.0, 0.5, 0.7):
        assert np.all(ranker.rank(X[:30], alpha=alpha)[:, 0] == np.arange(30)), alpha
    # Near alpha = 1, f tends to the graph's stationary profile on the query's component
    # (Iscen et al.), so the item is no longer guaranteed first; it stays in the top of its cluster.
    ranks = ranker.rank(X[:30], alpha=0.99)
    positions = np.argmax(ranks == np.arange(30)[:, None], axis=1)
    assert positions.max() < 50 and np.any(positions > 0)


def test_bad_parameters_are_rejected_with_clear_messages():
    X, _ = clustered(n=20)
    with pytest.raises(ValueError, match="k must lie"):
        affinity_graph(X, k=20)
    S = normalize_graph(affinity_graph(X, k=3))
    with pytest.raises(ValueError, match="alpha"):
        diffuse(S, np.ones(20), alpha=1.0)
    with pytest.raises(ValueError, match="unknown solver"):
        diffuse(S, np.ones(20), solver="lu")
    with pytest.raises(ValueError, match="shape"):
        diffuse(S, np.ones(19))
    with pytest.raises(ValueError, match="dimension"):
        DiffusionRanker(X, k=3).rank(np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        DiffusionRanker(np.full((20, 4), np.nan, np.float32), k=3)


def test_unnormalised_and_float16_inputs_are_l2_normalised():
    X, _ = clustered(n=60)
    reference = affinity_graph(X, k=5)
    np.testing.assert_allclose(affinity_graph(3.0 * X, k=5).toarray(), reference.toarray(), rtol=1e-5)
    half = affinity_graph(X.astype(np.float16), k=5)
    assert (half != 0).nnz > 0 and abs(half - half.T).max() == 0


def test_isolated_nodes_do_not_break_normalisation():
    A = sp.csr_matrix(np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 0]]))
    np.testing.assert_array_equal(normalize_graph(A).toarray(), [[0, 1, 0], [1, 0, 0], [0, 0, 0]])


# --- real data: Paris6k-250, EfficientNet-Lite0 R-MAC at 1024 px ---------------------------------

def test_paris250_diffusion_reaches_the_reference_map(paris250_lite0_rmac_cache):
    from cbir.metrics import compute_map

    dataset, entry = paris250_lite0_rmac_cache
    gnd = dataset.gnd["original"]
    plain = compute_map(np.argsort(-(entry.queries.astype(np.float32) @ entry.db.astype(np.float32).T), axis=1),
                        gnd)["map"]
    maps = {}
    for k in (10, 20, 30):
        ranker = DiffusionRanker(entry.db, k=k)
        ranks = {s: ranker.rank(entry.queries, alpha=0.99, kq=10, solver=s, tol=1e-10)
                 for s in ("cg", "iteration", "krylov")}
        np.testing.assert_array_equal(ranks["iteration"], ranks["cg"], err_msg=f"k={k}")
        np.testing.assert_array_equal(ranks["krylov"], ranks["cg"], err_msg=f"k={k}")
        maps[k] = compute_map(ranks["cg"], gnd)["map"]
    assert maps[20] >= 0.91, maps  # independent reference: 0.924 (k=10: 0.912)
    assert maps[10] >= 0.90, maps
    assert maps[20] > plain + 0.03, (plain, maps)
