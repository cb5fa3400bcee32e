"""Serving a stored evaluation against distractors ("rParis6k + R1M") from its top-K lists.

Each method's `topk-*.npz` (`cbir.topkstore`) is checked against both cache entries'
manifests and the ground truth before use, and a stale or damaged one is refused with
a message naming it. Nothing here reads the distractors' descriptors or their dataset
description (a million rows, a million names): the report, the curves and the explorer's
gallery come from the lists, and a distractor tile is read only when it is shown: from
the thumbnail shard when the cache holds one (`cbir.thumbshard`), else from its image
under the distractors' root (a placeholder naming it when it is missing). A bundle carries
the lists, their thumbnails and the manifests they are checked against (`cbir.bundle`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from cbir import thumbshard
from cbir.cache import read_manifest
from cbir.method import Method
from cbir.topk import position_lists
from cbir.topkstore import (StoredEvaluation, StoredTopK, checked_topk, distractor_short_name, is_distractor_key,
                            stored_evaluations)

from . import gallery, loaders
from .state import cache_root


def evaluations() -> tuple[dict[str, StoredEvaluation], list[str]]:
    """The stored distractor evaluations of the served cache, and a message per file left out."""
    root = cache_root()
    files = [p for p in sorted(root.glob("*/*/topk-*.npz")) if is_distractor_key(p.parent.parent.name)]
    return _evaluations(str(root), tuple((str(p), loaders.file_stamp(p)) for p in files))


@st.cache_data(max_entries=4, show_spinner=False)
def _evaluations(root: str, stamp: tuple) -> tuple[dict[str, StoredEvaluation], list[str]]:
    problems: list[str] = []
    return stored_evaluations(Path(root), problems), problems


def stored(view, method: Method) -> StoredTopK:
    """The validated top-K lists of `method` in the view's evaluation and protocol; `StaleTopK`
    (a ValueError) or `CacheError` naming the file when it cannot be used."""
    path = view.distractors.files[(method, view.protocol)]
    dataset_file = cache_root() / view.key / "dataset.json"
    return _stored(*loaders.entry_identity(view.key, method), method, view.protocol, str(path),
                   loaders.file_stamp(path), loaders.file_stamp(path.parent / "manifest.json"),
                   loaders.file_stamp(dataset_file), loaders.bundle_manifest() is not None)


@st.cache_resource(max_entries=16, show_spinner="Checking the stored top-K lists...")
def _stored(root: str, key: str, slug: str, stamp: int, method: Method, protocol: str, path: str,
            topk_stamp: int, distractor_stamp: int, dataset_stamp: int, in_bundle: bool) -> StoredTopK:
    """In a verified bundle the lists are checked against the full-precision entry the bundled one
    was reduced from (`cbir.topkstore`)."""
    return checked_topk(Path(path), loaders.datasets()[key], protocol, loaders.manifest(key, method),
                        read_manifest(Path(path).parent), in_bundle=in_bundle)


def report(view, method: Method) -> dict:
    """The evaluation report (`cbir.topk.topk_report`) of `method` from its stored lists."""
    return stored(view, method).report(view.dataset, view.protocol)


def judged_ranking(view, method: Method) -> tuple[np.ndarray, list[dict]]:
    """(ranks, ground truth) restated over list positions (`cbir.topk.position_lists`): what
    the curves and AP functions of `cbir.metrics` take, positives beyond K never retrieved."""
    return position_lists(stored(view, method).topk)


def tiles(found: StoredTopK, q: int, top: int) -> list[gallery.Tile]:
    """The first `top` items of query `q`'s list, framed by the ground truth placed in it."""
    topk = found.topk
    kinds = {int(r): "positive" for r in topk.positive_ranks[q]} | {int(r): "junk" for r in topk.junk_ranks[q]}
    return [gallery.Tile(int(item), r + 1, kinds.get(r, "negative"), f"s={score:.3f}")
            for r, (item, score) in enumerate(zip(topk.ids[q, :top], topk.scores[q, :top]))]


def picture(view, found: StoredTopK):
    """`gallery.draw`'s picture function: None for database images (drawn as usual), distractors
    read lazily (one file per shown tile) under the distractors' root."""
    root = found.provenance.get("distractor_root", "")
    short = distractor_short_name(view.distractors.distractor_key)

    def draw_one(tile: gallery.Tile):
        if tile.index < found.n_db:
            return None
        relative = found.distractor_path(tile.index)
        image = shard_tile(view.distractors.distractor_key, relative)
        if image is None:
            image = gallery.thumbnail_under(root, view.distractors.distractor_key, relative, relative)
        return image, f"#{tile.rank} {relative} [{tile.kind}, {short} distractor] {tile.note}"
    return draw_one


def shard_tile(distractor_key: str, relative: str) -> Image.Image | None:
    """The distractor's thumbnail from the shard in the cache (`cbir.thumbshard`), if it holds it."""
    folder = cache_root() / distractor_key
    stamp = loaders.file_stamp(folder / thumbshard.INDEX)
    return _shard_tile(str(folder), relative, stamp, loaders.file_stamp(folder / thumbshard.BLOB)) if stamp else None


@st.cache_resource(max_entries=4, show_spinner=False)
def _shard_index(folder: str, stamp: int) -> dict:
    return thumbshard.read_index(Path(folder))


@st.cache_resource(max_entries=2048, show_spinner=False)
def _shard_tile(folder: str, relative: str, stamp: int, blob_stamp: int) -> Image.Image | None:
    """Read, checked by its hash, and decoded once per tile and shard version (not on every rerun)."""
    data = thumbshard.read_thumbnail(Path(folder), relative, _shard_index(folder, stamp))
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def refuse_descriptor_page(view, what: str) -> None:
    """Stop a page that needs every descriptor when the view is a stored distractor evaluation."""
    if view.distractors is None:
        return
    st.info(f"**{what} is not available for {view.distractors.name}**: it needs the descriptors of every "
            "ranked image, and a stored distractor evaluation keeps only each query's top-K list (so that "
            f"a million distractor descriptors are never loaded). Choose {view.dataset.display_name()} alone "
            "in the sidebar's Dataset for it; the Overview, Query explorer and Curves show this evaluation.")
    st.stop()
