"""The cnnimageretrieval SfM-120k training set (Radenovic et al.), as a labelled collection.

For users who download it (`retrieval-SfM-120k.pkl` and the `ims/` folder, laid out as
cnnimageretrieval's `cid2filename`: `ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>`).
The pickle is read with the restricted unpickler; an image's class is its 3D-model
cluster, so `cbir.heads` pairs images of one cluster. Its queries are the pickle's
query pool (`qidxs`). Listed images that are not on disk are `missing`.
"""
from __future__ import annotations

from pathlib import Path

from .data import Dataset, labelled_collection, load_restricted_pickle

PICKLE = "retrieval-SfM-120k.pkl"
SPLITS = ("train", "val")


def cid_path(cid: str) -> str:
    return f"ims/{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}"


def load_sfm120k(root: Path, split: str = "train", queries=None, verify_images: bool = True,
                 workers: int | None = None) -> Dataset:
    """`root` holds the pickle (or is it); `split` is train or val."""
    root = Path(root)
    pickle_path = root if root.is_file() else root / PICKLE
    if split not in SPLITS:
        raise ValueError(f"SfM-120k split must be one of {SPLITS}, got {split!r}")
    data = load_restricted_pickle(pickle_path)
    part = data.get(split)
    if not isinstance(part, dict) or not {"cids", "cluster", "qidxs"} <= set(part):
        raise ValueError(f"{pickle_path}: expected {{'{split}': {{'cids', 'cluster', 'qidxs', ...}}}}")
    cids, clusters = [str(c) for c in part["cids"]], list(part["cluster"])
    if len(cids) != len(clusters):
        raise ValueError(f"{pickle_path}: {len(cids)} images but {len(clusters)} cluster ids in {split!r}")
    folder = pickle_path.parent
    files = {cid: cid_path(cid) for cid in cids}
    labels = {cid: str(c) for cid, c in zip(cids, clusters)}
    present = {cid for cid in cids if (folder / files[cid]).is_file()}
    if not present:
        raise FileNotFoundError(f"{folder}/ims: none of the {len(cids)} {split} images of {pickle_path.name} "
                                "is there (download the images next to the pickle)")
    if queries is None:
        queries = list(dict.fromkeys(cids[int(q)] for q in part["qidxs"] if cids[int(q)] in present))
    return labelled_collection("sfm120k", folder, files, labels, queries, verify_images, workers)
