"""The embedded demo: a bundle of real Paris6k results committed with the repository.

A fresh clone (and Streamlit Community Cloud, with nothing to configure) opens on it:
EfficientNet-Lite0/1/2 (the ImageNet weights that install offline) x MAC, SPoC, GeM,
R-MAC at 1024 px on the 250-image Paris6k subset, as float16 descriptors with 256 px
thumbnails, stored evaluations, (alpha, k) grids and UMAP layouts. It is an ordinary
bundle (`cbir.bundle`), verified like any other before it is served, and rebuilt by
`python -m cbir demo --root <paris6k-250 folder>`.
"""
from __future__ import annotations

import os
from pathlib import Path

from .method import POOLINGS, Method

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "demo" / "paris6k-250"
BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
SIZE = 1024
MAX_BYTES = 25 * 2**20
DESCRIPTION = ("Demo: 250 of the 6392 Paris6k images (12 of its 55 queries, original protocol), "
               "EfficientNet-Lite0/1/2 with ImageNet weights at 1024 px, float16 descriptors. "
               "Figures on it are not comparable with full-benchmark numbers.")


def demo_dir() -> Path | None:
    """Where the demo is read from: `CBIR_DEMO_DIR` if set (empty: no demo), else the repository's."""
    configured = os.environ.get("CBIR_DEMO_DIR")
    if configured is None:
        return DEMO_DIR
    return Path(configured) if configured else None


def demo_methods() -> list[Method]:
    return [Method(backbone=b, pooling=p, size=SIZE) for b in BACKBONES for p in POOLINGS]


def build_demo(root: Path, out: Path, cache: Path, progress=None) -> dict:
    """Extract what `cache` lacks from the Paris6k-250 folder `root`, then bundle it at `out`.

    Refuses a folder that is not that subset, and a result over 25 MB (it is committed).
    """
    from .bundle import build_bundle
    from .data import load_dataset
    from .extraction import ensure_descriptors

    dataset = load_dataset("paris6k", root)
    if len(dataset.images) != 250 or len(dataset.queries) != 12:
        raise ValueError(f"{root}: {dataset.status_line()}; the demo is built from the Paris6k-250 "
                         "subset (250 images, 12 queries)")
    methods = demo_methods()
    for method in methods:  # the first of a backbone extracts its four poolings in one pass
        ensure_descriptors(dataset, method, cache, progress)
    # No converted models: three of them would exceed the 25 MB; an upload is described with torch.
    # No distractor evaluations: the demo is Paris6k-250 alone, whatever else the cache holds.
    manifest = build_bundle(cache, dataset, methods, out, reduce="float16", thumb_size=256, progress=progress,
                            models=False, distractors=False)
    if manifest["total_bytes"] > MAX_BYTES:
        raise ValueError(f"{out}: {manifest['total_bytes'] / 2**20:.1f} MiB, over the demo's 25 MB limit")
    return manifest
