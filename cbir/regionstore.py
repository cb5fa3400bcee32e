"""Every regional MAC of every image: what a head applied per R-MAC region needs.

R-MAC entries store only a sample of regions (enough to learn a PCA whitening); a
trained head applies to each region before the sum (as regional whitening does),
so training it and applying it need all of them. One forward pass per image stores
the (R_i, C) L2-normalised regional MACs of every database image and query (R_i
depends on the aspect ratio; the full map is the last region), in
`<cache>/<dataset key>/regions-<slug>/` with `regions.json` (checksums, counts).
Summing an image's regions and L2-normalising gives its R-MAC descriptor exactly.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import (CacheError, atomic_directory, atomic_write_text, dataset_dir, names_hash, save_dataset,
                    sha256_file)
from .data import Dataset
from .method import Method

FILES = ("vectors.npy", "counts.npy")


@dataclass(frozen=True)
class Regions:
    """Regional MACs of the database images then the queries, concatenated; `counts[i]` rows per item."""
    vectors: np.ndarray
    counts: np.ndarray
    n_db: int

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)])

    def items(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, owner index) of the database ("db") or the queries ("queries")."""
        lo, hi = (0, self.n_db) if which == "db" else (self.n_db, len(self.counts))
        start, stop = self.offsets[lo], self.offsets[hi]
        owner = np.repeat(np.arange(hi - lo), self.counts[lo:hi])
        return self.vectors[start:stop], owner


def regions_dir(cache_root: Path, dataset: Dataset, method: Method) -> Path:
    base = method.without_head().descriptor_key()
    return dataset_dir(cache_root, dataset) / f"regions-{base.slug()}"


def load_regions(cache_root: Path, dataset: Dataset, method: Method) -> Regions:
    """The stored regions, checksum- and shape-verified; CacheError naming the file otherwise."""
    path = regions_dir(cache_root, dataset, method)
    try:
        info = json.loads((path / "regions.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}/regions.json: missing or unreadable ({exc})") from exc
    if info.get("names_sha1") != names_hash(dataset.images) or \
            info.get("query_names_sha1") != names_hash([q.name for q in dataset.queries]):
        raise CacheError(f"{path}: regions were computed for other images or queries")
    arrays = []
    for name in FILES:
        if not (path / name).exists() or sha256_file(path / name) != info["files"].get(name):
            raise CacheError(f"{path / name}: missing or checksum mismatch")
        arrays.append(np.load(path / name, allow_pickle=False))
    vectors, counts = arrays
    if len(counts) != len(dataset.images) + len(dataset.queries) or counts.sum() != len(vectors):
        raise CacheError(f"{path}: {len(counts)} region counts / {len(vectors)} vectors do not match the dataset")
    return Regions(vectors, counts, len(dataset.images))


def compute_regions(dataset: Dataset, method: Method, cache_root: Path, progress=None,
                    weights_file: Path | None = None, device=None) -> Regions:
    """Run the backbone over every image and query and store all their regional MACs."""
    import torch

    from .backbones import load_backbone
    from .batching import row_items
    from .extraction import RMAC_LEVELS, image_tensor, load_image
    from .pooling import regional_macs

    base = method.without_head().descriptor_key()
    if base.pooling != "rmac" or base.whitening != "none":
        raise ValueError(f"regions are stored for un-whitened R-MAC methods, not {base.label()}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = load_backbone(base.backbone, base.weights, weights_file)
    model = backbone.model.to(device).eval()
    items = row_items(dataset)
    stage = f"{base.backbone} {base.size}px: all R-MAC regions"
    found, started = [], time.perf_counter()
    with torch.inference_mode():
        for done, (path, bbox) in enumerate(items):
            x = image_tensor(load_image(path, base.size, bbox), backbone.mean, backbone.std)[None].to(device)
            found.append(regional_macs(model(x).float(), L=RMAC_LEVELS).cpu().numpy())
            if progress:
                progress(done + 1, len(items), stage)
    vectors = np.concatenate(found).astype(np.float32)
    counts = np.array([len(r) for r in found], dtype=np.int64)
    save_dataset(cache_root, dataset)
    with atomic_directory(regions_dir(cache_root, dataset, method)) as tmp:
        for name, arr in zip(FILES, (vectors, counts)):
            with open(tmp / name, "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
        atomic_write_text(tmp / "regions.json", json.dumps({
            "method": base.to_dict(), "names_sha1": names_hash(dataset.images),
            "query_names_sha1": names_hash([q.name for q in dataset.queries]),
            "weights_sha256": backbone.weights_sha256, "seconds": round(time.perf_counter() - started, 3),
            "files": {name: sha256_file(tmp / name) for name in FILES}}, indent=1))
    return Regions(vectors, counts, len(dataset.images))


def ensure_regions(dataset: Dataset, method: Method, cache_root: Path, progress=None, **options) -> Regions:
    try:
        return load_regions(cache_root, dataset, method)
    except CacheError:
        return compute_regions(dataset, method, cache_root, progress, **options)


def aggregate(vectors: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Sum each item's (transformed, L2-normalised) regions and L2-normalise: R-MAC's last step."""
    summed = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(summed, owner, vectors)
    return (summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)).astype(np.float32)
