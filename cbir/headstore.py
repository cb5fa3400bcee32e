"""Stored heads (cbir.heads trains them): load, apply, refuse a test set seen in training,
and a head's cache entry on an evaluation dataset. numpy only: evaluating with a head
and serving its descriptors never import torch (except a head with a tuned backbone
stage, which must describe the images again).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import CacheError, dataset_key, load_entry, names_hash, save_entry, sha256_file
from .data import Dataset
from .method import Method

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
FORMAT = 1
PARAMS_FILE = "head.npz"


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise ValueError(f"head name {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def head_dir(cache_root: Path, name: str) -> Path:
    return Path(cache_root) / "heads" / check_name(name)


# --- applying a head (numpy) --------------------------------------------------------

@dataclass(frozen=True)
class Head:
    """A trained head: its kind, parameters (numpy) and manifest (provenance)."""
    name: str
    kind: str
    params: dict
    manifest: dict

    def transform(self, x: np.ndarray) -> np.ndarray:
        """The head on vectors (pooled descriptors or regional MACs), before the final L2."""
        x = np.asarray(x, np.float32)
        if self.kind == "mlp":
            hidden = np.maximum(x @ self.params["0.weight"].T + self.params["0.bias"], 0)
            return hidden @ self.params["2.weight"].T + self.params["2.bias"]
        return x @ self.params["0.weight"].T + self.params["0.bias"]

    def describe(self, vectors: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
        """(n, D) descriptors: head, L2 per vector, summed per owner, L2 (one vector each: just head + L2)."""
        from .regionstore import aggregate

        out = self.transform(vectors)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return aggregate(out, owner, n)


def load_head(cache_root: Path, name: str) -> Head:
    path = head_dir(cache_root, name)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no trained head {name!r} in this cache "
                                f"(train it with python -m cbir finetune --name {name} ...)") from None
    except ValueError as exc:
        raise CacheError(f"{path}/manifest.json: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}/manifest.json: head format {manifest.get('format')!r}, this version reads {FORMAT}")
    file = path / PARAMS_FILE
    if not file.exists() or sha256_file(file) != manifest["files"].get(PARAMS_FILE):
        raise CacheError(f"{file}: missing or checksum mismatch (truncated or modified)")
    with np.load(file, allow_pickle=False) as data:
        params = {k: data[k] for k in data.files}
    return Head(name, manifest["kind"], params, manifest)


def list_heads(cache_root: Path) -> list[str]:
    return sorted(p.parent.name for p in (Path(cache_root) / "heads").glob("*/manifest.json"))


# --- never on the test set by accident -----------------------------------------------

def image_files(dataset: Dataset) -> list[Path]:
    """Every image file a dataset reads: database images and the source images of its queries."""
    paths = [dataset.image_path(i) for i in range(len(dataset.images))]
    paths += [dataset.query_path(q) for q in range(len(dataset.queries))]
    return list(dict.fromkeys(Path(p).resolve() for p in paths))


def check_overlap(head: Head | dict, dataset: Dataset) -> None:
    """Refuse a test dataset that shares an image (same resolved path or same content) with
    the head's training images; ValueError naming the head, the dataset and an example."""
    manifest = head.manifest if isinstance(head, Head) else head
    trained = manifest["training"]
    by_path = set(trained["image_paths"])
    by_hash = dict(zip(trained["image_sha256"], trained["image_paths"]))
    shared = []
    for path in image_files(dataset):
        if str(path) in by_path:
            shared.append(f"{path} (same path)")
        else:
            digest = sha256_file(path)
            if digest in by_hash:
                shared.append(f"{path} (same content as training image {by_hash[digest]})")
    if shared:
        raise ValueError(f"head {manifest['name']!r} was trained on {trained['dataset']} ({trained['root']}), "
                         f"which shares {len(shared)} images with {dataset.name} ({dataset.root}), e.g. "
                         f"{shared[0]}; evaluate on other images, or pass --transductive (then the method "
                         "is labelled transductive)")

def training_record(dataset: Dataset) -> dict:
    """What a head stores about its training set: enough to recognise its images anywhere."""
    paths = image_files(dataset)
    digests = [sha256_file(p) for p in paths]
    return {"dataset": dataset.name, "root": str(dataset.root), "key": dataset_key(dataset),
            "n_images": len(dataset.images), "classes": sorted(set(dataset.labels)),
            "images_sha1": names_hash(dataset.images), "content_sha1": names_hash(digests),
            "image_paths": [str(p) for p in paths], "image_sha256": digests}


# --- a head as a method: its descriptors on an evaluation dataset ------------------------

HEAD_INHERITED = ("versions", "weights_sha256", "weights_source", "backbone", "image_size", "resize",
                  "query_crop", "device", "precision", "skipped_images", "missing_images",
                  "n_images_total", "n_queries_total")


def head_summary(head: Head, transductive: bool) -> dict:
    """What a head entry records about its head (the evaluation's provenance)."""
    m = head.manifest
    return {"name": head.name, "kind": head.kind, "sha256": m["files"][PARAMS_FILE],
            "trained_on": f"{m['training']['dataset']} ({m['training']['root']}, "
                          f"{m['training']['n_images']} images, classes {', '.join(m['training']['classes'])})",
            "transductive": transductive, "applied": m["applied"], "loss": m["loss"],
            "best_epoch": m["history"]["best_epoch"], "train_seconds": m["train_seconds"],
            "hyperparameters": m["hyperparameters"]}


def head_entry(dataset: Dataset, method: Method, cache_root: Path, progress=None, **options):
    """The cache entry of `method` (which names a head) on `dataset`, built from the
    un-headed descriptors (all regions for R-MAC) when missing or made by another version
    of the head. Refuses a test set sharing images with the head's training set unless
    the method is marked transductive."""
    from .extraction import ensure_descriptors

    head = load_head(cache_root, method.head)
    base = method.without_head().descriptor_key()
    trained_for = Method.from_dict(head.manifest["method"])
    if trained_for != base:
        raise ValueError(f"head {head.name!r} was trained on {trained_for.label()} descriptors, "
                         f"not {base.label()}")
    if not method.head_transductive:
        check_overlap(head, dataset)
    try:
        entry = load_entry(cache_root, dataset, method)
        if entry.manifest.get("head") == head_summary(head, method.head_transductive):
            return entry  # the same head, retrained or not: its provenance must match too
    except CacheError:
        pass
    source = ensure_descriptors(dataset, base, cache_root, progress, **options)
    if head.manifest.get("unfreeze", "none") != "none":
        from .unfreeze import describe_dataset

        db, queries = describe_dataset(dataset, method, head, options.get("weights_file"), progress)
    elif base.pooling == "rmac":
        from .regionstore import ensure_regions

        regions = ensure_regions(dataset, base, cache_root, progress,
                                 **{k: options[k] for k in ("weights_file", "device") if k in options})
        db = head.describe(*regions.items("db"), len(dataset.images))
        queries = head.describe(*regions.items("queries"), len(dataset.queries))
    else:
        db = head.describe(source.db, np.arange(len(source.db)), len(source.db))
        queries = head.describe(source.queries, np.arange(len(source.queries)), len(source.queries))
    dtype = options.get("dtype") or "float32"
    extra = {k: source.manifest.get(k) for k in HEAD_INHERITED} | {
        "storage_dtype": dtype, "derived_from": source.path.name, "head": head_summary(head, method.head_transductive)}
    save_entry(cache_root, dataset, method, db.astype(dtype), queries.astype(dtype), extra=extra)
    return load_entry(cache_root, dataset, method)



def describe_image_with_head(path, method: Method, backbone, head: Head, bbox=None) -> np.ndarray:
    """(1, D) descriptor of one image file through `head`, as `head_entry` describes a cached
    query: the backbone's map, pooled (R-MAC: every region), the head, L2 (per region, summed)."""
    import torch

    from .extraction import RMAC_LEVELS, image_tensor, load_image
    from .pooling import pool, regional_macs

    if head.manifest.get("unfreeze", "none") != "none":
        raise ValueError(f"head {head.name!r} tuned the backbone's last stage: describing a single image "
                         "through it is not supported; evaluate a dataset instead")
    image = load_image(path, method.size, bbox)
    with torch.inference_mode():
        fmap = backbone.model(image_tensor(image, backbone.mean, backbone.std)[None]).float()
        vectors = regional_macs(fmap, L=RMAC_LEVELS) if method.pooling == "rmac" else pool(fmap, method.pooling)
    vectors = vectors.cpu().numpy()
    return head.describe(vectors, np.zeros(len(vectors), np.int64), 1)
