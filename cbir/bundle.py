"""Shareable bundles: everything the dashboard reads, nothing more, checksummed.

A bundle is a cache directory (same layout as `cbir.cache`, so the dashboard
serves it by pointing `CBIR_CACHE_DIR` at it) restricted to one dataset and a few
methods, plus what replaces the original images and the heavy computations:

    <out>/bundle.json                      format, versions, every file's sha256 and size
    <out>/<key>/dataset.json               ground truth; `root` emptied (no originals)
    <out>/<key>/thumbs/<name>.jpg          thumbnails (max side `thumb_size`) of database images
                                           and of queries outside the database (box drawn by the app)
    <out>/<key>/thumbs.json                original (width, height) per thumbnail: box scaling
    <out>/<key>/<slug>/{manifest.json, db.npy, queries.npy}   float16 or PCA-reduced
    <out>/<key>/<slug>/grid-<protocol>.json                   diffusion (alpha, k) mAP grid
    <out>/<key>/<slug>/report-<protocol>-<re-ranking>.json    the Overview's evaluations
    <out>/<key>/<slug>/layout-*.npy                           UMAP layouts (cbir.manifold)
    <out>/<key>/<slug>/neighbours-K*.npz, spectrum-*.npz      top-K neighbour list, FSR eigenpairs
                                                              of the default graph (cbir.neighbours,
                                                              cbir.spectral)
    <out>/<distractor key>/<slug>/{manifest.json, topk-<key>-*.npz}   stored evaluations against
                                                              distractors (cbir.topkstore), lists only
    <out>/<distractor key>/thumbs.{bin,json}                  the distractor thumbnails they can show
                                                              (cbir.thumbshard), when the cache has them

A bundled entry's manifest records the full-precision entry it was reduced from
(`reduced_from`); the top-K lists, computed from that one, are checked against it when
the bundle is built and, inside the verified bundle, when served. The distractors'
descriptors and their description (a million names) are not carried: serving does not read them.

`bundle.json` describes the bundle completely (format 2): every file under `out` is
listed with its size and sha256, and `manifest_sha256` covers every other field.
`verify_bundle` refuses a bundle whose format differs, whose manifest was edited, any
of whose files is missing, unlisted, not a regular file inside it, or changed. A
served bundle is read-only: results computed while serving stay in memory. The
bundle is assembled in a temporary directory and renamed into place, so an
interrupted build leaves nothing half-written at `out`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import __version__
from .cache import (CacheError, atomic_directory, atomic_write_text, dataset_dir, dataset_key, load_entry,
                    names_hash, read_manifest, save_entry, sha256_file)
from .data import Dataset, open_image
from .evaluation import store_overview_reports, stored_diffusion_grid
from .files import LOCK_NAME, regular_file
from .extraction import INHERITED, entry_whitening, whitening_arrays
from .method import Method
from .topkstore import StaleTopK, checked_topk, is_distractor_key, reduced_from, stored_evaluations

BUNDLE_FORMAT = 2
MAX_FILE_BYTES = 100 * 1024 * 1024
THUMBS = "thumbs"


class BundleError(RuntimeError):
    """A bundle is incomplete, tampered with, or of another format."""


def thumbnail_path(key_dir: Path, name: str) -> Path:
    """Where the thumbnail of image `name` lives inside a bundle's dataset directory."""
    return Path(key_dir) / THUMBS / f"{name}.jpg"


def thumbnail_bytes(path: Path, size: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of the image shrunk to max side `size`, and the original (width, height)."""
    image = open_image(path)
    original = image.size
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, optimize=True)
    return buffer.getvalue(), original


def reduce_descriptors(db: np.ndarray, queries: np.ndarray, reduce: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """float16 (`reduce="float16"`) or PCA to D dimensions (`"pca:D"`, then float16), rows re-normalised.

    The PCA is fitted on the database itself: a compression step for sharing, which
    makes the bundle's figures differ slightly from the full descriptors' (recorded).
    """
    if reduce == "float16":
        return db.astype(np.float16), queries.astype(np.float16), {"reduce": "float16"}
    if reduce.startswith("pca:"):
        from sklearn.decomposition import PCA
        dim = int(reduce.split(":", 1)[1])
        if not 1 <= dim <= min(db.shape):
            raise ValueError(f"PCA dimension must lie in [1, {min(db.shape)}], got {dim}")
        pca = PCA(n_components=dim, random_state=0).fit(db.astype(np.float32))

        def project(x):
            y = pca.transform(x.astype(np.float32))
            return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float16)
        return project(db), project(queries), {"reduce": reduce, "reduce_note":
                                               "PCA fitted on this database (compression for sharing)"}
    raise ValueError(f"unknown reduction {reduce!r}: use float16 or pca:DIM")


def _write_thumbnails(dataset: Dataset, out_dir: Path, size: int, progress) -> None:
    originals = {}
    jobs = [(name, dataset.image_path(i)) for i, name in enumerate(dataset.images)]
    jobs += [(query.name, dataset.query_path(q)) for q, query in enumerate(dataset.queries) if query.index < 0]
    for done, (name, path) in enumerate(jobs, 1):
        data, original = thumbnail_bytes(path, size)
        target = thumbnail_path(out_dir, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        originals[name] = list(original)
        if progress is not None and (done % 100 == 0 or done == len(jobs)):
            progress(done, len(jobs), "thumbnails")
    (out_dir / "thumbs.json").write_text(json.dumps({"max_side": size, "original_size": originals}))


def _file_table(root: Path) -> dict:
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("bundle.json", LOCK_NAME)):
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            remedy = ("leave out the distractor evaluations (--no-distractors)" if is_distractor_key(
                path.relative_to(root).parts[0]) else "reduce the descriptors (e.g. --reduce pca:256)")
            raise BundleError(f"{path}: {size / 2**20:.0f} MiB, over GitHub's 100 MB file limit; "
                              f"{remedy} or use fewer methods")
        table[path.relative_to(root).as_posix()] = {"sha256": sha256_file(path), "bytes": size}
    return table


def _copy_converted_model(entry, bundle_root: Path) -> None:
    """The entry's OpenVINO model, so the served dashboard describes an upload without torch."""
    from .runtime import MODELS_DIR
    from .torchfree import model_file

    xml = model_file(entry)
    if xml is not None:
        (bundle_root / MODELS_DIR).mkdir(exist_ok=True)
        for path in (xml, xml.with_suffix(".bin")):
            shutil.copyfile(path, bundle_root / MODELS_DIR / path.name)


def _carry_distractor_evaluations(cache_root: Path, dataset: Dataset, entries: dict, bundle_root: Path) -> list[str]:
    """Copy the stored distractor evaluations the dashboard would serve for `dataset` and the
    bundled `entries` (each method's longest lists per protocol), each first checked against
    the cache entries it was computed from, with the thumbnails they can show; their names.
    A stale or damaged one stops the build (BundleError naming it): it would be refused when served."""
    from .thumbshard import copy_shard, shown_distractors

    shown: dict[str, list[str]] = {}
    names = set()
    for evaluation in stored_evaluations(cache_root).values():
        if evaluation.dataset_key != dataset_key(dataset):
            continue
        for (method, protocol), path in evaluation.files.items():
            entry = entries.get(method.descriptor_key())
            if entry is None:
                continue
            try:
                stored = checked_topk(path, dataset, protocol, entry.manifest, read_manifest(path.parent), method)
            except (StaleTopK, CacheError) as exc:
                raise BundleError(f"{exc}; or leave the distractor evaluations out (--no-distractors)") from None
            target = bundle_root / evaluation.distractor_key / path.parent.name
            target.mkdir(parents=True, exist_ok=True)
            for file in (path.parent / "manifest.json", path):
                shutil.copyfile(file, target / file.name)
            shown.setdefault(evaluation.distractor_key, []).extend(
                stored.distractor_path(i + stored.n_db) for i in shown_distractors(stored.topk.ids, stored.n_db))
            names.add(evaluation.name)
    for distractor_key, wanted in shown.items():
        copy_shard(Path(cache_root) / distractor_key, bundle_root / distractor_key, wanted)
    return sorted(names)


def build_bundle(cache_root: Path, dataset: Dataset, methods: list[Method], out: Path,
                 reduce: str = "float16", thumb_size: int = 256, layouts: bool = True,
                 grid_protocols: tuple[str, ...] | None = None, progress=None, models: bool = True,
                 distractors: bool = True) -> dict:
    """Assemble a bundle at `out` from validated cache entries; returns its manifest.

    `models=False` leaves out the entries' converted OpenVINO models (megabytes each): an
    upload is then described with torch. `distractors=False` leaves out the stored
    evaluations against distractors.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already exists and is not empty; choose a new --out")
    if not methods:
        raise ValueError("a bundle needs at least one method")
    entries = {}
    for method in methods:
        try:
            entries[method.descriptor_key()] = load_entry(cache_root, dataset, method)
        except CacheError as exc:
            raise CacheError(f"{exc}; extract it first with `python -m cbir extract`") from exc
    with atomic_directory(out) as tmp:
        shared = replace(dataset, root="", dropped_queries=[  # no local paths in a shared bundle
            {**d, "source": os.path.relpath(d["source"], dataset.root)} for d in dataset.dropped_queries])
        key_dir = dataset_dir(tmp, shared)
        _write_thumbnails(dataset, key_dir, thumb_size, progress)
        for method, entry in entries.items():
            if method.head and not (tmp / "heads" / method.head).exists():
                shutil.copytree(Path(cache_root) / "heads" / method.head, tmp / "heads" / method.head)
            db, queries, note = reduce_descriptors(entry.db, entry.queries, reduce)
            inherited = {k: v for k, v in entry.manifest.items() if k in INHERITED + ("whitening", "head")}
            # An uploaded query is whitened as the entry was; a PCA-reduced entry cannot take it.
            whitening = whitening_arrays(entry_whitening(entry)) if reduce == "float16" else {}
            save_entry(tmp, shared, method, db, queries,
                       {**inherited, **note, "reduced_from": reduced_from(entry.manifest)}, arrays=whitening)
            if reduce == "float16" and models:
                _copy_converted_model(entry, tmp)
            bundled = load_entry(tmp, shared, method)
            store_overview_reports(shared, bundled)
            for protocol in shared.protocols if grid_protocols is None else grid_protocols:
                stored_diffusion_grid(shared, bundled, protocol, progress=progress)
            if layouts:
                from .manifold import stored_layouts
                stored_layouts(shared, bundled, progress=progress)
        carried = _carry_distractor_evaluations(cache_root, dataset, entries, tmp) if distractors else []
        files = _file_table(tmp)
        manifest = {
            "format": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"cbir": __version__, "python": platform.python_version(),
                         "numpy": np.__version__},
            "dataset": dataset.name,
            "dataset_key": key_dir.name,
            "names_sha1": names_hash(dataset.images),
            "methods": [m.to_dict() for m in entries],
            "distractor_evaluations": carried,
            "reduce": reduce,
            "thumb_size": thumb_size,
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values()),
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_text(tmp / "bundle.json", json.dumps(manifest, indent=1))
    return manifest


def manifest_digest(manifest: dict) -> str:
    """sha256 of every field but itself, in a canonical JSON form."""
    fields = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_bundle(root: Path) -> bool:
    return (Path(root) / "bundle.json").is_file()


def _walk(root: str, prefix: str = ""):
    """(relative name, lstat result) of every non-directory under `root`, symlinked folders included."""
    with os.scandir(root) as entries:
        for entry in entries:
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, name + "/")
            else:
                yield name, entry.stat(follow_symlinks=False)


def present_files(root: Path) -> list[str]:
    """Every non-directory under `root` but bundle.json (symlinks included), relative, sorted."""
    return sorted(name for name, _ in _walk(str(root)) if name != "bundle.json")


def tree_stamp(root: Path) -> tuple:
    """(name, size, mtime) of every file under `root` (bundle.json included): a change means the
    bundle must be verified again. About a millisecond per 100 files."""
    return tuple(sorted((name, info.st_size, info.st_mtime_ns) for name, info in _walk(str(root))))


def _file_entry_problem(info) -> str | None:
    if not isinstance(info, dict):
        return "is not an object with sha256 and bytes"
    if not isinstance(info.get("sha256"), str) or not isinstance(info.get("bytes"), int) \
            or isinstance(info.get("bytes"), bool):
        return "needs a sha256 string and a bytes count"
    return None


def verify_bundle(root: Path) -> dict:
    """The bundle's manifest after checking that it describes the bundle completely:
    format, the manifest's own checksum, and presence, size and checksum of every file,
    with no file unlisted; BundleError naming the file and the problem otherwise."""
    root = Path(root)
    where = root / "bundle.json"
    try:
        manifest = json.loads(where.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{root}: no bundle.json; not a bundle") from exc
    except (ValueError, OSError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{where}: bundle format {found!r}; this version of cbir reads "
                          f"format {BUNDLE_FORMAT}: rebuild it with `python -m cbir bundle`")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise BundleError(f"{where}: its fields differ from its manifest_sha256 (edited); rebuild the bundle")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: no file table; rebuild the bundle")
    for name, info in files.items():
        problem = _file_entry_problem(info)
        if problem is not None:
            raise BundleError(f"{where}: the entry of {name} {problem}; rebuild the bundle")
    unlisted = sorted(set(present_files(root)) - set(files))
    if unlisted:
        raise BundleError(f"{root / unlisted[0]}: not listed in bundle.json ({len(unlisted)} unlisted files); "
                          "a bundle serves only what its manifest lists: remove them or rebuild")
    for name, info in files.items():
        path = root / name
        try:
            file = regular_file(path, root, info["bytes"])
        except ValueError as exc:
            raise BundleError(f"{exc} (listed in bundle.json)") from exc
        if path.is_symlink():
            raise BundleError(f"{path}: a symbolic link; a bundle holds regular files only")
        if sha256_file(file) != info["sha256"]:
            raise BundleError(f"{path}: contents differ from bundle.json (modified or truncated)")
    return manifest
