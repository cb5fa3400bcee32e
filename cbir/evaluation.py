"""Evaluation results worth keeping on disk: per-method reports and the diffusion mAP grid.

Ranking every method (a diffusion graph each) costs seconds per method at Paris6k
size, and the grid one graph per k and one solve per alpha, so both are computed
once and stored next to the descriptors they come from (`report-<protocol>-<re-ranking>.json`,
`grid-<protocol>.json` in the cache entry). A re-extracted entry replaces its
directory, so a stale result cannot survive; each file also records the
descriptors' checksums and parameters and is recomputed when they differ. A
unwritable cache still gets computed results, and a served bundle (read-only) keeps
them in memory: `store=False`.
"""
from __future__ import annotations

import json
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .cache import Entry, atomic_write_text
from .data import Dataset
from .diffusion import DiffusionRanker
from .method import GRAPH_RERANKINGS, Method
from .metrics import check_protocol, compute_map, query_metrics, summarise
from .neighbours import covers, neighbours_for
from .rerank import graph_ranker, rerank

DEFAULT_ALPHAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
DEFAULT_KS = (5, 10, 20, 30, 50, 100)


OVERVIEW_RERANKINGS = ("none", "aqe", "diffusion", "fsr", "kreciprocal")
QUERY_BLOCK = 512


def capped_params(method: Method, n_images: int) -> dict:
    """k, kq, the FSR rank and k-reciprocal's k1, k2 capped to what a database of `n_images`
    allows (as the sliders are)."""
    k1 = min(method.k1, n_images - 1)
    return {"k": min(method.k, n_images - 1), "kq": min(method.kq, n_images),
            "fsr_rank": min(method.fsr_rank, n_images), "k1": k1, "k2": min(method.k2, k1 + 1)}


def overview_methods(method: Method, n_images: int) -> list[Method]:
    """The re-rankings the dashboard's Overview shows for one descriptor entry, at the
    default parameters (capped by `capped_params`)."""
    params = capped_params(method, n_images)
    return [method.with_rerank(r, **params) if r in GRAPH_RERANKINGS + ("kreciprocal",) else method.with_rerank(r)
            for r in OVERVIEW_RERANKINGS]


def rerank_slug(method: Method) -> str:
    """The re-ranking part of a method, with its parameters, as a file-name part."""
    if method.rerank == "diffusion":
        return f"diffusion-a{method.alpha:g}-k{method.k}-kq{method.kq}-g{method.gamma:g}"
    if method.rerank == "fsr":
        return f"fsr-a{method.alpha:g}-k{method.k}-kq{method.kq}-g{method.gamma:g}-r{method.fsr_rank}"
    if method.rerank == "kreciprocal":
        return f"kreciprocal-k1{method.k1}-k2{method.k2}-l{method.kr_lambda:g}"
    if method.rerank in ("qe", "aqe"):
        return f"{method.rerank}-n{method.qe_n}"
    return "none"


def _store(path: Path, data: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(data))
    except OSError:
        pass


def blocked_report(method: Method, db: np.ndarray, queries: np.ndarray, dataset: Dataset, protocol: str,
                   ranker=None, block: int = QUERY_BLOCK, progress=None) -> dict:
    """`evaluation_report` of `method`, ranking `block` queries at a time.

    Memory stays at block x n_db instead of n_queries x n_db: a folder where every image
    is a query (7168 x 7168) holds 600 MB of similarities and ranks per method otherwise.
    Every figure is a mean of per-query values, so the report is the same. k-reciprocal
    re-ranking is not blocked: its neighbour sets are taken over queries and database
    together, so a block of queries would change them.
    """
    gnd = check_protocol(dataset, protocol)
    db = np.asarray(db, np.float32)
    if method.rerank == "kreciprocal":
        block = max(1, len(queries))
    if method.rerank in GRAPH_RERANKINGS and ranker is None:
        ranker = graph_ranker(db, method)
    parts = []
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        block_queries = np.asarray(queries[start:stop], np.float32)
        if method.rerank == "diffusion":  # plain CG: the Krylov basis kept for alpha changes costs GBs here
            ranks = ranker.rank(block_queries, alpha=method.alpha, kq=method.kq, solver="cg")
        else:
            ranks = rerank(method, db, block_queries, ranker=ranker)
        parts.append(query_metrics(ranks, gnd[start:stop], dataset))
        if progress is not None:
            progress(stop, len(queries), method.label())
    if not parts:
        parts.append(query_metrics(np.zeros((0, len(db)), np.int64), [], dataset))
    return summarise({name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, dataset, protocol)


def report_path(entry_dir: Path, method: Method, protocol: str) -> Path:
    return Path(entry_dir) / f"report-{protocol}-{rerank_slug(method)}.json"


def read_stored_report(entry_dir: Path, manifest: dict, method: Method, protocol: str) -> dict | None:
    """The report stored for these descriptors, or None if absent, unreadable or stale."""
    checksums = manifest["files"]["db.npy"], manifest["files"]["queries.npy"]
    try:
        stored = json.loads(report_path(entry_dir, method, protocol).read_text())
        if tuple(stored["checksums"]) == checksums and stored["report"]["protocol"] == protocol:
            return stored["report"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


ONE_BLAS_THREAD_UP_TO = 2048  # database images (`blas_for`)


class _SharedBlasLimit:
    """One process-wide limit of BLAS to one thread (threadpoolctl), shared by concurrent callers
    (the dashboard's sessions): the first to enter sets it, the last to leave restores it."""

    def __init__(self):
        self.lock, self.users, self.limit = threading.Lock(), 0, None

    def __enter__(self):
        import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS now, so that the limit covers it)
        from threadpoolctl import threadpool_limits

        with self.lock:
            if self.users == 0:
                self.limit = threadpool_limits(limits=1, user_api="blas")
            self.users += 1

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.limit.restore_original_limits()


ONE_BLAS_THREAD = _SharedBlasLimit()


def blas_for(n_images: int):
    """BLAS on one thread while evaluating on a database of up to `ONE_BLAS_THREAD_UP_TO` images.

    numpy and scipy each bring their own OpenBLAS, whose idle workers spin for ~0.1 s after every
    call, so on few cores each library's workers took the CPU from the other's small calls
    (Paris6k-250, 2 cores: a 250 x 250 `eigh` 10-90 ms instead of 5; the Overview's 20 reports
    0.65-0.78 s, 0.29-0.33 s on one thread). Larger databases keep the libraries' threads."""
    return ONE_BLAS_THREAD if n_images <= ONE_BLAS_THREAD_UP_TO else nullcontext()


def stored_report(dataset: Dataset, entry_dir: Path, manifest: dict, method: Method, protocol: str,
                  evaluate, store: bool = True) -> dict:
    """`evaluation_report` of `method` from disk if computed before from these descriptors;
    else `evaluate()` (a callable returning the report, so the caller chooses how to rank
    and can reuse a cached diffusion graph) is called and, with `store` (False for a served
    bundle: read-only), the report stored."""
    report = read_stored_report(entry_dir, manifest, method, protocol)
    if report is None:
        with blas_for(len(dataset.images)):
            report = evaluate()
        if store:
            checksums = manifest["files"]["db.npy"], manifest["files"]["queries.npy"]
            _store(report_path(entry_dir, method, protocol), {"checksums": list(checksums), "report": report})
    return report


def store_overview_reports(dataset: Dataset, entry: Entry, protocols=None, progress=None) -> dict:
    """Evaluate and store every re-ranking the dashboard's Overview shows for this entry, so the
    dashboard opens on stored results; returns {(method, protocol): report}. Already stored
    ones are read, not recomputed. One graph per method serves every protocol and is dropped
    before the next method, so memory holds one method's working set at a time."""
    from .spectral import stored_ranker

    db, queries = np.asarray(entry.db, np.float32), np.asarray(entry.queries, np.float32)
    reports = {}
    for method in overview_methods(entry.method.descriptor_key(), len(dataset.images)):
        graph = []

        def evaluate(protocol: str, method=method, graph=graph):
            if method.rerank in GRAPH_RERANKINGS and not graph:
                graph.append(stored_ranker(entry, method))
            return blocked_report(method, db, queries, dataset, protocol, ranker=graph[0] if graph else None,
                                  progress=progress)
        for protocol in protocols or dataset.protocols:
            reports[method, protocol] = stored_report(dataset, entry.path, entry.manifest, method, protocol,
                                                      lambda protocol=protocol: evaluate(protocol))
    return reports


def usable_ks(ks, n_images: int) -> tuple[int, ...]:
    """A kNN graph needs k < n_images; larger k are dropped from the grid."""
    return tuple(int(k) for k in ks if 1 <= k < n_images)


def diffusion_map_grid(dataset: Dataset, entry: Entry, protocol: str, alphas=DEFAULT_ALPHAS,
                       ks=DEFAULT_KS, kq: int = 10, gamma: float = 3.0, progress=None) -> dict:
    """Reference full-list mAP of diffusion for every (alpha, k); `map[i][j]` is alphas[i], ks[j]."""
    ks = usable_ks(ks, len(dataset.images))
    gnd = dataset.gnd[protocol]
    grid = np.empty((len(alphas), len(ks)))
    listed = neighbours_for(entry, min(ks)) if ks else None  # read (and checked) once for every k it covers
    for j, k in enumerate(ks):
        ranker = DiffusionRanker(entry.db, k=k, gamma=gamma, neighbours=listed if covers(entry, k) else None)
        for i, alpha in enumerate(alphas):
            grid[i, j] = compute_map(ranker.rank(entry.queries, alpha=alpha, kq=kq), gnd)["map"]
        if progress is not None:
            progress(j + 1, len(ks), f"diffusion grid k={k}")
    return {"protocol": protocol, "alphas": [float(a) for a in alphas], "ks": list(ks),
            "kq": int(kq), "gamma": float(gamma), "db_sha256": entry.manifest["files"]["db.npy"],
            "map": grid.tolist()}


def grid_path(entry: Entry, protocol: str) -> Path:
    return Path(entry.path) / f"grid-{protocol}.json"


def load_grid(entry: Entry, protocol: str) -> dict | None:
    """The stored grid of this entry and protocol, or None if absent, unreadable or stale."""
    try:
        grid = json.loads(grid_path(entry, protocol).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(grid, dict) or grid.get("db_sha256") != entry.manifest["files"]["db.npy"]:
        return None
    values = np.asarray(grid.get("map", []), dtype=float)
    if values.shape != (len(grid.get("alphas", [])), len(grid.get("ks", []))):
        return None
    return grid


def stored_diffusion_grid(dataset: Dataset, entry: Entry, protocol: str, alphas=DEFAULT_ALPHAS,
                          ks=DEFAULT_KS, kq: int = 10, gamma: float = 3.0, progress=None,
                          store: bool = True) -> dict:
    """The grid from disk when it matches these parameters; else computed and (with `store`) stored.

    An unwritable cache still gets the computed grid; a served bundle passes `store=False`.
    """
    wanted = ([float(a) for a in alphas], list(usable_ks(ks, len(dataset.images))), int(kq), float(gamma))
    grid = load_grid(entry, protocol)
    if grid is not None and (grid["alphas"], grid["ks"], grid["kq"], grid["gamma"]) == wanted:
        return grid
    with blas_for(len(dataset.images)):
        grid = diffusion_map_grid(dataset, entry, protocol, alphas, ks, kq, gamma, progress)
    if store:
        _store(grid_path(entry, protocol), grid)
    return grid
