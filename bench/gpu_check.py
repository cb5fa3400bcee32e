"""The GPU path, checked: throughput per backbone against the CPU, and descriptor agreement.

    python -m bench.gpu_check [--root ../shared/data/paris6k-250] [--images 8] [--size 1024]

Per backbone (Lite0 with its offline ImageNet weights; the others with random weights
where ImageNet ones are not offline): the bare forward on the GPU (bf16 autocast,
batches of equal-size inputs) and on the CPU (the default CPU runtime), in images/s.
Then `extract` on the same images with device cuda and with the CPU: cosine per image
for every pooling (the GPU runs bf16 autocast with float32 pooling; expect >= 0.999).
Images: the first `--images` of the dataset when present, else generated ones. Prints JSON.
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
sys.path.insert(0, str(REPO / "tests"))

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "paris6k-250"
BACKBONES = {"tf_efficientnet_lite0": "imagenet", "tf_efficientnet_lite2": "imagenet", "vgg16": "random",
             "resnet50": "random", "efficientnet_b1": "random"}


def check_images(root: Path, n: int, tmp: Path):
    from cbir.data import load_dataset

    if (root / "paris_120310").is_dir():
        ds = load_dataset("paris6k", root)
        return replace(ds, images=ds.images[:n], paths=ds.paths[:n], labels=ds.labels[:n], queries=[],
                       gnd={p: [] for p in ds.gnd})
    from synthetic import make_class_folder

    ds = load_dataset("folder", make_class_folder(tmp / "images", per_class=max(1, n // 3), size=(1024, 768)))
    return replace(ds, queries=[], gnd={p: [] for p in ds.gnd})


def throughput(forward, x, repeats: int, sync) -> float:
    forward(x)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    sync()
    return round(repeats * x.shape[0] / (time.perf_counter() - start), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--images", type=int, default=8, help="images for the agreement check")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="GPU batch for the throughput figure")
    args = parser.parse_args()

    import numpy as np
    import torch

    from cbir.backbones import load_backbone
    from cbir.extraction import extract
    from cbir.method import POOLINGS, Method
    from cbir.runtime import default_runtime, make_forward

    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible to torch")
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    h, w = args.size * 3 // 4, args.size
    results = {"device": torch.cuda.get_device_name(0), "cpu_runtime": default_runtime("cpu"),
               "input": f"{w}x{h}", "backbones": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, weights in BACKBONES.items():
            backbone = load_backbone(name, weights)
            x = torch.randn(args.batch, 3, h, w)
            cpu_forward = make_forward(default_runtime("cpu"), backbone, cpu, cache_root=tmp, size=args.size)
            with torch.inference_mode():
                cpu_ips = throughput(cpu_forward, x[:1], 3, lambda: None)
                on_gpu = replace(backbone, model=backbone.model.to(gpu).to(memory_format=torch.channels_last))
                gpu_forward = make_forward("torch", on_gpu, gpu, cache_root=tmp, size=args.size)
                gpu_ips = throughput(gpu_forward, x.to(gpu), 10, torch.cuda.synchronize)
            results["backbones"][name] = {"weights": weights, "gpu_images_per_s": gpu_ips,
                                          "cpu_images_per_s": cpu_ips, "ratio": round(gpu_ips / cpu_ips, 1)}
            del on_gpu, gpu_forward
            torch.cuda.empty_cache()

        dataset = check_images(args.root, args.images, tmp)
        methods = [Method(pooling=p, size=args.size) for p in POOLINGS]
        start = time.perf_counter()
        on_gpu = extract(dataset, methods, tmp / "gpu", device="cuda")
        gpu_s = time.perf_counter() - start
        start = time.perf_counter()
        on_cpu = extract(dataset, methods, tmp / "cpu", device="cpu")
        cpu_s = time.perf_counter() - start
        agreement = {}
        for m in methods:
            a, b = np.asarray(on_gpu[m].db, np.float64), np.asarray(on_cpu[m].db, np.float64)
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            agreement[m.pooling] = {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}
        results["extraction"] = {"images": len(dataset.images), "gpu_seconds": round(gpu_s, 2),
                                 "cpu_seconds": round(cpu_s, 2),
                                 "gpu_precision": on_gpu[methods[0]].manifest.get("precision"),
                                 "cpu_runtime": on_cpu[methods[0]].manifest.get("runtime"),
                                 "agreement_gpu_vs_cpu": agreement}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
