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
from pathlib import Path

import numpy as np

from .cache import Entry, atomic_write_text
from .data import Dataset
from .diffusion import DiffusionRanker
from .method import Method
from .metrics import compute_map, evaluation_report

DEFAULT_ALPHAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
DEFAULT_KS = (5, 10, 20, 30, 50, 100)


OVERVIEW_RERANKINGS = ("none", "aqe", "diffusion")


def overview_methods(method: Method, n_images: int) -> list[Method]:
    """The re-rankings the dashboard's Overview shows for one descriptor entry, at the
    default parameters (k and kq capped below the database size, as the sliders are)."""
    params = {"k": min(method.k, n_images - 1), "kq": min(method.kq, n_images)}
    return [method.with_rerank(r, **params) if r == "diffusion" else method.with_rerank(r)
            for r in OVERVIEW_RERANKINGS]


def rerank_slug(method: Method) -> str:
    """The re-ranking part of a method, with its parameters, as a file-name part."""
    if method.rerank == "diffusion":
        return f"diffusion-a{method.alpha:g}-k{method.k}-kq{method.kq}-g{method.gamma:g}"
    if method.rerank in ("qe", "aqe"):
        return f"{method.rerank}-n{method.qe_n}"
    return "none"


def _store(path: Path, data: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(data))
    except OSError:
        pass


def stored_report(dataset: Dataset, entry_dir: Path, manifest: dict, method: Method, protocol: str,
                  ranks, store: bool = True) -> dict:
    """`evaluation_report` of `method` from disk if computed before from these descriptors;
    else `ranks()` (a callable, so the caller can reuse a cached diffusion graph) is
    evaluated and, with `store` (False for a served bundle: read-only), the report stored."""
    path = Path(entry_dir) / f"report-{protocol}-{rerank_slug(method)}.json"
    checksums = manifest["files"]["db.npy"], manifest["files"]["queries.npy"]
    try:
        stored = json.loads(path.read_text())
        if tuple(stored["checksums"]) == checksums and stored["report"]["protocol"] == protocol:
            return stored["report"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    report = evaluation_report(ranks(), dataset, protocol)
    if store:
        _store(path, {"checksums": list(checksums), "report": report})
    return report


def usable_ks(ks, n_images: int) -> tuple[int, ...]:
    """A kNN graph needs k < n_images; larger k are dropped from the grid."""
    return tuple(int(k) for k in ks if 1 <= k < n_images)


def diffusion_map_grid(dataset: Dataset, entry: Entry, protocol: str, alphas=DEFAULT_ALPHAS,
                       ks=DEFAULT_KS, kq: int = 10, gamma: float = 3.0, progress=None) -> dict:
    """Reference full-list mAP of diffusion for every (alpha, k); `map[i][j]` is alphas[i], ks[j]."""
    ks = usable_ks(ks, len(dataset.images))
    gnd = dataset.gnd[protocol]
    grid = np.empty((len(alphas), len(ks)))
    for j, k in enumerate(ks):
        ranker = DiffusionRanker(entry.db, k=k, gamma=gamma)
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
    grid = diffusion_map_grid(dataset, entry, protocol, alphas, ks, kq, gamma, progress)
    if store:
        _store(grid_path(entry, protocol), grid)
    return grid
