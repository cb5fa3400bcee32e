"""2-D layouts of the database before and after diffusion, aligned so points can be compared.

"Before" is UMAP of the descriptors (cosine). "After" is UMAP of the diffusion
affinities: the distances between images that diffusion itself implies. Diffusion
scores every pair by F = (I - alpha S)^-1 (up to the factor 1 - alpha); F is symmetric
positive definite, i.e. a Gram matrix F = Z Z^T of some features Z, so the diffusion
distance used here is the Euclidean distance between the unit-normalised rows of Z:

    C_ij = F_ij / sqrt(F_ii F_jj),   d_ij = sqrt(2 - 2 C_ij)

(a metric; normalising by the self-scores keeps hubs from becoming everyone's
neighbour; the ranking of j for a fixed i is by F_ij / sqrt(F_jj)). Images in different
connected components of the graph have C_ij = 0, d_ij = sqrt(2): they get no UMAP edge,
and an image with no edge at all (no mutual neighbour) stays where the "before" layout
put it. UMAP runs on d with metric="precomputed", initialised from the "before" layout,
and the result is Procrustes-aligned onto it. F is computed densely (Cholesky in
float32; I - alpha S has condition number at most (1 + alpha)/(1 - alpha)), about 10 s
for Paris6k's 6392 images on 2 cores; both UMAPs get an exact kNN graph from a blocked matrix product.

umap is imported inside the functions: its cold import and numba JIT take tens of seconds.
"""
from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import sparse
from scipy.linalg import get_lapack_funcs, orthogonal_procrustes

from .cache import atomic_write_bytes

MAX_DENSE_DIFFUSION = 16000
MIN_POINTS = 4
UNREACHABLE_DISTANCE = np.sqrt(2.0) - 1e-4  # C_ij ~ 0: diffusion never gets from i to j
LAYOUT_FORMAT = "v1"
# umap's choice for large data. On 6392 clustered points, trustworthiness@10 is 0.961 at 200
# epochs and 0.962 at umap's small-data default of 500, which takes 70% longer.
LAYOUT_EPOCHS = 200


def nearest_neighbours(distance_rows, n: int, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self included, as UMAP expects) from blocks of distance rows.

    `distance_rows(start, stop)` returns the (stop - start, n) distances of those rows;
    only one block is held at a time. Returns (indices, distances), (n, k), ascending.
    """
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = np.asarray(distance_rows(start, stop), dtype=np.float32)
        rows[np.arange(stop - start), np.arange(start, stop)] = -1.0  # self first, whatever ties
        top = np.argpartition(rows, k - 1, axis=1)[:, :k]
        top_distances = np.take_along_axis(rows, top, axis=1)
        order = np.argsort(top_distances, axis=1, kind="stable")
        indices[start:stop] = np.take_along_axis(top, order, axis=1)
        distances[start:stop] = np.maximum(np.take_along_axis(top_distances, order, axis=1), 0.0)
    return indices, distances


def _umap(data, metric: str, knn: tuple[np.ndarray, np.ndarray], seed: int, init, n_epochs,
          disconnection_distance: float | None = None) -> np.ndarray:
    """UMAP from an exact kNN graph (umap's own approximate search is slower here, and its JIT too).

    Pairs at `disconnection_distance` or more are no edges (see `_place_unconnected`).
    """
    import umap

    n = len(knn[0])
    if init is None:
        init = "spectral"
    else:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != (n, 2) or not np.isfinite(init).all():
            raise ValueError(f"init layout must be a finite ({n}, 2) array, got shape {init.shape}")
    reducer = umap.UMAP(n_components=2, metric=metric, n_neighbors=knn[0].shape[1],
                        random_state=seed, init=init, n_epochs=n_epochs, precomputed_knn=knn,
                        disconnection_distance=disconnection_distance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = reducer.fit_transform(data)
    return _place_unconnected(np.asarray(layout, dtype=np.float64), init).astype(np.float32)


def umap_layout(X, metric: str = "cosine", n_neighbors: int = 15, seed: int = 0, init=None,
                n_epochs: int | None = None) -> np.ndarray:
    """UMAP of descriptors X (n, d) to (n, 2) float32, metric cosine or euclidean.

    Deterministic for a given seed (umap then runs single-threaded).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) < MIN_POINTS:
        raise ValueError(f"need a 2-D array of at least {MIN_POINTS} descriptors, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("descriptors contain NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        unit = X / np.where(norms > 0, norms, 1.0)

        def rows(start, stop):
            return 1.0 - unit[start:stop] @ unit.T
    elif metric == "euclidean":
        squared = np.einsum("ij,ij->i", X, X)

        def rows(start, stop):
            cross = X[start:stop] @ X.T
            return np.sqrt(np.maximum(squared[start:stop, None] - 2.0 * cross + squared[None, :], 0.0))
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    knn = nearest_neighbours(rows, len(X), min(n_neighbors, len(X) - 1))
    return _umap(X, metric, knn, seed, init, n_epochs)


def diffusion_distances(S, alpha: float = 0.99) -> np.ndarray:
    """Dense (n, n) float32 diffusion distances d_ij = sqrt(2 - 2 C_ij) (see the module doc).

    S is the normalised graph D^-1/2 A D^-1/2 (cbir.diffusion.normalize_graph).
    """
    n = S.shape[0]
    if S.ndim != 2 or S.shape != (n, n):
        raise ValueError(f"affinity must be a square matrix, got shape {S.shape}")
    if n > MAX_DENSE_DIFFUSION:
        raise ValueError(f"diffusion layout solves a dense {n} x {n} system; "
                         f"more than {MAX_DENSE_DIFFUSION} images is not supported")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    dense = S.toarray() if sparse.issparse(S) else np.asarray(S)
    system = np.asfortranarray(-alpha * dense, dtype=np.float32)
    if not np.isfinite(system).all():
        raise ValueError("affinity contains NaN or infinite values")
    if np.abs(system - system.T).max() > 1e-5:
        raise ValueError("affinity must be symmetric (use the normalised diffusion graph S)")
    system[np.diag_indices(n)] += 1.0
    potrf, potri = get_lapack_funcs(("potrf", "potri"), (system,))
    factor, info = potrf(system, lower=True, overwrite_a=True)
    if info != 0:
        raise ValueError("I - alpha S is not positive definite: pass the normalised graph "
                         "S = D^-1/2 A D^-1/2, not the raw affinities")
    inverse, info = potri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise RuntimeError(f"inverting I - alpha S failed (LAPACK potri info={info})")
    F = np.tril(inverse)
    del inverse, factor
    F += np.tril(F, -1).T
    scale = 1.0 / np.sqrt(np.diag(F))
    F *= scale[:, None]
    F *= scale[None, :]
    np.clip(F, -1.0, 1.0, out=F)
    F = np.sqrt(2.0 - 2.0 * F, out=F)
    F[np.diag_indices(n)] = 0.0
    return F


def diffusion_layout(affinity, init=None, seed: int = 0, alpha: float = 0.99,
                     n_neighbors: int = 15, n_epochs: int | None = None) -> np.ndarray:
    """UMAP (metric="precomputed") of the diffusion distances of graph S, (n, 2) float32."""
    if affinity.shape[0] < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} points, got {affinity.shape[0]}")
    distances = diffusion_distances(affinity, alpha)
    n = len(distances)
    knn = nearest_neighbours(lambda start, stop: distances[start:stop].copy(), n, min(n_neighbors, n - 1))
    return _umap(distances, "precomputed", knn, seed, init, n_epochs,
                 disconnection_distance=UNREACHABLE_DISTANCE)


def _similarity_fit(source: np.ndarray, target: np.ndarray):
    """The rotation (or reflection), scale and shift taking `source` closest to `target`, as a function."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"layouts differ in shape: {source.shape} vs {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    centred = source - source_mean
    norm = (centred ** 2).sum()
    if norm == 0:
        raise ValueError("cannot align a layout whose points all coincide")
    rotation, singular_sum = orthogonal_procrustes(centred, target - target_mean)
    scale = singular_sum / norm

    def transform(points):
        return scale * (np.asarray(points, dtype=np.float64) - source_mean) @ rotation + target_mean
    return transform


def align(layout, reference) -> np.ndarray:
    """Map `layout` onto `reference` by the best rotation (or reflection), scale and shift.

    Orthogonal Procrustes: both layouts keep their shape; only their arbitrary
    orientation, size and position are made to agree so the same image can be found.
    """
    return _similarity_fit(layout, reference)(layout).astype(np.float32)


def _place_unconnected(layout: np.ndarray, init) -> np.ndarray:
    """Give points UMAP left without coordinates (no edge at all) a place.

    With an init layout they stay where it put them (mapped into the new layout's frame);
    without one they go on a ring around the layout, in index order.
    """
    lost = ~np.isfinite(layout).all(axis=1)
    if not lost.any():
        return layout
    if lost.all():
        raise RuntimeError("no two points are connected: nothing to lay out")
    layout = layout.copy()
    if isinstance(init, np.ndarray):
        layout[lost] = _similarity_fit(init[~lost], layout[~lost])(init[lost])
    else:
        centre = layout[~lost].mean(axis=0)
        radius = 1.1 * np.linalg.norm(layout[~lost] - centre, axis=1).max()
        angles = 2 * np.pi * np.arange(lost.sum()) / lost.sum()
        layout[lost] = centre + radius * np.column_stack([np.cos(angles), np.sin(angles)])
    return layout


def _load_layout(path: Path, n: int) -> np.ndarray | None:
    """A cached layout if it is a readable, finite (n, 2) float32 array; None otherwise."""
    try:
        layout = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if layout.shape != (n, 2) or layout.dtype != np.float32 or not np.isfinite(layout).all():
        return None
    return layout


def _save_layout(path: Path, layout: np.ndarray) -> None:
    """Write atomically; an unwritable (e.g. read-only bundle) directory only loses the cache."""
    buffer = io.BytesIO()
    np.save(buffer, layout)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass


def _digest(array: np.ndarray) -> str:
    """Content hash of the values as float32, so a float16 entry and its float32 copy agree."""
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()[:12]


def graph_key(k: int, gamma: float, alpha: float) -> str:
    """The name of a diffusion graph and alpha in layout file names."""
    return f"k{k}-g{gamma:g}-a{alpha:g}"


def _layout_paths(db: np.ndarray, cache_dir: Path, key: str,
                  before: np.ndarray | None = None) -> tuple[Path, Path | None]:
    """Where the before layout of `db` lives, and (given it) the after layout for graph `key`."""
    if not re.fullmatch(r"[A-Za-z0-9_.=-]+", key):
        raise ValueError(f"layout key {key!r} must be letters, digits and _ . = - only")
    cache_dir = Path(cache_dir)
    before_path = cache_dir / f"layout-{LAYOUT_FORMAT}-before-{_digest(db)}.npy"
    after_path = None if before is None else cache_dir / f"layout-{LAYOUT_FORMAT}-after-{key}-{_digest(before)}.npy"
    return before_path, after_path


def read_layouts(db, cache_dir: Path, key: str) -> dict[str, np.ndarray] | None:
    """The stored layouts of `db` for graph `key`, or None if either is absent or malformed.

    Needs neither the graph nor umap: what the dashboard calls on every rerun.
    """
    db = np.asarray(db)
    before_path, _ = _layout_paths(db, cache_dir, key)
    before = _load_layout(before_path, len(db))
    if before is None:
        return None
    after = _load_layout(_layout_paths(db, cache_dir, key, before)[1], len(db))
    return None if after is None else {"before": before, "after": after}


def layouts(db, S, cache_dir: Path, key: str, recompute: bool = False,
            progress: Callable[[int, int, str], None] | None = None,
            alpha: float = 0.99, store: bool = True) -> dict[str, np.ndarray]:
    """Aligned before/after-diffusion layouts of the database, cached as npy in cache_dir.

    `key` names the graph (`graph_key`): it must change whenever S or alpha do.
    File names carry digests of what each layout was computed from (the descriptors;
    for "after" also the "before" layout it was initialised from and aligned to), so a
    layout is never paired with other data. Missing, unreadable or malformed files are
    recomputed; a read-only cache directory still gets the computed layouts, and
    `store=False` (a served bundle) writes nothing.
    """
    db = np.asarray(db)
    n = len(db)
    if S.shape != (n, n):
        raise ValueError(f"graph of shape {S.shape} does not match {n} database descriptors")
    report = progress or (lambda done, total, stage: None)
    before_path, _ = _layout_paths(db, cache_dir, key)
    before = None if recompute else _load_layout(before_path, n)
    if before is None:
        report(0, 2, "UMAP of the descriptors")
        before = umap_layout(db, n_epochs=LAYOUT_EPOCHS)
        if store:
            _save_layout(before_path, before)
    _, after_path = _layout_paths(db, cache_dir, key, before)
    after = None if recompute else _load_layout(after_path, n)
    if after is None:
        report(1, 2, "UMAP of the diffusion affinities")
        after = align(diffusion_layout(S, init=before, alpha=alpha, n_epochs=LAYOUT_EPOCHS), before)
        if store:
            _save_layout(after_path, after)
    report(2, 2, "layouts ready")
    return {"before": before, "after": after}


def stored_layouts(dataset, entry, k: int = 50, gamma: float = 3.0, alpha: float = 0.99,
                   recompute: bool = False, progress=None) -> dict[str, np.ndarray]:
    """Layouts of a cache entry's database with its diffusion graph, stored in the entry directory.

    k is capped at n_images - 1 (a kNN graph needs k < n).
    """
    from .diffusion import affinity_graph, normalize_graph

    n = len(entry.db)
    if n != len(dataset.images):
        raise ValueError(f"{entry.path}: {n} descriptors for {len(dataset.images)} images")
    k = min(int(k), n - 1)
    S = normalize_graph(affinity_graph(entry.db, k=k, gamma=gamma))
    return layouts(entry.db, S, Path(entry.path), graph_key(k, gamma, alpha),
                   recompute=recompute, progress=progress, alpha=alpha)
