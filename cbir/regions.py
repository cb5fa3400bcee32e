"""Tolias' R-MAC region grid, in numpy float32: shared by torch pooling and the torch-free describer."""
from __future__ import annotations

import math

import numpy as np

RMAC_OVERLAP = 0.4
RMAC_STEPS = np.arange(2, 8, dtype=np.float32)


def rmac_regions(h: int, w: int, L: int = 3) -> np.ndarray:
    """Tolias' R-MAC regions of an h x w map as int rows (x, y, width, height), full map last.

    Square regions of side floor(2 min(h, w) / (l + 1)) at level l = 1..L, on a grid with
    `extra` more positions along the long side, chosen so neighbours overlap by about 40%.
    Computed with the reference's float32 arithmetic (cnnimageretrieval's torch code), so
    rounding matches it too: on a 9:5 map two step counts tie exactly and float32 picks the
    first, where float64 (Tolias' MATLAB) picks the second. Like the reference, a level whose
    side rounds to 0 is skipped, and on tiny maps the floor of the starts can place two
    regions at the same position.
    """
    if h < 1 or w < 1:
        raise ValueError(f"feature map must be at least 1x1, got {h}x{w}")
    side = min(h, w)
    # int / tensor in torch is reciprocal(tensor) * int: the same float32 rounding here.
    step_offsets = (np.float32(1) / (RMAC_STEPS - np.float32(1))) * np.float32(max(h, w) - side)
    idx = int(np.argmin(np.abs((np.float32(side ** 2) - np.float32(side) * step_offsets) / np.float32(side ** 2)
                               - np.float32(RMAC_OVERLAP))))
    extra_w = idx + 1 if h < w else 0
    extra_h = idx + 1 if h > w else 0

    def starts(length: int, wl: int, wl2: int, n: int) -> list[int]:
        b = np.float32(0 if n == 1 else (length - wl) / (n - 1))
        return (np.floor(np.float32(wl2) + np.arange(n, dtype=np.float32) * b).astype(np.int32) - wl2).tolist()

    regions = []
    for level in range(1, L + 1):
        wl = math.floor(2 * side / (level + 1))
        if wl == 0:
            continue
        wl2 = math.floor(wl / 2 - 1)
        xs = starts(w, wl, wl2, level + extra_w)
        ys = starts(h, wl, wl2, level + extra_h)
        regions.extend((x, y, wl, wl) for y in ys for x in xs)
    regions.append((0, 0, w, h))
    return np.asarray(regions, dtype=np.int64)
