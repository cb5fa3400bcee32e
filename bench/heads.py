"""Training cost of heads on frozen descriptors, against extracting the descriptors they need.

Run: python -m bench.heads [--images 500] [--epochs 3]
Prints the lw closed form's seconds and the seconds per epoch of a linear head, on
generated unit vectors shaped like EfficientNet-Lite0 (1280 dims) pooled (GeM) and
per region (R-MAC, 21 regions per image), plus the backbone forward of one 1024 px
image, so a head's cost reads in "images extracted".
"""
import argparse
import time

import numpy as np

from cbir.heads import TrainOptions, train_head


def vectors(n: int, regions: int, dim: int = 1280, classes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim))
    owner = np.repeat(np.arange(n), regions)
    x = centres[labels][owner] + 2.0 * rng.standard_normal((n * regions, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), owner, labels


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    train_head(*vectors(40, 1), TrainOptions(kind="linear", epochs=1))  # imports (torch, dynamo) out of the way
    for label, regions in (("GeM", 1), ("R-MAC", 21)):
        x, owner, labels = vectors(args.images, regions)
        lw = seconds(lambda: train_head(x, owner, labels, TrainOptions(kind="lw")))
        _, history = train_head(x, owner, labels, TrainOptions(kind="linear", epochs=args.epochs, patience=args.epochs))
        print(f"{label:5s} {args.images} images x {regions} vectors x 1280: lw {lw:6.2f} s, "
              f"linear {history['seconds'] / len(history['loss']):6.2f} s per epoch (after its lw init)")
    import torch

    from cbir.backbones import load_backbone

    model = load_backbone("tf_efficientnet_lite0").model
    image = torch.rand(1, 3, 768, 1024)
    with torch.inference_mode():
        model(image)
        print(f"lite0 forward of one 768x1024 image: {seconds(lambda: model(image)):6.2f} s")


if __name__ == "__main__":
    main()
