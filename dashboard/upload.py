"""A user's own image as a query: validation of the upload, then its descriptor.

The descriptor goes through the same preprocessing as the cached queries
(`cbir.extraction.load_image`: max side = method size, box crop scaled like the
full image) and the same pooling. An entry that carries its converted OpenVINO model
is described without torch (`cbir.torchfree`); otherwise torch is imported only here,
when the user asks.
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


def can_upload() -> bool:
    """torch, or OpenVINO for entries that carry their converted model."""
    import importlib.util
    return torch_available() or importlib.util.find_spec("openvino") is not None


def describe(data: bytes, name: str, box: tuple[int, int, int, int], method, entry) -> np.ndarray:
    """(1, D) float32 descriptor of the uploaded file cropped to `box`, comparable with `entry`.

    The bytes go to a temporary file as they came, so decoding, resizing, pooling and
    whitening (or a trained head) are exactly those of the cached queries
    (`cbir.extraction.describe_image`, `cbir.headstore.describe_image_with_head`).
    """
    from cbir import torchfree
    from cbir.extraction import describe_image, entry_whitening
    from cbir.headstore import describe_image_with_head, load_head

    torch_free = not method.head and torchfree.can_describe(method, entry)
    if not torch_free and not torch_available():
        raise ValueError(f"describing an image with {method.label()} needs torch and timm here (its entry carries "
                         "no converted OpenVINO model, or it applies a trained head): pip install torch timm")
    # A head lives in the cache (or bundle) holding its entry: <root>/heads/<name>.
    head = load_head(entry.path.parents[1], method.head) if method.head else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{Path(name).suffix.lower()}"
        path.write_bytes(data)
        try:
            if head is not None:
                return describe_image_with_head(path, method, _backbone(method.backbone, method.weights), head, box)
            if torch_free:
                return torchfree.describe_image(path, method, entry, box, entry_whitening(entry))
            return describe_image(path, method, _backbone(method.backbone, method.weights), box,
                                  entry_whitening(entry))
        except ValueError as exc:
            raise ValueError(str(exc).replace(str(path), name)) from exc


@st.cache_resource(max_entries=2, show_spinner="Loading the backbone...")
def _backbone(name: str, weights: str):
    from cbir.backbones import load_backbone
    return load_backbone(name, weights)
