"""A user's own image as a query: validation of the upload, then its descriptor.

The descriptor goes through the same preprocessing as the cached queries
(`cbir.extraction.load_image`: max side = method size, box crop scaled like the
full image) and the same pooling. torch is imported only here, when the user asks.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image, UnidentifiedImageError

from cbir.data import to_rgb

MAX_PIXELS = 40_000_000


def read_upload(data: bytes, name: str) -> Image.Image:
    """The uploaded image as RGB; ValueError naming the file for non-images and oversized images.

    PIL's messages name the in-memory buffer (`<_io.BytesIO object at 0x...>`); the
    user sees their file's name instead."""
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{name}: {width}x{height} pixels is too large "
                                 f"(at most {MAX_PIXELS // 1_000_000} megapixels)")
            img.load()
            return to_rgb(img, name)
    except UnidentifiedImageError as exc:
        raise ValueError(f"{name}: not a readable image (not a JPEG, PNG or WebP file)") from exc
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name}: not a readable image ({str(exc).replace(repr(buffer), name)})") from exc


def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("timm") is not None


def describe(data: bytes, name: str, box: tuple[int, int, int, int], method, entry) -> np.ndarray:
    """(1, D) float32 descriptor of the uploaded file cropped to `box`, comparable with `entry`.

    The bytes go to a temporary file as they came, so decoding, resizing, pooling and
    whitening are exactly those of the cached queries (`cbir.extraction.describe_image`).
    """
    from cbir.extraction import describe_image, entry_whitening

    backbone = _backbone(method.backbone, method.weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{Path(name).suffix.lower()}"
        path.write_bytes(data)
        try:
            return describe_image(path, method, backbone, box, entry_whitening(entry))
        except ValueError as exc:
            raise ValueError(str(exc).replace(str(path), name)) from exc


@st.cache_resource(max_entries=2, show_spinner="Loading the backbone...")
def _backbone(name: str, weights: str):
    from cbir.backbones import load_backbone
    return load_backbone(name, weights)
