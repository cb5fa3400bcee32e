"""Describe one image without torch: the entry's converted OpenVINO model and numpy pooling.

An entry extracted with the OpenVINO runtime names its converted model; a bundle built
from it carries that model (`<bundle>/.models/`). With it, the dashboard describes an
uploaded query where only `requirements.txt` plus `openvino` are installed (Community
Cloud): decoding and resizing are `cbir.extraction.load_image` (PIL), normalisation,
pooling and regional whitening are the numpy transcriptions of what extraction does.
Single-scale methods only (multi-scale resizing is torch's bilinear interpolation).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .method import SINGLE_SCALE
from .regions import rmac_regions
from .runtime import MODELS_DIR

EPS = 1e-6
GEM_P = 3.0
RMAC_LEVELS = 3


def model_file(entry) -> Path | None:
    """The converted model an entry was extracted with, when it lies beside the entry's cache."""
    name = (entry.manifest.get("conversion") or {}).get("model_file")
    if not name:
        return None
    xml = entry.path.parent.parent / MODELS_DIR / name
    return xml if xml.is_file() and xml.with_suffix(".bin").is_file() else None


def can_describe(method, entry) -> bool:
    import importlib.util

    return (method.scales == SINGLE_SCALE and model_file(entry) is not None
            and importlib.util.find_spec("openvino") is not None)


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


def describe_image(path, method, entry, bbox=None, whitening=None) -> np.ndarray:
    """(1, D) float32 descriptor of one image file, as `cbir.extraction.describe_image` computes it."""
    from .extraction import load_image
    from .whitening import apply_whitening

    xml = model_file(entry)
    if xml is None or method.scales != SINGLE_SCALE:
        raise ValueError(f"{entry.path}: no converted model stored with this entry (or a multi-scale "
                         "method); describing an image needs torch and timm")
    backbone = entry.manifest["backbone"]
    offset = np.asarray(backbone["mean"], np.float32).reshape(3, 1, 1) * 255
    scale = 1 / (np.asarray(backbone["std"], np.float32).reshape(3, 1, 1) * 255)
    pixels = np.asarray(load_image(path, method.size, bbox), np.uint8).transpose(2, 0, 1)
    x = ((pixels.astype(np.float32) - offset) * scale)[None]
    fmap = _compiled(str(xml), method.precision)(np.ascontiguousarray(x))[0][0].astype(np.float32)
    per_region = whitening if method.pooling == "rmac" else None
    desc = pool(fmap, method.pooling, per_region)[None].astype(np.float32)
    if whitening is not None and per_region is None:
        desc = apply_whitening(desc, whitening)
    return desc
