"""Diffusion speed on synthetic descriptors the size of Paris6k (or larger): prints the figures.

    python -m bench.diffusion                  # 6392 x 2048, 55 queries, exact kNN graph
    python -m bench.diffusion --n 100000       # approximate (faiss IVF) graph, truncation to top 5000

Data: unit vectors around `n / 64` random cluster centres (about 64 per cluster,
noise of norm `--noise`), queries drawn the same way. Figures, all from this run:
graph build time; time to re-rank all queries after an alpha change with the
graph cached (the dashboard's slider; target <= 100 ms at 6392 on 2 cores);
the same solves by scipy's CG one query at a time, and the ratio (target >= 5x);
CG versus the seed's iteration: iterations to the same tolerance, and whether the
rankings agree. Timings are medians of `--repeat` runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir.diffusion import (DiffusionRanker, ranking_from_scores, solve,  # noqa: E402
                            vectors_from_similarities)
from cbir.ranking import knn_graph_search  # noqa: E402


def planted_clusters(n: int, n_queries: int, dim: int, noise: float, seed: int):
    """(db, queries, db labels, query labels): unit vectors scattered around random centres.

    `n / 64` cluster centres, themselves grouped around a tenth as many group
    centres (so clusters of a group are near one another, like façades of one
    landmark), with log-normal cluster sizes: small clusters force kNN edges
    across clusters, which a real graph has and a grid of equal cliques would not.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 64)
    groups = rng.standard_normal((max(1, n_clusters // 10), dim), dtype=np.float32)
    centres = groups[rng.integers(0, len(groups), n_clusters)]
    centres += rng.standard_normal((n_clusters, dim), dtype=np.float32) / np.sqrt(dim) * np.linalg.norm(
        groups, axis=1).mean()
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.lognormal(0.0, 1.0, n_clusters)

    def draw(count):
        labels = rng.choice(n_clusters, count, p=sizes / sizes.sum())
        x = rng.standard_normal((count, dim), dtype=np.float32)
        x *= noise / np.sqrt(dim)
        x += centres[labels]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, labels

    db, db_labels = draw(n)
    queries, query_labels = draw(n_queries)
    return db, queries, db_labels, query_labels


def timed(fn, repeat: int):
    """(median seconds, last result)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def r_precision(ranks, db_labels, query_labels):
    """Mean over queries of the fraction of the query's cluster among its first |cluster| results."""
    sizes = np.bincount(db_labels, minlength=query_labels.max() + 1)[query_labels]
    return float(np.mean([np.mean(db_labels[row[:size]] == label)
                          for row, label, size in zip(ranks, query_labels, sizes) if size > 0]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6392, help="database size")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=55)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--kq", type=int, default=10)
    parser.add_argument("--noise", type=float, default=1.5, help="noise norm (1.5: within-cluster cosine ~0.3)")
    parser.add_argument("--truncate", type=int, default=None,
                        help="diffuse over each query's top N only (default: 5000 when n > 20000)")
    parser.add_argument("--graph", choices=("exact", "ivf", "hnsw"), default=None,
                        help="kNN graph search (default: exact blocked numpy up to 20000, faiss IVF above)")
    parser.add_argument("--nprobe", type=int, default=8, help="IVF cells visited per item (approximate graph)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    large = args.n > 20000
    truncate = args.truncate if args.truncate is not None else (5000 if large else None)
    graph = args.graph or ("ivf" if large else "exact")

    start = time.perf_counter()
    db, queries, db_labels, query_labels = planted_clusters(args.n, args.queries, args.dim, args.noise, args.seed)
    print(f"data: {args.n} x {args.dim} float32, {args.queries} queries, {max(1, args.n // 64)} clusters, "
          f"noise {args.noise} ({time.perf_counter() - start:.1f} s to generate)")

    start = time.perf_counter()
    neighbours = None if graph == "exact" else knn_graph_search(db, args.k, index=graph, nprobe=args.nprobe)
    ranker = DiffusionRanker(db, k=args.k, neighbours=neighbours)
    build = time.perf_counter() - start
    degree = np.diff(ranker.A.indptr)
    how = graph if graph == "exact" else f"faiss {graph}, nprobe {args.nprobe}" if graph == "ivf" else "faiss hnsw"
    print(f"graph build (k={args.k}, {how} kNN search): {build:.2f} s; {ranker.n_edges} mutual edges, "
          f"mean degree {degree.mean():.1f}, {int((degree == 0).sum())} isolated nodes")
    if neighbours is not None:
        sample = np.random.default_rng(args.seed).choice(args.n, 200, replace=False)
        sims_sample = db[sample] @ db.T
        sims_sample[np.arange(200), sample] = -np.inf
        truth = np.argpartition(-sims_sample, args.k - 1, axis=1)[:, :args.k]
        recall = np.mean([len(set(t) & set(f)) / args.k for t, f in zip(truth, neighbours[1][sample])])
        print(f"approximate kNN recall@{args.k} on 200 sampled items: {recall:.3f}")

    mode = f"truncated to top {truncate}" if truncate else "full graph"
    first_time, _ = timed(lambda: ranker.rank(queries, alpha=0.99, kq=args.kq, truncate=truncate), 1)
    built = "per-query sub-graphs and Lanczos bases" if truncate else "Lanczos basis"
    print(f"first ranking of {args.queries} queries (similarities, {built}, solve, sort), {mode}: "
          f"{first_time * 1000:.0f} ms")
    rerank_time, ranks = timed(lambda: ranker.rank(queries, alpha=0.95, kq=args.kq, truncate=truncate),
                               args.repeat)
    print(f"re-rank {args.queries} queries after an alpha change (graph, {built} cached), {mode}: "
          f"{rerank_time * 1000:.1f} ms (target <= 100 ms at 6392)")

    sims = ranker.similarities(queries)
    Y = vectors_from_similarities(sims, args.kq, ranker.gamma)
    if truncate is None:
        cg_time, (F_cg, it_cg) = timed(lambda: solve(ranker.S, Y, 0.95, "cg"), args.repeat)
        scipy_time, (F_scipy, it_scipy) = timed(lambda: solve(ranker.S, Y, 0.95, "scipy-cg"),
                                                max(1, args.repeat // 2))
        same = bool((ranking_from_scores(F_scipy, sims) == ranks).all()
                    and (ranking_from_scores(F_cg, sims) == ranks).all())
        print(f"alpha 0.95 solve from scratch: blocked CG {cg_time * 1000:.1f} ms, scipy cg per query "
              f"{scipy_time * 1000:.1f} ms ({scipy_time / cg_time:.1f}x); re-rank after an alpha change "
              f"is {scipy_time / rerank_time:.1f}x faster than scipy per query (target >= 5x); "
              f"same ranking (re-rank, blocked CG, scipy): {same}")
        for tol in (1e-6, 1e-10):
            F_cg, it_cg = solve(ranker.S, Y, 0.99, "cg", tol)
            it_time, (F_it, it_it) = timed(lambda: solve(ranker.S, Y, 0.99, "iteration", tol), 1)
            same = bool((ranking_from_scores(F_it, sims) == ranking_from_scores(F_cg, sims)).all())
            print(f"alpha 0.99, tol {tol:g}: CG iterations mean {it_cg.mean():.1f} (max {it_cg.max()}), "
                  f"seed iteration mean {it_it.mean():.0f} (max {it_it.max()}, {it_time * 1000:.0f} ms); "
                  f"same ranking: {same}")
    else:
        scipy_time, scipy_ranks = timed(
            lambda: ranker.rank(queries, alpha=0.95, kq=args.kq, truncate=truncate, solver="scipy-cg"), 1)
        print(f"same with scipy cg per query: {scipy_time * 1000:.1f} ms ({scipy_time / rerank_time:.1f}x); "
              f"same ranking: {bool((scipy_ranks == ranks).all())}")
        full_time, (_, it_full) = timed(lambda: solve(ranker.S, Y, 0.99, "cg"), 1)
        print(f"without truncation, blocked CG on the whole graph (no Lanczos basis kept: it would take "
              f"steps x n x n_q doubles): {full_time * 1000:.0f} ms, iterations mean {it_full.mean():.1f} "
              f"(max {it_full.max()})")

    plain = np.argsort(-sims, axis=1)
    print(f"R-precision of the query's cluster: plain {r_precision(plain, db_labels, query_labels):.3f}, "
          f"diffusion {r_precision(ranks, db_labels, query_labels):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
