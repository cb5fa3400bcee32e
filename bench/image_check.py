"""How much the readability check costs when loading a dataset.

Usage: python -m bench.image_check [DATASET_ROOT]   (default: ../shared/data/paris6k-250)

Prints, for the images of a Paris6k-layout folder: a full decode per image, the
draft-mode check `cbir.data.check_image` does, the same in a thread pool, and the
whole `load_dataset` with and without the check.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from PIL import Image

from cbir.data import check_image, check_images, index_images, load_dataset


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def full_decode(paths):
    for p in paths:
        with Image.open(p) as img:
            img.load()


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "paris6k-250"
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    paths = [root / p for p in index_images(root).values()]
    n = len(paths)
    print(f"{n} images under {root}, {os.cpu_count()} CPUs")
    rows = [
        ("full decode, 1 thread", timed(lambda: full_decode(paths))),
        ("draft check, 1 thread", timed(lambda: [check_image(p) for p in paths])),
        ("draft check, thread pool", timed(lambda: check_images(paths))),
        ("load_dataset(verify_images=True)", timed(lambda: load_dataset("paris6k", root))),
        ("load_dataset(verify_images=False)", timed(lambda: load_dataset("paris6k", root, verify_images=False))),
    ]
    for label, seconds in rows:
        print(f"{label:36s} {seconds:7.3f} s   {1000 * seconds / n:6.2f} ms/image")


if __name__ == "__main__":
    main()
