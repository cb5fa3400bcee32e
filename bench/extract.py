"""Extraction throughput per runtime: bare forward and end to end, torch against OpenVINO, same images.

    python -m bench.extract [--root ../shared/data/paris6k-250] [--limit 24] [--rounds 2] [--size 1024]
                            [--small 96] [--small-side 128]

Two workloads, each timed in one run with the runtimes alternating round by round (a
shared machine's load shifts between rounds; the best round of each is compared, and
`round_ratios_*` give each round's own ratio):

- `photos`: the first `--limit` Paris6k-250 database images at `--size` (1024 px, mixed
  aspect, so batches are of one image);
- `small`: a generated folder of `--small` images that resize to `--small-side` px (128),
  equal in size, so they are batched.

Per runtime: the bare forward (tensors decoded beforehand, batch 1) and `extract` end to
end (decode, resize, forward, the four poolings, cache writes) into a fresh cache, the
converted model reused (its conversion time is printed apart), as the whole call and as
its extraction loop (`loop_*`: model loading and entry writing left out). `today` is the end-to-end
torch extraction at batch 1 on this code (decoding in a thread: a stricter baseline than the code
before runtimes and batching, which decoded in line and ran at 0.87-0.92 of the forward). The OpenVINO
run is repeated with scales 1, 0.7071, 0.5: its cost against the single scale is to stay
within the scales' pixels (1 + 0.5 + 0.25 = 1.75). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "paris6k-250"
MULTISCALE = (1.0, 0.7071, 0.5)


def database_only(dataset, limit: int):
    """The first `limit` database images, without queries (the throughput of images alone)."""
    return replace(dataset, images=dataset.images[:limit], paths=dataset.paths[:limit],
                   labels=dataset.labels[:limit], queries=[], gnd={p: [] for p in dataset.gnd})


def small_folder(root: Path, n: int, side: int) -> Path:
    """`n` JPEGs of side * 5/4 x side (3 classes) that resize to side x 4/5 side."""
    sys.path.insert(0, str(REPO / "tests"))
    from synthetic import make_class_folder

    return make_class_folder(root, per_class=max(1, n // 3), size=(side * 5 // 4, side))


def images_per_second(n: int, seconds: float) -> float:
    return round(n / seconds, 3)


def bare_forward(forward, tensors, torch) -> float:
    """Images/s of the forward alone, on inputs laid out beforehand as it reads them (as the
    extractor normalises them): the layout copy is not the forward's cost."""
    inputs = [x.unsqueeze(0).contiguous(memory_format=forward.input_format) for x in tensors]
    start = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            forward(x)
    return images_per_second(len(inputs), time.perf_counter() - start)


def end_to_end(dataset, methods, models: Path, **options) -> tuple[float, float]:
    """`extract` into a fresh cache that shares the converted models folder: images/s of the
    whole call (model loading and compiling, cache writes included) and of its extraction loop
    (decode to descriptors, as the entry's manifest records it)."""
    from cbir.extraction import extract
    from cbir.runtime import MODELS_DIR

    with tempfile.TemporaryDirectory() as cache:
        (Path(cache) / MODELS_DIR).symlink_to(models, target_is_directory=True)
        start = time.perf_counter()
        entries = extract(dataset, methods, Path(cache), **options)
        call = images_per_second(len(dataset.images), time.perf_counter() - start)
        return call, next(iter(entries.values())).manifest["images_per_second"]


def per_round(figures: dict, fast: str, slow: str) -> list[float]:
    """The ratio within each round, whose runs are minutes apart: the spread the best-of-rounds
    ratio hides when the machine's speed drifts between rounds."""
    return [round(a / b, 3) for a, b in zip(figures[fast], figures[slow])]


def workload(name, dataset, size, args, backbone, models, torch) -> dict:
    from cbir.extraction import cpu_count, default_threads, default_workers, image_tensor, load_image
    from cbir.method import POOLINGS, Method
    from cbir.runtime import OpenVINOForward, TorchForward, converted_model

    workers = default_workers() if args.workers is None else args.workers
    threads = args.threads or default_threads(workers)
    n = len(dataset.images)
    tensors = [image_tensor(load_image(dataset.image_path(i), size), backbone.mean, backbone.std)
               for i in range(n)]
    methods = [Method(backbone=args.backbone, pooling=p, size=size, weights=args.weights) for p in POOLINGS]
    start = time.perf_counter()
    _, conversion = converted_model(backbone, models.parent, size)
    forwards = {"torch": TorchForward(backbone, torch.device("cpu")),
                "openvino": OpenVINOForward(backbone, models.parent, size, threads=threads)}
    runs = {"torch": {"workers": workers, "threads": threads, "runtime": "torch"},
            "openvino": {"workers": workers, "threads": threads, "runtime": "openvino"},
            "today": {"workers": workers, "threads": threads, "runtime": "torch", "batch_pixels": 1}}
    multiscale = [replace(m, scales=MULTISCALE) for m in methods]
    figures = ({f"forward_{k}": [] for k in forwards} | {f"end_to_end_{k}": [] for k in runs}
               | {f"loop_{k}": [] for k in runs} | {"end_to_end_openvino_multiscale": []})
    from cbir.extraction import torch_threads

    with torch_threads(threads):
        for forward in forwards.values():
            bare_forward(forward, tensors[:2], torch)  # warm-up: first-call allocations
        for _ in range(args.rounds):
            for key, forward in forwards.items():
                figures[f"forward_{key}"].append(bare_forward(forward, tensors, torch))
            for key, options in runs.items():
                call, loop = end_to_end(dataset, methods, models, **options)
                figures[f"end_to_end_{key}"].append(call)
                figures[f"loop_{key}"].append(loop)
            figures["end_to_end_openvino_multiscale"].append(end_to_end(dataset, multiscale, models,
                                                                        **runs["openvino"])[0])
    best = {k: max(v) for k, v in figures.items()}
    return {"workload": name, "images": n, "size": size, "threads": threads, "workers": workers,
            "cpu_cores": cpu_count(), "conversion_seconds": conversion["conversion_seconds"],
            "conversion_cached": conversion["conversion_cached"],
            "prepare_seconds": round(time.perf_counter() - start, 3),
            "images_per_s": figures, "best_images_per_s": best,
            "ratio_forward_openvino_vs_torch": round(best["forward_openvino"] / best["forward_torch"], 3),
            "ratio_end_to_end_openvino_vs_today": round(best["end_to_end_openvino"] / best["end_to_end_today"], 3),
            "ratio_loop_openvino_vs_today": round(best["loop_openvino"] / best["loop_today"], 3),
            "ratio_end_to_end_torch_batched_vs_today": round(best["end_to_end_torch"] / best["end_to_end_today"], 3),
            "ratio_end_to_end_vs_forward_openvino": round(best["end_to_end_openvino"] / best["forward_openvino"], 3),
            "round_ratios_end_to_end_openvino_vs_today": per_round(figures, "end_to_end_openvino", "end_to_end_today"),
            "round_ratios_loop_openvino_vs_today": per_round(figures, "loop_openvino", "loop_today"),
            "cost_multiscale_vs_single_openvino": round(best["end_to_end_openvino"]
                                                        / best["end_to_end_openvino_multiscale"], 3),
            "multiscale_pixel_budget": round(sum(f * f for f in MULTISCALE), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="paris6k")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--limit", type=int, default=24, help="database photos to time")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--small", type=int, default=96, help="generated small images (0: skip)")
    parser.add_argument("--small-side", type=int, default=128)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: as extract chooses)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: as extract)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per workload")
    args = parser.parse_args()

    import torch

    from cbir.backbones import load_backbone
    from cbir.data import load_dataset
    from cbir.runtime import MODELS_DIR, check_runtime

    check_runtime("openvino", "cpu")
    backbone = load_backbone(args.backbone, args.weights)
    backbone = replace(backbone, model=backbone.model.to(memory_format=torch.channels_last))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models" / MODELS_DIR
        models.mkdir(parents=True)
        if args.limit:
            photos = database_only(load_dataset(args.dataset, args.root), args.limit)
            results.append(workload("photos", photos, args.size, args, backbone, models, torch))
        if args.small:
            small = load_dataset("folder", small_folder(Path(tmp) / "small", args.small, args.small_side))
            results.append(workload("small", database_only(small, args.small), args.small_side, args, backbone,
                                    models, torch))
        shutil.rmtree(models)
    print(json.dumps({
        "backbone": args.backbone, "load_average": os.getloadavg(), "workloads": results,
        "note": "forward_* is the bare forward at batch 1 on decoded tensors; end_to_end_* is extract "
                "(decode, resize, forward, 4 poolings, cache) with equal-size batching, the whole call; loop_* "
                "its extraction loop (decode to descriptors, the manifest's images_per_second); end_to_end_today is "
                "torch at batch 1 on this code; ratios compare the best round of each, the fairest "
                "figure on a machine shared with other processes",
    }, indent=1))


if __name__ == "__main__":
    main()
