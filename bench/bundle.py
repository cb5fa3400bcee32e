"""Bundle size, dashboard memory and cold start at Paris6k size (issue: share on Community Cloud).

    python -m bench.bundle [--layouts] [--keep DIR]

Builds a cache of 6392 images x 55 queries with synthetic descriptors of the study's
shapes (VGG16 512, ResNet-50 2048, EfficientNet-B1 1280; MAC, SPoC, GeM, R-MAC; clustered
by landmark so diffusion has structure), thumbnails from real Paris6k photos when
`../shared/data/paris6k-250` exists (cycled; else generated pictures), bundles it as
`python -m cbir bundle` does (float16, diffusion grids for the original protocol; UMAP
layouts with --layouts), and prints the bundle's size. Then a fresh Python process
serves it: time to the first rendered overview (imports, bundle verification, evaluation
of every method) and peak RSS (VmHWM: getrusage's maxrss would include the parent's, which
survives fork and exec) after rendering every page, with AppTest.
Targets: bundle < 1 GB, peak RSS < 1.5 GB, cold start < 5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARIS250 = REPO.parent / "shared" / "data" / "paris6k-250"
DIMS = {"vgg16": 512, "resnet50": 2048, "efficientnet_b1": 1280}
POOLINGS = ("mac", "spoc", "gem", "rmac")
N_IMAGES, N_QUERIES, N_LANDMARKS = 6392, 55, 11

SERVE = r"""
import json, sys, time
start = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=120).run()
first = time.perf_counter() - start
errors = [e.value for e in at.exception]
for page in sorted(__import__("glob").glob("pages/*.py")):
    at.switch_page(page).run()
    errors += [e.value for e in at.exception]
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"cold_start_s": first, "peak_rss_mb": hwm / 1024,
                  "exceptions": errors, "heavy_imports": sorted({"torch", "timm", "umap"} & set(sys.modules))}))
"""


def source_images(root: Path) -> list[Path]:
    """Pictures to make thumbnails of: the real Paris photos if present, else generated ones."""
    real = sorted(PARIS250.glob("paris/*/*.jpg"))
    if real:
        return real
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(64):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        path = root / f"source_{i}.jpg"
        Image.fromarray(pixels).resize((1024, 768)).save(path, quality=90)
        paths.append(path)
    return paths


def paris_sized_dataset(root: Path):
    from cbir.data import Dataset, Query

    sources = source_images(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    names, paths, labels = [], [], []
    for i in range(N_IMAGES):
        name = f"img_{i:05d}"
        (images_dir / f"{name}.jpg").symlink_to(sources[i % len(sources)].resolve())
        names.append(name)
        paths.append(f"images/{name}.jpg")
        labels.append(f"landmark{i % N_LANDMARKS}")
    label_of = np.arange(N_IMAGES) % N_LANDMARKS
    queries, gnd = [], []
    for q in range(N_QUERIES):
        index = q * (N_IMAGES // N_QUERIES)
        members = np.flatnonzero(label_of == label_of[index])
        queries.append(Query(names[index], index, paths[index], (10.0, 10.0, 300.0, 200.0)))
        gnd.append({"ok": members[::2].astype(np.int64), "junk": members[1::2][:20].astype(np.int64)})
    return Dataset("paris6k", str(root), names, paths, labels, queries, {"original": gnd},
                   n_images_total=N_IMAGES, n_queries_total=N_QUERIES), label_of


def fill_cache(cache: Path, dataset, label_of: np.ndarray) -> list:
    from cbir.cache import save_entry
    from cbir.method import Method

    rng = np.random.default_rng(0)
    methods = []
    for backbone, dim in DIMS.items():
        centres = rng.normal(size=(N_LANDMARKS, dim)).astype(np.float32)
        for pooling in POOLINGS:
            db = centres[label_of] + 2.0 * rng.normal(size=(N_IMAGES, dim)).astype(np.float32)
            queries = db[[q.index for q in dataset.queries]] + 0.5 * rng.normal(size=(N_QUERIES, dim)).astype(np.float32)
            db /= np.linalg.norm(db, axis=1, keepdims=True)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            method = Method(backbone=backbone, pooling=pooling)
            save_entry(cache, dataset, method, db, queries, {"backbone": {"name": backbone}})
            methods.append(method)
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", action="store_true", help="also compute UMAP layouts (minutes)")
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it")
    parser.add_argument("--serve", type=Path, help="only measure serving DIR/bundle, built before with --keep DIR")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cbir.bundle import build_bundle

    if args.serve:
        work = args.serve
    else:
        work = args.keep or Path(tempfile.mkdtemp(prefix="cbir-bundle-bench-"))
        dataset, label_of = paris_sized_dataset(work / "data")
        methods = fill_cache(work / "cache", dataset, label_of)
        start = time.perf_counter()
        manifest = build_bundle(work / "cache", dataset, methods, work / "bundle", layouts=args.layouts)
        built = time.perf_counter() - start
        sizes = sorted((f["bytes"], name) for name, f in manifest["files"].items())
        print(f"bundle: {len(sizes)} files, {manifest['total_bytes'] / 2**20:.1f} MiB in all (target < 1024 MiB), "
              f"largest {sizes[-1][1]} {sizes[-1][0] / 2**20:.1f} MiB, built in {built:.0f} s"
              f"{'' if PARIS250.exists() else ' (generated thumbnail sources, not real photos)'}")
    env = {**os.environ, "CBIR_CACHE_DIR": str(work / "bundle"), "CBIR_DATA_DIR": str(work / "data")}
    served = subprocess.run([sys.executable, "-c", SERVE], cwd=REPO, env=env, capture_output=True, text=True)
    if served.returncode:
        sys.exit(f"serving the bundle failed:\n{served.stderr[-3000:]}")
    result = json.loads(served.stdout.strip().splitlines()[-1])
    print(f"cold start to rendered overview: {result['cold_start_s']:.2f} s (target < 5 s)")
    print(f"peak RSS after rendering every page: {result['peak_rss_mb']:.0f} MB (target < 1536 MB)")
    print(f"page exceptions: {result['exceptions'] or 'none'}; heavy imports: {result['heavy_imports'] or 'none'}")


if __name__ == "__main__":
    main()
