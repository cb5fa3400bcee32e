"""Evaluation results worth keeping on disk: the diffusion mAP grid over (alpha, k).

The grid costs one graph per k and one solve per alpha, seconds to minutes, so it
is computed once and stored next to the descriptors it was computed from
(`grid-<protocol>.json` in the cache entry). A re-extracted entry replaces its
directory, so a stale grid cannot survive; the file also records the parameters
and the descriptors' checksum and is recomputed when either differs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cache import Entry, atomic_write_text
from .data import Dataset
from .diffusion import DiffusionRanker
from .metrics import compute_map

DEFAULT_ALPHAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
DEFAULT_KS = (5, 10, 20, 30, 50, 100)


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
                          ks=DEFAULT_KS, kq: int = 10, gamma: float = 3.0, progress=None) -> dict:
    """The grid from disk when it matches these parameters; else computed and stored.

    A read-only cache (e.g. a bundle on a hosting service) still gets the computed grid.
    """
    wanted = ([float(a) for a in alphas], list(usable_ks(ks, len(dataset.images))), int(kq), float(gamma))
    grid = load_grid(entry, protocol)
    if grid is not None and (grid["alphas"], grid["ks"], grid["kq"], grid["gamma"]) == wanted:
        return grid
    grid = diffusion_map_grid(dataset, entry, protocol, alphas, ks, kq, gamma, progress)
    try:
        atomic_write_text(grid_path(entry, protocol), json.dumps(grid))
    except OSError:
        pass
    return grid
