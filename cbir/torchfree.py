"""Describe one image without torch: the entry's converted OpenVINO model and numpy pooling.

An entry extracted with the OpenVINO runtime names its converted model; a bundle built
from it carries that model (`<bundle>/.models/`). With it, the dashboard describes an
uploaded query where only `requirements.txt` plus `openvino` are installed (Community
Cloud): decoding and resizing are `cbir.extraction.load_image` (PIL), normalisation,
pooling and regional whitening are the numpy transcriptions of what extraction does.
Multi-scale methods resize the normalised input as `cbir.multiscale.scaled` (torch's
bilinear interpolation, transcribed in `bilinear_scaled`) and combine as it does.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .extraction import RMAC_LEVELS
from .multiscale import GEM_P, combine_exponent
from .regions import rmac_regions
from .runtime import MODELS_DIR

EPS = 1e-6  # cbir.pooling's, which imports torch


def model_file(entry) -> Path | None:
    """The converted model an entry was extracted with, when it lies beside the entry's cache."""
    name = (entry.manifest.get("conversion") or {}).get("model_file")
    if not name:
        return None
    xml = entry.path.parent.parent / MODELS_DIR / name
    return xml if xml.is_file() and xml.with_suffix(".bin").is_file() else None


def can_describe(method, entry) -> bool:
    import importlib.util

    return model_file(entry) is not None and importlib.util.find_spec("openvino") is not None


@lru_cache(maxsize=2)
def _compiled(xml: str, precision: str):
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    return openvino.Core().compile_model(xml, "CPU", config)


def l2n(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(EPS))


def pool(fmap: np.ndarray, pooling: str, whitening=None) -> np.ndarray:
    """(C, h, w) float32 feature map -> (D,) descriptor, as `cbir.pooling` computes it."""
    if pooling == "mac":
        return l2n(fmap.max(axis=(1, 2)))
    if pooling == "spoc":
        return l2n(fmap.mean(axis=(1, 2)))
    if pooling == "gem":
        return l2n(np.power(np.power(np.maximum(fmap, np.float32(EPS)), GEM_P).mean(axis=(1, 2)), 1.0 / GEM_P))
    regions = l2n(np.stack([fmap[:, y:y + rh, x:x + rw].max(axis=(1, 2))
                            for x, y, rw, rh in rmac_regions(*fmap.shape[1:], RMAC_LEVELS).tolist()]))
    if whitening is not None:
        from .whitening import apply_whitening

        regions = apply_whitening(regions, whitening)
    return l2n(regions.sum(axis=0))


def bilinear_scaled(x: np.ndarray, factor: float) -> np.ndarray:
    """(3, H, W) float32 at `factor` of its size, as torch's `F.interpolate(x, scale_factor=factor,
    mode="bilinear", align_corners=False)`: floor(n * factor) outputs per axis, source
    coordinates (1 / factor) (i + 0.5) - 0.5 in float32 clamped at 0, the two neighbours weighted
    linearly, along the width first (torch's order of operations, so values agree to ~1e-6)."""
    if factor == 1.0:
        return x

    def axis(n: int):
        src = np.maximum(np.float32(1 / factor) * (np.arange(math.floor(n * factor), dtype=np.float32)
                                                    + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        low = src.astype(np.int64)
        return low, np.minimum(low + 1, n - 1), (src - low).astype(np.float32)

    (y0, y1, wy), (x0, x1, wx) = axis(x.shape[1]), axis(x.shape[2])
    columns = x[:, :, x0] * (1 - wx) + x[:, :, x1] * wx
    return columns[:, y0] * (1 - wy)[None, :, None] + columns[:, y1] * wy[None, :, None]


def describe_image(path, method, entry, bbox=None, whitening=None) -> np.ndarray:
    """(1, D) float32 descriptor of one image file, as `cbir.extraction.describe_image` computes it."""
    from .extraction import load_image
    from .whitening import apply_whitening

    xml = model_file(entry)
    if xml is None:
        raise ValueError(f"{entry.path}: no converted model stored with this entry; describing an image "
                         "needs torch and timm")
    backbone = entry.manifest["backbone"]
    offset = np.asarray(backbone["mean"], np.float32).reshape(3, 1, 1) * 255
    scale = 1 / (np.asarray(backbone["std"], np.float32).reshape(3, 1, 1) * 255)
    pixels = np.asarray(load_image(path, method.size, bbox), np.uint8).transpose(2, 0, 1)
    x = (pixels.astype(np.float32) - offset) * scale
    per_region = whitening if method.pooling == "rmac" else None
    model = _compiled(str(xml), method.precision)
    per_scale = [pool(model(np.ascontiguousarray(bilinear_scaled(x, factor)[None]))[0][0].astype(np.float32),
                      method.pooling, per_region) for factor in method.scales]
    if len(per_scale) == 1:
        desc = per_scale[0]
    else:
        exponent = combine_exponent(method.pooling)
        desc = l2n(np.power(np.mean([np.power(d, exponent) for d in per_scale], axis=0), 1.0 / exponent))
    desc = desc[None].astype(np.float32)
    if whitening is not None and per_region is None:
        desc = apply_whitening(desc, whitening)
    return desc
