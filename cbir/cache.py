"""The descriptor cache: atomic writes, checksums, validation before use.

Layout (the dashboard and bundles read exactly this)::

    <cache>/<dataset key>/dataset.json            the Dataset (names, queries, ground truth)
    <cache>/<dataset key>/<method slug>/manifest.json
    <cache>/<dataset key>/<method slug>/db.npy        (n_images, dim) float32 or float16
    <cache>/<dataset key>/<method slug>/queries.npy   (n_queries, dim), cropped queries
    <cache>/<dataset key>/<method slug>/<name>.npy    further arrays (e.g. regions_sample.npy)
    <cache>/<dataset key>/.partial/<run id>/          chunks of an unfinished extraction

The dataset key is the dataset name plus a hash of its image names, so a partial
and a full copy of one benchmark never share entries. An entry directory is
written under a temporary name and renamed into place, manifest last, so a reader
sees a whole entry or none. `load_entry` checks format, checksums, shapes and
image names, and raises `CacheError` for anything off: callers rebuild, never use.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import weakref
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset
from .files import (LOCK_NAME, default_mode, hold_lock, is_locked, locked, make_temp_dir, read_exact,
                    reclaim_stale, regular_file, temp_prefix)
from .method import Method

FORMAT = 1
ARRAYS = ("db.npy", "queries.npy")


class CacheError(RuntimeError):
    """A cache entry is missing, incomplete, tampered with or stale."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a temporary renamed over it), with the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_directory(final: Path):
    """A temporary sibling directory that replaces `final` whole when the block succeeds.

    Readers see the old directory or the new one, never a half-written one; if the
    block fails (or is interrupted) the temporary directory is removed, and one left by
    a killed writer is reclaimed by the next. Concurrent writers of one `final` swap
    their directories in turn (a lock on the parent folder): the last one wins, none fails.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(final.parent)
    tmp, lock = make_temp_dir(final.parent, final.name)
    try:
        os.chmod(tmp, default_mode(0o777))
        yield tmp
        (tmp / LOCK_NAME).unlink()
        with locked(final.parent):
            if final.exists():
                trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final.name), suffix=".old"))
                os.replace(final, trash / final.name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def names_hash(names: list[str]) -> str:
    return hashlib.sha1("\n".join(names).encode()).hexdigest()


def dataset_key(dataset: Dataset) -> str:
    return f"{dataset.name}-{names_hash(dataset.images)[:8]}"


def dataset_dir(cache_root: Path, dataset: Dataset) -> Path:
    return Path(cache_root) / dataset_key(dataset)


def save_dataset(cache_root: Path, dataset: Dataset) -> Path:
    path = dataset_dir(cache_root, dataset) / "dataset.json"
    dataset.save(path)
    return path


def list_datasets(cache_root: Path, broken: list[str] | None = None, skip=None) -> dict[str, Dataset]:
    """Every dataset described in the cache, by key, but those whose key `skip(key)` is true;
    unreadable descriptions are skipped, each with a message naming its file appended to
    `broken` when given."""
    found = {}
    for path in sorted(Path(cache_root).glob("*/dataset.json")):
        if skip is not None and skip(path.parent.name):
            continue
        try:
            found[path.parent.name] = Dataset.load(path)
        except ValueError as exc:
            if broken is not None:
                broken.append(str(exc))
    return found


@dataclass
class Entry:
    db: np.ndarray
    queries: np.ndarray
    manifest: dict
    path: Path

    @property
    def method(self) -> Method:
        return Method.from_dict(self.manifest["method"])


def entry_dir(cache_root: Path, key: str, method: Method) -> Path:
    return Path(cache_root) / key / method.descriptor_key().slug()


def save_entry(cache_root: Path, dataset: Dataset, method: Method, db: np.ndarray,
               queries: np.ndarray, extra: dict | None = None,
               arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write one entry atomically: a temporary directory renamed into place.

    `arrays` are further named arrays stored beside the descriptors (e.g. the regional
    MAC sample R-MAC whitening is learned from), checksummed like them; read them
    with `load_entry_array`.
    """
    arrays = {name if name.endswith(".npy") else f"{name}.npy": np.ascontiguousarray(arr)
              for name, arr in (arrays or {}).items()}
    if set(arrays) & {*ARRAYS, "manifest.json"}:
        raise ValueError(f"extra arrays may not be named like the entry's own files: {sorted(arrays)}")
    db = np.ascontiguousarray(db)
    queries = np.ascontiguousarray(queries)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise ValueError(f"descriptor shapes do not match: db {db.shape}, queries {queries.shape}")
    if len(db) != len(dataset.images) or len(queries) != len(dataset.queries):
        raise ValueError(f"{len(db)} database / {len(queries)} query descriptors for a dataset "
                         f"of {len(dataset.images)} images / {len(dataset.queries)} queries")
    for arr, names, kind in ((db, dataset.images, "image"), (queries, [q.name for q in dataset.queries], "query")):
        problem = descriptor_problem(arr)
        if problem is not None:
            row, what = problem
            raise ValueError(f"{method.label()}: the descriptor of {kind} {names[row]} {what}; "
                             "refusing to store it")
    save_dataset(cache_root, dataset)
    final = entry_dir(cache_root, dataset_key(dataset), method)
    with atomic_directory(final) as tmp:
        for name, arr in [*zip(ARRAYS, (db, queries)), *arrays.items()]:
            with open(tmp / name, "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
        manifest = {
            "format": FORMAT,
            "method": method.descriptor_key().to_dict(),
            "dataset": dataset.name,
            "dataset_key": dataset_key(dataset),
            "names_sha1": names_hash(dataset.images),
            "query_names_sha1": names_hash([q.name for q in dataset.queries]),
            "n_images": int(db.shape[0]),
            "n_queries": int(queries.shape[0]),
            "dim": int(db.shape[1]),
            "dtype": str(db.dtype),
            "files": {name: sha256_file(tmp / name) for name in [*ARRAYS, *arrays]},
            "sizes": {name: (tmp / name).stat().st_size for name in [*ARRAYS, *arrays]},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    return final


UNIT_TOLERANCE = 1e-2  # float16 storage and PCA rounding stay far inside it


def descriptor_problem(arr: np.ndarray) -> tuple[int, str] | None:
    """(row, what is wrong) for the first descriptor that is not finite or not L2-normalised."""
    values = np.asarray(arr, np.float32)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        return int(np.argmin(finite)), "is not finite (NaN or infinity)"
    norms = np.linalg.norm(values, axis=1)
    off = np.abs(norms - 1) > UNIT_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        return row, f"has norm {norms[row]:.4g}, not 1 (descriptors are L2-normalised)"
    return None


def read_manifest(path: Path) -> dict:
    """The entry's manifest once it is a JSON object with a file table; CacheError otherwise."""
    file = Path(path) / "manifest.json"
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise CacheError(f"{path}: no manifest.json (entry missing or incomplete)") from exc
    except (ValueError, OSError) as exc:
        raise CacheError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CacheError(f"{file}: a {type(manifest).__name__}, not a JSON object; delete the entry and extract it again")
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{file}: format {manifest.get('format')!r}, "
                         f"this version reads {FORMAT}")
    files, sizes = manifest.get("files"), manifest.get("sizes", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) \
            or not set(ARRAYS) <= set(files):
        raise CacheError(f"{file}: no valid file table (\"files\" must map db.npy, queries.npy, ... "
                         "to checksums); delete the entry and extract it again")
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        raise CacheError(f"{file}: \"sizes\" must map file names to byte counts")
    if not all(isinstance(manifest.get(k), int) for k in ("n_images", "n_queries", "dim")):
        raise CacheError(f"{file}: n_images, n_queries and dim must be integers")
    try:
        Method.from_dict(manifest["method"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{file}: no valid method ({exc})") from exc
    return manifest


def entry_file(path: Path, manifest: dict, name: str) -> Path:
    """An entry's file once it is a regular file inside the entry, of the size its manifest states."""
    try:
        return regular_file(Path(path) / name, path, manifest.get("sizes", {}).get(name))
    except ValueError as exc:
        raise CacheError(str(exc)) from exc


def verified_array(path: Path, manifest: dict, name: str, verify: bool = True) -> np.ndarray:
    """One array of an entry, parsed from the very bytes whose checksum was verified."""
    file = entry_file(path, manifest, name)
    size = manifest.get("sizes", {}).get(name, file.stat().st_size)
    try:
        data = read_exact(file, size)
    except (ValueError, OSError) as exc:
        raise CacheError(str(exc)) from exc
    if verify and hashlib.sha256(data).hexdigest() != manifest["files"].get(name):
        raise CacheError(f"{path / name}: checksum mismatch (truncated or modified)")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CacheError(f"{path / name}: unreadable ({exc})") from exc


def checked_manifest(cache_root: Path, dataset: Dataset, method: Method, verify: bool = True) -> dict:
    """An entry's manifest once it matches `dataset` and `method` and (with `verify`) every
    array's checksum; CacheError naming the file and the problem otherwise. No array is kept."""
    path = entry_dir(cache_root, dataset_key(dataset), method)
    manifest = read_manifest(path)
    stored = Method.from_dict(manifest["method"])
    if stored != method.descriptor_key():
        raise CacheError(f"{path}/manifest.json: the entry holds {stored.label()}, not "
                         f"{method.descriptor_key().label()} (misplaced); delete it and extract again")
    if manifest.get("names_sha1") != names_hash(dataset.images):
        raise CacheError(f"{path}: descriptors were computed for other database images")
    if manifest.get("query_names_sha1") != names_hash([q.name for q in dataset.queries]):
        raise CacheError(f"{path}: query descriptors were computed for other queries")
    for name in ARRAYS:
        file = entry_file(path, manifest, name)
        if verify and sha256_file(file) != manifest["files"].get(name):
            raise CacheError(f"{path / name}: checksum mismatch (truncated or modified)")
    return manifest


def load_entry(cache_root: Path, dataset: Dataset, method: Method, verify: bool = True) -> Entry:
    """Load and validate an entry; any defect raises CacheError naming the file and the problem.

    The arrays are parsed from the bytes that were checksummed, and every descriptor
    must be finite and L2-normalised: a NaN row is refused here, not deep in a ranking.
    """
    path = entry_dir(cache_root, dataset_key(dataset), method)
    manifest = checked_manifest(cache_root, dataset, method, verify=False)
    db, queries = (verified_array(path, manifest, name, verify) for name in ARRAYS)
    expected = {"db.npy": (manifest["n_images"], manifest["dim"]),
                "queries.npy": (manifest["n_queries"], manifest["dim"])}
    for name, arr in zip(ARRAYS, (db, queries)):
        if arr.shape != expected[name]:
            raise CacheError(f"{path / name}: shape {arr.shape}, manifest says {expected[name]}")
        problem = descriptor_problem(arr)
        if problem is not None:
            raise CacheError(f"{path / name}: row {problem[0]} {problem[1]}; delete the entry and extract again")
    return Entry(db, queries, manifest, path)


def list_entries(cache_root: Path, key: str) -> list[Method]:
    """Methods with a readable manifest in their own folder under this dataset key
    (arrays not yet validated; an entry moved into another method's folder is not one)."""
    methods = []
    for path in sorted((Path(cache_root) / key).glob("*/manifest.json")):
        try:
            method = Method.from_dict(read_manifest(path.parent)["method"])
        except CacheError:
            continue
        if method.slug() == path.parent.name:
            methods.append(method)
    return methods


def load_entry_array(entry: Entry, name: str) -> np.ndarray:
    """One of an entry's further arrays (see `save_entry`), checksum-verified."""
    name = name if name.endswith(".npy") else f"{name}.npy"
    if entry.manifest["files"].get(name) is None:
        raise CacheError(f"{entry.path}: the entry stores no {name}")
    return verified_array(entry.path, entry.manifest, name)


def partial_dir(cache_root: Path, dataset: Dataset, run_id: str) -> Path:
    """Where an extraction run keeps its completed chunks until the entry is written."""
    return dataset_dir(cache_root, dataset) / ".partial" / run_id


PARTIAL_TTL_SECONDS = 24 * 3600


def reclaim_partials(partials: Path, keep: Path | None = None, max_age: float = PARTIAL_TTL_SECONDS) -> list[Path]:
    """Remove the partial runs no live process holds and none touched for `max_age` seconds
    (a killed run is resumed by rerunning its command soon; one abandoned a day is not)."""
    removed = []
    for run in (p for p in Path(partials).iterdir() if p.is_dir() and p != keep):
        try:
            age = time.time() - max(f.stat().st_mtime for f in [run, *run.iterdir()])
        except OSError:
            continue
        if age > max_age and not is_locked(run):
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
    return removed


class PartialRun:
    """The completed chunks of an extraction run, so that a killed run resumes where it stopped.

    Each chunk is one `.npz` written atomically, so a chunk file is whole or absent.
    `progress.json` holds the run's fingerprint (what was being computed, with which
    weights, in which chunking); chunks of a run with another fingerprint are discarded,
    never mixed in. It also accumulates the seconds spent, so an entry's extraction
    time counts every session that contributed.
    """

    def __init__(self, directory: Path, fingerprint: dict):
        self.directory = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            lock = hold_lock(self.directory, wait=False)
        except (BlockingIOError, PermissionError):
            raise RuntimeError(f"{self.directory}: another process is computing these descriptors; "
                               "wait for it to finish, or stop it") from None
        # Released by close()/remove(), or when the run is dropped (an interrupted pass).
        self._release = weakref.finalize(self, os.close, lock)
        reclaim_partials(self.directory.parent, keep=self.directory)
        state = self._read_state()
        if state is None or state.get("fingerprint") != self.fingerprint:
            for child in self.directory.iterdir():
                if child.name != LOCK_NAME:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            state = {"fingerprint": self.fingerprint, "seconds": 0.0}
            atomic_write_text(self.directory / "progress.json", json.dumps(state))
        self.seconds = float(state["seconds"])

    def close(self) -> None:
        """Release the run (its chunks stay for a later resume)."""
        self._release()

    def _read_state(self) -> dict | None:
        try:
            return json.loads((self.directory / "progress.json").read_text())
        except (OSError, ValueError):
            return None

    def chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:06d}.npz"

    def load_chunk(self, index: int) -> dict[str, np.ndarray] | None:
        """The arrays of a completed chunk, or None when it still has to be computed."""
        path = self.chunk_path(index)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)
            return None

    def save_chunk(self, index: int, arrays: dict[str, np.ndarray], seconds: float) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.chunk_path(index), buffer.getvalue())
        self.seconds += seconds
        atomic_write_text(self.directory / "progress.json",
                          json.dumps({"fingerprint": self.fingerprint, "seconds": self.seconds}))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.close()
        try:
            self.directory.parent.rmdir()
        except OSError:
            pass


def _named_ground_truth(ds: Dataset, keep: set[str], bad: set[str]) -> list:
    """Ground truth as image names (indices shift when an unreadable image is dropped)."""
    return [[sorted(ds.images[i] for i in g[part] if ds.images[i] not in bad) for part in sorted(g)]
            for gs in ds.gnd.values() for q, g in zip(ds.queries, gs) if q.name in keep]


def cached_dataset(cache_root: Path, listed: Dataset) -> Dataset | None:
    """The cached description of the same dataset as `listed`, or None.

    `listed` comes from a fast load that does not decode the images
    (`load_dataset(..., verify_images=False)`); decoding every image of a full
    benchmark takes seconds, too slow for a warm-cache `evaluate`. A cached
    description (saved, verified, when descriptors were extracted) matches when it
    has the same name, root, queries and ground truth, and its images are exactly the
    listed ones minus those it found unreadable.
    """
    for ds in list_datasets(cache_root).values():
        if ds.name != listed.name or ds.root != listed.root:
            continue
        bad = {u.get("name") for u in ds.unreadable}
        if ds.images != [n for n in listed.images if n not in bad]:
            continue
        queries = [(q.name, q.path, q.bbox) for q in listed.queries if q.name not in bad]
        if [(q.name, q.path, q.bbox) for q in ds.queries] != queries:
            continue
        keep = {q[0] for q in queries}
        if list(ds.gnd) == list(listed.gnd) and \
                _named_ground_truth(ds, keep, bad) == _named_ground_truth(listed, keep, bad):
            return ds
    return None
