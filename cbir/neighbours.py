"""The database's top-K neighbour list, computed once per descriptor entry and stored beside it.

A diffusion graph for any k <= K is the mutual graph of the first k columns of this
list, so a k change (the Diffusion lab's slider, the (alpha, k) grid) costs building
sparse matrices instead of a kNN search over the whole database. The list lives in
the entry directory as `neighbours-K<K>.npz`, written atomically; it records the
descriptors' checksum and its own, and is recomputed when either does not match.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from .cache import Entry, atomic_write_bytes
from .diffusion import knn_neighbours

NEIGHBOURS_K = 100  # the largest k the dashboard's slider and the (alpha, k) grid offer


def array_checksum(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str} {array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def store_arrays(path: Path, db_sha256: str, **arrays: np.ndarray) -> None:
    """One npz written atomically with the descriptors' and its own checksum; an unwritable
    directory only loses the copy on disk, and a served bundle (`<root>/bundle.json` above
    `<root>/<dataset>/<entry>/`) is never written: it is read-only."""
    from .bundle import is_bundle

    if is_bundle(Path(path).parents[2]):
        return
    buffer = io.BytesIO()
    np.savez(buffer, db_sha256=np.array(db_sha256), checksum=np.array(array_checksum(*arrays.values())),
             **arrays)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError:
        pass


def load_arrays(path: Path, db_sha256: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named arrays of a `store_arrays` file, or None if absent, unreadable, stale or altered."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in ("db_sha256", "checksum", *names)}
    except (OSError, ValueError, EOFError, KeyError):
        return None
    arrays = {name: stored[name] for name in names}
    if str(stored["db_sha256"]) != db_sha256 or str(stored["checksum"]) != array_checksum(*arrays.values()):
        return None
    return arrays


def neighbours_path(entry: Entry, K: int) -> Path:
    return Path(entry.path) / f"neighbours-K{K}.npz"


def stored_neighbours(entry: Entry, K: int = NEIGHBOURS_K) -> tuple[np.ndarray, np.ndarray]:
    """`(sims, indices)` (n, K') of every database item's K' = min(K, n - 1) nearest others,
    by descending similarity: from the entry directory, else computed and stored there."""
    n = len(entry.db)
    K = min(K, n - 1)
    db_sha256 = entry.manifest["files"]["db.npy"]
    path = neighbours_path(entry, K)
    found = load_arrays(path, db_sha256, ("sims", "indices"))
    if found is not None and found["sims"].shape == found["indices"].shape == (n, K):
        return found["sims"], found["indices"]
    sims, indices = knn_neighbours(entry.db, K)
    store_arrays(path, db_sha256, sims=sims, indices=indices)
    return sims, indices


def covers(entry: Entry, k: int) -> bool:
    """Whether the stored list (top NEIGHBOURS_K of each item) holds a k-nearest-neighbour graph."""
    return k <= min(NEIGHBOURS_K, len(entry.db) - 1)


def neighbours_for(entry: Entry, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored list when it covers k (for `affinity_graph(..., neighbours=...)`), else None (search afresh)."""
    return stored_neighbours(entry) if covers(entry, k) else None
