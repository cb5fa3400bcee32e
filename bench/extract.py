"""Extraction throughput: end to end (decode, resize, forward, 4 poolings, cache) against the bare forward.

    python -m bench.extract [--root ../shared/data/paris6k-250] [--limit 32] [--rounds 3] [--size 1024]

Both figures come from the same run on the same images: the bare forward gets
tensors decoded beforehand, the end-to-end run is `cbir.extraction.extract` into a
temporary cache with MAC, SPoC, GeM and R-MAC, with extract's default thread and
worker counts (see `cbir.extraction.default_workers`: on 2 cores decoding stays in
line, which measured faster than a worker process competing with the model's
threads); the bare forward uses every core. Target: end to end >= 0.9 of the bare
forward. `--workers 1` shows the worker variant. Bare and end-to-end runs alternate
for a few rounds, as other processes on a shared machine shift the figures. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--limit", type=int, default=32, help="database images to time")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as extract chooses)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: as extract chooses; 0 = decode in line)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare / end-to-end rounds")
    args = parser.parse_args()

    import torch

    from cbir.backbones import load_backbone
    from cbir.data import load_dataset
    from cbir.extraction import (cpu_count, default_threads, default_workers, extract, image_tensor, load_image,
                                 torch_threads)
    from cbir.method import Method

    workers = default_workers() if args.workers is None else args.workers
    threads = args.threads or default_threads(workers)
    bare_threads = args.threads or cpu_count()
    dataset = database_only(load_dataset(args.dataset, args.root), args.limit)
    n = len(dataset.images)
    backbone = load_backbone(args.backbone, args.weights)
    model = backbone.model.to(memory_format=torch.channels_last)
    tensors = [image_tensor(load_image(dataset.image_path(i), args.size), backbone.mean, backbone.std)
               for i in range(n)]
    methods = [Method(backbone=args.backbone, pooling=p, size=args.size, weights=args.weights)
               for p in ("mac", "spoc", "gem", "rmac")]
    bare, passes, walls = [], [], []
    with torch_threads(bare_threads):
        bare_forward(model, tensors[:2], torch)  # warm-up: first-call allocations
        for _ in range(args.rounds):
            bare.append(bare_forward(model, tensors, torch))
            with tempfile.TemporaryDirectory() as cache:
                start = time.perf_counter()
                entry = extract(dataset, methods, Path(cache), workers=workers, threads=threads)[methods[0]]
                walls.append(n / (time.perf_counter() - start))
            passes.append(n / entry.manifest["extraction_seconds"])
        bare.append(bare_forward(model, tensors, torch))
    # A round's end-to-end run is compared with the bare runs just before and after it.
    around = [(a + b) / 2 for a, b in zip(bare, bare[1:])]
    print(json.dumps({
        "images": n, "size": args.size, "backbone": args.backbone, "torch_threads": threads,
        "bare_forward_threads": bare_threads, "workers": workers,
        "cpu_cores": cpu_count(), "load_average": os.getloadavg(),
        "bare_forward_images_per_s": [round(r, 3) for r in bare],
        "end_to_end_images_per_s": [round(r, 3) for r in walls],
        "end_to_end_pass_images_per_s": [round(r, 3) for r in passes],
        "ratio_end_to_end": [round(w / b, 3) for w, b in zip(walls, around)],
        "ratio_pass_only": [round(p / b, 3) for p, b in zip(passes, around)],
        "best_ratio_end_to_end": round(max(walls) / max(bare), 3),
        "best_ratio_pass_only": round(max(passes) / max(bare), 3),
        "note": "end_to_end includes loading the backbone and starting the worker; pass_only is the "
                "extraction loop (decode, forward, 4 poolings, chunk writes); best_* compare the best "
                "round of each, the fairest figure on a machine shared with other processes",
    }, indent=1))

if __name__ == "__main__":
    main()
