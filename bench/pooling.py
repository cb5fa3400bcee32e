"""Pooling cost per image on CPU, next to the backbone forward pass it follows.

Run: python -m bench.pooling   (prints best-of-N milliseconds per image)
"""
import time

import torch

from cbir.backbones import load_backbone
from cbir.pooling import POOLINGS, pool, rmac_regions


def per_call_ms(fn, repeats: int = 20) -> float:
    """Best of `repeats` calls: the machine is shared, the minimum is the least noisy figure."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main():
    torch.set_num_threads(2)
    # EfficientNet-Lite0 at max side 1024 (4:3): 1280 x 24 x 32; VGG16 conv5 (stride 16): 512 x 48 x 64.
    for label, shape in [("lite0 1024px", (1, 1280, 24, 32)), ("vgg16 1024px", (1, 512, 48, 64))]:
        fmap = torch.rand(shape)
        print(f"{label}: map {tuple(shape[1:])}, {len(rmac_regions(*shape[2:]))} R-MAC regions")
        with torch.inference_mode():
            for pooling in POOLINGS:
                print(f"  {pooling:5s} {per_call_ms(lambda: pool(fmap, pooling)):7.2f} ms")
    backbone = load_backbone("tf_efficientnet_lite0")
    image = torch.rand(1, 3, 768, 1024)
    with torch.inference_mode():
        print(f"lite0 forward 768x1024: {per_call_ms(lambda: backbone.model(image), repeats=3):7.1f} ms")


if __name__ == "__main__":
    main()
