"""The descriptor cache: atomic writes, checksums, validation before use.

Layout (the dashboard and bundles read exactly this)::

    <cache>/<dataset key>/dataset.json            the Dataset (names, queries, ground truth)
    <cache>/<dataset key>/<method slug>/manifest.json
    <cache>/<dataset key>/<method slug>/db.npy        (n_images, dim) float32 or float16
    <cache>/<dataset key>/<method slug>/queries.npy   (n_queries, dim), cropped queries

The dataset key is the dataset name plus a hash of its image names, so a partial
and a full copy of one benchmark never share entries. An entry directory is
written under a temporary name and renamed into place, manifest last, so a reader
sees a whole entry or none. `load_entry` checks format, checksums, shapes and
image names, and raises `CacheError` for anything off: callers rebuild, never use.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset
from .method import Method

FORMAT = 1
ARRAYS = ("db.npy", "queries.npy")


class CacheError(RuntimeError):
    """A cache entry is missing, incomplete, tampered with or stale."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def list_datasets(cache_root: Path) -> dict[str, Dataset]:
    """Every dataset described in the cache, by key; unreadable descriptions are skipped."""
    found = {}
    for path in sorted(Path(cache_root).glob("*/dataset.json")):
        try:
            found[path.parent.name] = Dataset.load(path)
        except ValueError:
            continue
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
               queries: np.ndarray, extra: dict | None = None) -> Path:
    """Write one entry atomically: a temporary directory renamed into place."""
    db = np.ascontiguousarray(db)
    queries = np.ascontiguousarray(queries)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise ValueError(f"descriptor shapes do not match: db {db.shape}, queries {queries.shape}")
    if len(db) != len(dataset.images) or len(queries) != len(dataset.queries):
        raise ValueError(f"{len(db)} database / {len(queries)} query descriptors for a dataset "
                         f"of {len(dataset.images)} images / {len(dataset.queries)} queries")
    save_dataset(cache_root, dataset)
    final = entry_dir(cache_root, dataset_key(dataset), method)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for name, arr in zip(ARRAYS, (db, queries)):
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
            "files": {name: sha256_file(tmp / name) for name in ARRAYS},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
    except FileNotFoundError as exc:
        raise CacheError(f"{path}: no manifest.json (entry missing or incomplete)") from exc
    except ValueError as exc:
        raise CacheError(f"{path}/manifest.json: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}/manifest.json: format {manifest.get('format')!r}, "
                         f"this version reads {FORMAT}")
    return manifest


def load_entry(cache_root: Path, dataset: Dataset, method: Method, verify: bool = True) -> Entry:
    """Load and validate an entry; any defect raises CacheError naming the file and the problem."""
    path = entry_dir(cache_root, dataset_key(dataset), method)
    manifest = read_manifest(path)
    if manifest.get("names_sha1") != names_hash(dataset.images):
        raise CacheError(f"{path}: descriptors were computed for other database images")
    if manifest.get("query_names_sha1") != names_hash([q.name for q in dataset.queries]):
        raise CacheError(f"{path}: query descriptors were computed for other queries")
    arrays = []
    for name in ARRAYS:
        file = path / name
        if not file.exists():
            raise CacheError(f"{file}: missing")
        if verify and sha256_file(file) != manifest["files"].get(name):
            raise CacheError(f"{file}: checksum mismatch (truncated or modified)")
        try:
            arrays.append(np.load(file, allow_pickle=False))
        except (ValueError, OSError, EOFError) as exc:
            raise CacheError(f"{file}: unreadable ({exc})") from exc
    db, queries = arrays
    expected = {"db.npy": (manifest["n_images"], manifest["dim"]),
                "queries.npy": (manifest["n_queries"], manifest["dim"])}
    for name, arr in zip(ARRAYS, arrays):
        if arr.shape != expected[name]:
            raise CacheError(f"{path / name}: shape {arr.shape}, manifest says {expected[name]}")
    return Entry(db, queries, manifest, path)


def list_entries(cache_root: Path, key: str) -> list[Method]:
    """Methods with a manifest under this dataset key (not yet validated)."""
    methods = []
    for path in sorted((Path(cache_root) / key).glob("*/manifest.json")):
        try:
            methods.append(Method.from_dict(read_manifest(path.parent)["method"]))
        except (CacheError, ValueError, KeyError, TypeError):
            continue
    return methods
