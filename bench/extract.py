"""Extraction throughput: end to end (decode, resize, forward, 4 poolings, cache) against the bare forward.

    python bench/extract.py [--root ../shared/data/paris6k-250] [--limit 64] [--size 1024]

Both figures come from the same run on the same images: the bare forward gets
tensors decoded beforehand, the end-to-end run is `cbir.extraction.extract` into a
temporary cache with MAC, SPoC, GeM and R-MAC. Decoding and resizing happen in a
DataLoader worker while the model runs, so the end-to-end rate should stay within
10% of the bare forward (target ratio >= 0.9). The bare forward is timed before
and after the end-to-end run and averaged, as other processes on a shared machine
shift the figures. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "paris6k-250"


def database_only(dataset, limit: int):
    """The first `limit` database images, without queries (the throughput of images alone)."""
    return replace(dataset, images=dataset.images[:limit], paths=dataset.paths[:limit],
                   labels=dataset.labels[:limit], queries=[], gnd={p: [] for p in dataset.gnd})


def bare_forward(model, tensors, torch) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for x in tensors:
            model(x.unsqueeze(0).contiguous(memory_format=torch.channels_last))
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="paris6k")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--limit", type=int, default=64, help="database images to time")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    args = parser.parse_args()

    import torch

    from cbir.backbones import load_backbone
    from cbir.data import load_dataset
    from cbir.extraction import cpu_count, default_workers, extract, image_tensor, load_image, torch_threads
    from cbir.method import Method

    threads = args.threads or cpu_count()
    workers = default_workers() if args.workers is None else args.workers
    dataset = database_only(load_dataset(args.dataset, args.root), args.limit)
    n = len(dataset.images)
    backbone = load_backbone(args.backbone, args.weights)
    model = backbone.model.to(memory_format=torch.channels_last)
    tensors = [image_tensor(load_image(dataset.image_path(i), args.size), backbone.mean, backbone.std)
               for i in range(n)]
    methods = [Method(backbone=args.backbone, pooling=p, size=args.size, weights=args.weights)
               for p in ("mac", "spoc", "gem", "rmac")]
    with torch_threads(threads):
        bare_forward(model, tensors[:2], torch)  # warm-up: first-call allocations
        bare_before = bare_forward(model, tensors, torch)
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            entry = extract(dataset, methods, Path(cache), workers=workers, threads=threads)[methods[0]]
            wall = time.perf_counter() - start
        bare_after = bare_forward(model, tensors, torch)
    bare = (bare_before + bare_after) / 2
    pass_rate = n / entry.manifest["extraction_seconds"]
    print(json.dumps({
        "images": n, "size": args.size, "backbone": args.backbone, "torch_threads": threads, "workers": workers,
        "cpu_cores": cpu_count(),
        "bare_forward_images_per_s": {"before": round(bare_before, 3), "after": round(bare_after, 3),
                                      "mean": round(bare, 3)},
        "end_to_end_images_per_s": round(n / wall, 3),
        "end_to_end_pass_images_per_s": round(pass_rate, 3),
        "ratio_end_to_end": round(n / wall / bare, 3),
        "ratio_pass_only": round(pass_rate / bare, 3),
        "note": "end_to_end includes loading the backbone and starting the worker; "
                "pass_only is the extraction loop (decode, forward, 4 poolings, chunk writes)",
    }, indent=1))


if __name__ == "__main__":
    main()
