"""Descriptor extraction: one CNN forward pass per image feeds every pooling asked for.

The feature map is the expensive part, so all methods that share backbone, weights
and image size are computed in one pass. Images are only ever downscaled (longer
side = `method.size`, aspect kept, never centre-cropped); a query is cropped to its
box and the crop scaled by the factor its full image gets (REFERENCE.md "Query
crop"). Completed chunks of a pass go to a `.partial` directory, so a killed or
cancelled run resumes where it stopped and ends with the same descriptors.

torch and timm are imported inside the functions that run the model: loading a
valid cache entry (`ensure_descriptors` on a warm cache) stays light.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .batching import BATCH_PIXELS
from .cache import (CacheError, Entry, PartialRun, checked_manifest, dataset_key, entry_dir, list_datasets,
                    load_entry, load_entry_array, partial_dir, save_dataset, save_entry)
from .data import Dataset, to_rgb
from .method import Method

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

CHUNK_SIZE = 64
REGIONS_FILE = "regions_sample.npy"
REGIONS_SAMPLE = 20_000
WHITENING_MEAN = "whitening_mean.npy"
WHITENING_PROJECTION = "whitening_projection.npy"
RMAC_LEVELS = 3
WHITENING_POWER = {"pca": 0.5, "pca-partial": 0.25}
DTYPES = ("float32", "float16")
RESIZE_NOTE = "longer side scaled down to the method size (never up), aspect kept, no centre crop, LANCZOS"
QUERY_NOTE = "query cropped to its box; the crop scaled by its full image's factor"
# Provenance a post-hoc whitened entry copies from the un-whitened entry it is derived from.
INHERITED = ("versions", "weights_sha256", "weights_source", "weights_file", "backbone", "image_size",
             "images_per_second", "resize", "query_crop", "device", "precision", "runtime", "conversion",
             "shape_models", "extraction_seconds", "skipped_images", "missing_images", "n_images_total", "n_queries_total")


class ExtractionCancelled(RuntimeError):
    """The caller stopped the extraction; completed chunks are kept for the next run."""


# --- what the model sees ------------------------------------------------------

def scale_factor(width: int, height: int, size: int) -> float:
    """The factor that brings the longer side down to `size`; never above 1 (no upscaling)."""
    return min(1.0, size / max(width, height))


def crop_box(bbox, width: int, height: int, path) -> tuple[int, int, int, int]:
    """The query box in whole pixels, clipped to the image (as PIL's crop rounds it)."""
    if bbox is None:
        return 0, 0, width, height
    x1, y1, x2, y2 = (int(round(float(v))) for v in bbox)
    x1, x2 = max(0, x1), min(width, x2)
    y1, y2 = max(0, y1), min(height, y2)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{path}: query box {tuple(bbox)} is empty inside the {width}x{height} image")
    return x1, y1, x2, y2


def load_image(path, size: int, bbox=None):
    """The image (or query crop) as the model must see it, as a PIL RGB image.

    JPEG decoding uses `draft` (DCT scaling) only while the decoded image stays at
    least twice the target, as `PIL.Image.thumbnail` does, then LANCZOS does the rest.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            scale = scale_factor(width, height, size)
            box = crop_box(bbox, width, height, path)
            out = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
            img.draft("RGB", (2 * math.ceil(width * scale), 2 * math.ceil(height * scale)))
            fx, fy = img.size[0] / width, img.size[1] / height
            img = to_rgb(img, path)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from exc
    if (fx, fy) == (1.0, 1.0) and out == (box[2] - box[0], box[3] - box[1]):
        return img.crop(box) if bbox is not None else img
    return img.resize(out, Image.Resampling.LANCZOS,
                      box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy))


def pixels(image):
    """(3, h, w) uint8 tensor over a copy of the image's (h, w, 3) pixels: channels-last in memory."""
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def normalise(x, mean, std, memory_format=None):
    """uint8 pixels -> float32 normalised with the backbone's mean/std, in `memory_format`
    (default: the pixels' own).

    In-place torch ops into one output tensor laid out as the forward reads it: converting
    and transposing in one copy costs 1 ms for a 1024 px image on one thread, where
    normalising channels-last and transposing afterwards cost 4.7 ms. Extraction runs this in
    the model's process (on its device) so the decoding worker only decodes and ships 1 byte
    per value, not 4.
    """
    import torch

    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    offset = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape) * 255
    scale = 1 / (torch.tensor(std, dtype=torch.float32, device=x.device).view(shape) * 255)
    out = torch.empty_like(x, dtype=torch.float32, memory_format=memory_format or torch.preserve_format)
    return out.copy_(x).sub_(offset).mul_(scale)


def image_tensor(image, mean, std):
    """(3, h, w) float32 the model sees for `image`, normalised with the backbone's mean/std."""
    return normalise(pixels(image), mean, std)


class PassItems:
    """Database images then queries of one pass, decoded and resized by the DataLoader
    (in worker processes, or in a thread of this one: see `default_workers`)."""

    def __init__(self, items: list[tuple[str, tuple | None]], order: list[int], size: int):
        self.items, self.order, self.size = items, order, size

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        index = self.order[i]
        path, bbox = self.items[index]
        try:
            return index, pixels(load_image(path, self.size, bbox)), ""
        except ValueError as exc:
            return index, None, str(exc)


def _init_worker(_worker_id: int) -> None:
    """Decoding needs ~10% of a core: one thread, and a lower priority, so the model's
    threads keep their cores and decoding fills the gaps (prefetching hides the wait)."""
    import torch

    torch.set_num_threads(1)
    try:
        os.nice(10)
    except (AttributeError, OSError):
        pass


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(device_type: str = "cpu") -> int:
    """Decoding processes: enough to feed a GPU; on a CPU only cores the model does not use.

    Decoding and resizing a 1024 px JPEG costs ~15 ms against ~150 ms of forward on 2
    cores. A worker process there competes with the model's two threads (a thread it
    preempts stalls the other at the next barrier): end to end 0.78-0.85 of the bare
    forward, against 0.95 decoding in line (bench/extract.py). So on up to 2 cores
    decoding stays in the main process, in a thread a few images ahead (`cbir.batching.
    prefetched`); beyond, a quarter of the cores decode.
    """
    cores = cpu_count()
    if device_type == "cuda":
        return max(1, min(8, cores - 1))
    return 0 if cores <= 2 else max(1, cores // 4)


def default_threads(workers: int, device_type: str = "cpu") -> int:
    """torch threads: on a CPU the cores the decoding workers leave; with a GPU every core."""
    return max(1, cpu_count() - (workers if device_type == "cpu" else 0))


@contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- one forward pass, several heads ---------------------------------------------

@dataclass(frozen=True)
class Head:
    """One descriptor computed from the shared feature map; R-MAC may carry its regional whitening."""
    method: Method
    whitening: object = None
    store_regions: bool = False

    def fingerprint(self) -> dict:
        w = self.whitening
        digest = None
        if w is not None:
            digest = hashlib.sha1(np.ascontiguousarray(w.mean, np.float64).tobytes()
                                  + np.ascontiguousarray(w.projection, np.float64).tobytes()).hexdigest()
        return {"slug": self.method.slug(), "whitening": digest, "regions": self.store_regions}


def _pool_head(fmap, head: Head, regions=None):
    """`regions`: the map's regional MACs when already computed (`batch_regional_macs`)."""
    from .pooling import pool, rmac

    if head.method.pooling == "rmac":
        return rmac(fmap, L=RMAC_LEVELS, whitening=head.whitening, regions=regions)
    return pool(fmap, head.method.pooling)


def _region_sample(regions, index: int, quota: int) -> np.ndarray:
    """A fixed random subset (seeded by the image index, so resumes agree) of one image's (R, C)
    regional MACs."""
    regions = regions.float().cpu().numpy()
    rng = np.random.default_rng([20_000, index])
    take = np.sort(rng.choice(len(regions), size=min(quota, len(regions)), replace=False))
    return regions[take]


def _versions() -> dict:
    from importlib.metadata import version  # not `import timm`: OpenVINO extraction may never load it

    import PIL
    import torch

    return {"cbir": __version__, "torch": torch.__version__, "timm": version("timm"),
            "numpy": np.__version__, "pillow": PIL.__version__}


def _run_pass(dataset: Dataset, heads: list[Head], backbone, cache_root: Path, device, *, forward,
              progress: Progress | None, cancel, workers: int, chunk_size: int,
              batch_pixels: int, engine=None) -> tuple[dict, dict, PartialRun]:
    """Compute every head for every image and query: (arrays by head slug, run info, its partial run).

    `forward` is the runtime's (see `cbir.runtime`); equal-size images share a batch
    (`cbir.batching`). `engine` (e.g. `cbir.distributed.RayEngine`) computes the missing
    chunks elsewhere instead, writing them to the same partial run. The caller removes the
    partial run once the entries are written."""
    import torch

    from .batching import pass_items, prefetched

    items, rows = pass_items(dataset)
    n_db, n = len(dataset.images), len(items)
    n_chunks = math.ceil(n / chunk_size)
    quota = max(1, REGIONS_SAMPLE // max(1, n_db))
    stores_regions = any(h.store_regions for h in heads)
    fingerprint = {
        "dataset_key": dataset_key(dataset), "size": heads[0].method.size,
        "items_sha1": hashlib.sha1(json.dumps(items).encode()).hexdigest(),
        "backbone": backbone.name, "weights_sha256": backbone.weights_sha256,
        "heads": [h.fingerprint() for h in heads], "chunk_size": chunk_size,
        "region_quota": quota if stores_regions else 0, "device": device.type,
        "torch": torch.__version__, "runtime": forward.info["runtime"],
    }
    run_id = "{}-{}-{}-{}".format(backbone.name, heads[0].method.size, heads[0].method.weights,
                                  hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()[:12])
    run = PartialRun(partial_dir(cache_root, dataset, run_id), fingerprint)

    def chunk_range(c: int) -> range:
        return range(c * chunk_size, min(n, (c + 1) * chunk_size))

    def valid(c: int, arrays: dict | None) -> bool:
        expected = len(chunk_range(c))
        return arrays is not None and all(
            f"d{j}" in arrays and len(arrays[f"d{j}"]) == expected for j in range(len(heads))
        ) and (not stores_regions or "regions" in arrays)

    chunks = {c: arrays for c in range(n_chunks) if valid(c, arrays := run.load_chunk(c))}
    resumed = sum(len(chunk_range(c)) for c in chunks)
    todo = [i for c in range(n_chunks) if c not in chunks for i in chunk_range(c)]
    stage = f"{backbone.name} {heads[0].method.size}px: " + ", ".join(h.method.pooling for h in heads)
    if progress:
        progress(resumed, n, stage)

    if todo and engine is not None:
        engine(run, items, sorted({i // chunk_size for i in todo}), heads=heads, region_quota=quota, n_db=n_db,
               progress=progress, stage=stage, resumed=resumed, total=n)
        chunks = {c: run.load_chunk(c) for c in range(n_chunks)}
        incomplete = [c for c in range(n_chunks) if not valid(c, chunks[c])]
        if incomplete:
            raise RuntimeError(f"the {engine.name} engine left chunks {incomplete[:5]} of {run.directory} "
                               "incomplete; run the same command to resume")
    elif todo:
        from .chunks import ChunkDescriber

        decoded = PassItems(items, todo, heads[0].method.size)
        loader = torch.utils.data.DataLoader(
            decoded, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=_init_worker,
            prefetch_factor=4, pin_memory=device.type == "cuda") if workers else prefetched(decoded)
        done, started = resumed, time.perf_counter()
        describer = ChunkDescriber(heads, backbone, forward, device, batch_pixels=batch_pixels,
                                   region_quota=quota, n_db=n_db)
        with torch.inference_mode():
            for index, tensor, error in loader:
                if error:
                    raise RuntimeError(f"{error}; it is listed in the dataset, so the dataset changed "
                                       "on disk: reload it (unreadable images are skipped at load time)")
                c = index // chunk_size
                last = index == chunk_range(c)[-1]
                done += describer.add(index, tensor, last)
                if progress:
                    progress(done, n, stage)
                if last:
                    chunks[c] = describer.chunk_arrays(chunk_range(c))
                    run.save_chunk(c, chunks[c], time.perf_counter() - started)
                    started = time.perf_counter()
                if cancel is not None and cancel.is_set():
                    raise ExtractionCancelled(f"extraction cancelled after {done} of {n} images; "
                                              "completed chunks are kept and the next run resumes")

    ordered = [chunks[c] for c in range(n_chunks)]
    outputs = {h.method.slug(): np.concatenate([a[f"d{j}"] for a in ordered]).astype(np.float32)[rows]
               for j, h in enumerate(heads)}
    if stores_regions:
        outputs[REGIONS_FILE] = np.concatenate([a["regions"] for a in ordered]).astype(np.float32)
    info = {"extraction_seconds": round(run.seconds, 3), "resumed_items": resumed,
            "images_per_second": round(n / run.seconds, 3) if run.seconds else None}
    return outputs, info, run


# --- whitening ----------------------------------------------------------------------

def unwhitened(method: Method) -> Method:
    return replace(method.descriptor_key(), whitening="none", whiten_on="")


def whitening_source(method: Method, dataset: Dataset, cache_root: Path) -> tuple[str, Dataset]:
    """The dataset a whitening is learned on: `whiten_on` as a cache key or dataset name of
    another dataset, or the test dataset itself (transductive) when empty. Naming the test
    dataset is refused, so every method name that learned on it says "transductive"."""
    own = dataset_key(dataset)
    if method.whiten_on in (dataset.name, own):
        raise ValueError(f"whitening source {method.whiten_on!r} is the test dataset itself: leave "
                         "--whiten-on empty for transductive whitening (labelled so), or name another dataset")
    if method.whiten_on == "":
        return own, dataset
    cached = list_datasets(cache_root)
    if method.whiten_on in cached:
        return method.whiten_on, cached[method.whiten_on]
    named = {key: ds for key, ds in cached.items() if ds.name == method.whiten_on}
    if len(named) == 1:
        return next(iter(named.items()))
    if len(named) > 1:
        raise ValueError(f"whitening source {method.whiten_on!r} is ambiguous in {cache_root}: "
                         f"cached as {sorted(named)}; pass one of these keys")
    raise FileNotFoundError(
        f"whitening source {method.whiten_on!r} is not in the cache {cache_root}: extract "
        f"{unwhitened(method).label()} on it first (python -m cbir extract --dataset {method.whiten_on} ...)")


def learn_method_whitening(method: Method, source: Entry, source_key: str):
    """Learn the PCA whitening of `method` from a source entry: on its database descriptors,
    or for R-MAC on its sample of regional MACs (the whitening applies per region)."""
    from .whitening import learn_whitening

    if method.pooling == "rmac":
        try:
            X = load_entry_array(source, REGIONS_FILE)
        except CacheError as exc:
            raise CacheError(f"R-MAC whitening needs the regional sample of {source.path}: {exc}") from exc
    else:
        X = source.db
    return learn_whitening(np.asarray(X, np.float32), power=WHITENING_POWER[method.whitening],
                           learned_on=source_key)


def whitening_arrays(whitening) -> dict[str, np.ndarray]:
    """The learned whitening, stored in its entry so a new query can be described the same way."""
    if whitening is None:
        return {}
    return {WHITENING_MEAN: whitening.mean, WHITENING_PROJECTION: whitening.projection}


def describe_image(path, method: Method, backbone, bbox=None, whitening=None, forward=None) -> np.ndarray:
    """(1, D) float32 descriptor of one image file, computed exactly as a cached query is.

    For a query against a whitened entry pass `entry_whitening(entry)`: per region for
    R-MAC, after pooling otherwise, as the entry's own descriptors were whitened.
    `forward` is a `cbir.runtime` forward (default: torch on the CPU).
    """
    import torch

    from .multiscale import describe_scales
    from .runtime import TorchForward
    from .whitening import apply_whitening

    image = load_image(path, method.size, bbox)
    per_region = whitening if method.pooling == "rmac" else None
    forward = forward or TorchForward(backbone, torch.device("cpu"), method.precision)
    with torch.inference_mode():
        (desc,), _ = describe_scales(image_tensor(image, backbone.mean, backbone.std)[None], method.scales,
                                     forward, [(method.pooling, lambda f: _pool_head(f, Head(method, per_region)))])
        desc = desc.float().cpu().numpy()
    if whitening is not None and per_region is None:
        desc = apply_whitening(desc, whitening)
    return desc


def entry_whitening(entry: Entry):
    """The `cbir.whitening.Whitening` a whitened entry was computed with (None if un-whitened).

    For R-MAC it applies to each regional MAC (`cbir.pooling.rmac(fmap, whitening=...)`),
    otherwise to the pooled descriptor (`cbir.whitening.apply_whitening`).
    """
    info = entry.manifest.get("whitening")
    if not info:
        return None
    from .whitening import Whitening

    return Whitening(mean=load_entry_array(entry, WHITENING_MEAN),
                     projection=load_entry_array(entry, WHITENING_PROJECTION),
                     power=float(info["power"]), learned_on=info["learned_on"])


def _whitening_info(method: Method, dataset: Dataset, source_key: str, source: Entry, n: int) -> dict:
    return {"kind": method.whitening, "power": WHITENING_POWER[method.whitening],
            "learned_on": source_key, "transductive": source_key == dataset_key(dataset),
            "learned_from": (f"{n} regional MACs" if method.pooling == "rmac" else f"{n} database descriptors")
            + f" of {source.path.name}",
            "applied": "per region inside R-MAC" if method.pooling == "rmac" else "post-hoc, then L2"}


# --- public API -------------------------------------------------------------------

def _has_regions(entry: Entry) -> bool:
    return REGIONS_FILE in entry.manifest.get("files", {})


def _cached(cache_root: Path, dataset: Dataset, method: Method) -> Entry | None:
    try:
        entry = load_entry(cache_root, dataset, method)
    except CacheError:
        return None
    return entry if method.pooling != "rmac" or method.whitening != "none" or _has_regions(entry) else None


def _listed(cache_root: Path, dataset: Dataset, method: Method) -> bool:
    """Whether the cache has a usable-looking entry of `method`, from its manifest alone: deciding
    which poolings a pass adds must not read (and hash) each one's arrays. A damaged one is
    found, and rebuilt, when it is loaded."""
    try:
        manifest = checked_manifest(cache_root, dataset, method, verify=False)
    except CacheError:
        return False
    return method.pooling != "rmac" or method.whitening != "none" or REGIONS_FILE in manifest.get("files", {})


def extract(dataset: Dataset, methods: list[Method], cache_root: Path, progress: Progress | None = None,
            device=None, workers: int | None = None, *, dtype: str = "float32",
            weights_file: Path | None = None, cancel=None, chunk_size: int = CHUNK_SIZE,
            threads: int | None = None, runtime: str | None = None,
            batch_pixels: int = BATCH_PIXELS, engine=None) -> dict[Method, Entry]:
    """Compute, cache and return the descriptors of `methods` on `dataset` (recomputing them).

    Methods sharing backbone, weights and size share one forward pass. A whitened
    method is learned from the un-whitened descriptors of `whiten_on` (taken from the
    cache, or computed here when it is this dataset) and, for mac/spoc/gem, applied
    post-hoc; whitened R-MAC needs a second pass (whitening per region). `progress`
    is called as (done, total, stage); it may raise to stop, as may setting the
    `cancel` event: completed chunks stay in the cache's `.partial` directory and the
    next call resumes from them. Images that resize to the same height and width share
    a batch of at most `batch_pixels` input pixels (never cropped or distorted to batch).
    `runtime` runs the forward (`cbir.runtime`; default: OpenVINO on a CPU when installed).
    `engine` (`cbir.distributed.RayEngine`) computes the chunks on Ray instead of here.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; choose one of {DTYPES}")
    cache_root = Path(cache_root)
    save_dataset(cache_root, dataset)
    headed = [m for m in methods if m.head]
    if headed:
        raise ValueError(f"{headed[0].label()}: a trained head's descriptors come from cbir.headstore.head_entry "
                         "(ensure_descriptors routes there), not from an extraction")
    wanted = {m: m.descriptor_key() for m in methods}
    entries: dict[Method, Entry] = {}
    groups: dict[tuple, list[Method]] = {}
    for key in dict.fromkeys(wanted.values()):
        groups.setdefault((key.backbone, key.weights, key.size, key.precision, key.scales), []).append(key)
    for (backbone_name, weights, *_), group in groups.items():
        entries |= _extract_group(dataset, group, cache_root, backbone_name, weights, weights_file,
                                  progress=progress, device=device, workers=workers, dtype=dtype,
                                  cancel=cancel, chunk_size=chunk_size, threads=threads, runtime=runtime,
                                  batch_pixels=batch_pixels, engine=engine)
    return {m: entries[key] for m, key in wanted.items()}


def _extract_group(dataset, group, cache_root, backbone_name, weights, weights_file, *, progress, device,
                   workers, dtype, cancel, chunk_size, threads, runtime, batch_pixels, engine) -> dict[Method, Entry]:
    import torch

    from .runtime import check_runtime, default_runtime, make_forward, torch_threads_beside

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runtime = runtime or default_runtime(device.type)
    check_runtime(runtime, device.type)
    workers = default_workers(device.type) if workers is None else workers
    backbone = runner = None
    entries: dict[Method, Entry] = {}

    def get_backbone():
        nonlocal backbone
        if backbone is None:
            from .runtime import runtime_backbone

            backbone = runtime_backbone(runtime, backbone_name, weights, weights_file, device, cache_root,
                                        group[0].size)
        return backbone

    def get_runner(n_threads: int):
        nonlocal runner
        if runner is None:
            runner = make_forward(runtime, get_backbone(), device, cache_root=cache_root, size=group[0].size,
                                  precision=group[0].precision, threads=n_threads)
        return runner

    def save(heads: list[Head], outputs: dict, info: dict, run: PartialRun, whitenings: dict) -> None:
        bb = get_backbone()
        common = {"versions": _versions(), "weights_sha256": bb.weights_sha256,
                  "weights_source": bb.weights_source,
                  "weights_file": str(weights_file) if weights_file else None,
                  "backbone": {"name": bb.name, "channels": bb.channels, "n_params": bb.n_params,
                               "mean": list(bb.mean), "std": list(bb.std)},
                  "image_size": heads[0].method.size, "resize": RESIZE_NOTE, "query_crop": QUERY_NOTE,
                  "device": str(device), **runner.info, "storage_dtype": dtype, "n_images_total": dataset.n_images_total,
                  "n_queries_total": dataset.n_queries_total, "skipped_images": dataset.unreadable,
                  "missing_images": len(dataset.missing),
                  **info}
        n_db = len(dataset.images)

        def write_entries() -> None:
            for head in heads:
                desc = outputs[head.method.slug()]
                arrays = whitening_arrays(head.whitening)
                if head.store_regions:
                    arrays[REGIONS_FILE] = outputs[REGIONS_FILE]
                extra = common | {"whitening": whitenings.get(head.method), "regions_sample": (
                    len(outputs[REGIONS_FILE]) if head.store_regions else 0)}
                save_entry(cache_root, dataset, head.method, desc[:n_db].astype(dtype),
                           desc[n_db:].astype(dtype), extra=extra, arrays=arrays)
                entries[head.method] = load_entry(cache_root, dataset, head.method)

        try:
            write_entries()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # The chunks are all in memory: free the disk they hold, else every rerun fails the same way.
            run.remove()
            write_entries()
        run.remove()

    def forward(heads: list[Head], whitenings: dict) -> None:
        n_threads = threads or default_threads(workers, device.type)
        with torch_threads(torch_threads_beside(runtime, n_threads)):
            outputs, info, run = _run_pass(dataset, heads, get_backbone(), cache_root, device,
                                           forward=get_runner(n_threads), progress=progress, cancel=cancel,
                                           workers=workers, chunk_size=chunk_size, batch_pixels=batch_pixels,
                                           engine=engine and engine.for_group(
                                               backbone_name=backbone_name, weights=weights,
                                               weights_file=weights_file, runtime=runtime, device=device.type,
                                               cache_root=cache_root, chunk_size=chunk_size,
                                               batch_pixels=batch_pixels))
        save(heads, outputs, info, run, whitenings)

    plain = [m for m in group if m.whitening == "none"]
    whitened = [m for m in group if m.whitening != "none"]
    sources = {m: whitening_source(m, dataset, cache_root) for m in whitened}
    own_key = dataset_key(dataset)
    available: dict[tuple[str, Method], Entry] = {}
    for m in whitened:
        base = unwhitened(m)
        key, source_ds = sources[m]
        needed = [(key, source_ds)] + ([(own_key, dataset)] if m.pooling != "rmac" else [])
        for ds_key, ds in needed:
            if (ds_key, base) in available or (ds is dataset and base in plain):
                continue
            found = _cached(cache_root, ds, base)
            if found is not None:
                available[ds_key, base] = found
            elif ds is dataset:
                plain.append(base)
            else:
                raise FileNotFoundError(
                    f"whitening source {ds_key}: no valid cached {base.label()} in {cache_root}; "
                    f"extract it on {ds.name} first (python -m cbir extract --dataset {ds.name} ...)")
    if plain:
        forward([Head(m, None, m.pooling == "rmac") for m in plain], {})
        available |= {(own_key, m): entries[m] for m in plain}

    from .whitening import apply_whitening

    rmac_heads, whitenings = [], {}
    for m in whitened:
        key, _ = sources[m]
        source = available[key, unwhitened(m)]
        stage = f"learning {m.whitening} whitening on {key}"
        if progress:
            progress(0, 1, stage)
        w = learn_method_whitening(m, source, key)
        n_learned = len(load_entry_array(source, REGIONS_FILE)) if m.pooling == "rmac" else len(source.db)
        whitenings[m] = _whitening_info(m, dataset, key, source, n_learned)
        if m.pooling == "rmac":
            rmac_heads.append(Head(m, w))
        else:
            own = available[own_key, unwhitened(m)]
            extra = {k: own.manifest.get(k) for k in INHERITED}
            save_entry(cache_root, dataset, m,
                       apply_whitening(np.asarray(own.db, np.float32), w).astype(dtype),
                       apply_whitening(np.asarray(own.queries, np.float32), w).astype(dtype),
                       extra=extra | {"storage_dtype": dtype, "whitening": whitenings[m],
                                      "derived_from": own.path.name},
                       arrays=whitening_arrays(w))
            entries[m] = load_entry(cache_root, dataset, m)
        if progress:
            progress(1, 1, stage)
    if rmac_heads:
        forward(rmac_heads, whitenings)
    return {m: entries[m] for m in group}


def ensure_descriptors(dataset: Dataset, method: Method, cache_root: Path, progress: Progress | None = None,
                       **options) -> Entry:
    """The cached descriptors of `method` if the entry is valid; otherwise (re)build them
    (a trained head's from the descriptors it applies to).

    A present but defective entry (truncated, tampered, stale) is reported on the log
    before it is rebuilt, so nobody silently waits for a re-extraction. The pass that
    builds an un-whitened method also builds its other poolings the cache lacks: the
    forward is the cost, so the next pooling then costs nothing.
    """
    if method.head:
        from .headstore import head_entry

        return head_entry(dataset, method, cache_root, progress, **options)
    from .method import POOLINGS

    try:
        return load_entry(cache_root, dataset, method)
    except CacheError as exc:
        if entry_dir(cache_root, dataset_key(dataset), method).exists():
            log.warning("rebuilding defective cache entry: %s", exc)
    key = method.descriptor_key()
    siblings = [replace(key, pooling=p) for p in POOLINGS if p != key.pooling and key.whitening == "none"]
    missing = [m for m in siblings if not _listed(cache_root, dataset, m)]
    return extract(dataset, [method] + missing, cache_root, progress=progress, **options)[method]
