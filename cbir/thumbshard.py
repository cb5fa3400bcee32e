"""A thumbnail shard: small JPEGs of the distractors a stored top-K list can show, in one file.

Where the million distractor images are not present (Community Cloud), the Query explorer's
distractor tiles still show the images: `evaluate --distractors ... --thumbnails` writes,
next to the distractors' description in the cache (`<cache>/<distractor key>/`),
`thumbs.bin` (the JPEGs one after another) and `thumbs.json` (per image path relative to
the distractors' root: offset, length, SHA-256). Only the distractors within the first
`SHOWN` places of some list are kept (the explorer shows at most that many). A tile reads
its own bytes (seek + read), checked against its hash; a missing or damaged one is None,
and the caller falls back to the image file.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .cache import atomic_write_bytes, atomic_write_text
from .data import open_image

SHOWN = 50
SIZE = 192
BLOB, INDEX = "thumbs.bin", "thumbs.json"


def shown_distractors(ids: np.ndarray, n_db: int, depth: int = SHOWN) -> list[int]:
    """Distractor positions (0-based among the distractors) within the first `depth` places of any list."""
    head = ids[:, :depth]
    return sorted({int(i) - n_db for i in head[head >= n_db]})


def read_index(folder: Path) -> dict:
    try:
        index = json.loads((Path(folder) / INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def read_thumbnail(folder: Path, name: str, index: dict | None = None) -> bytes | None:
    """The JPEG bytes of `name` from the shard in `folder` (its `index` when the caller holds it),
    or None when absent or not as indexed."""
    spec = (read_index(folder) if index is None else index).get(name)
    try:
        offset, length, digest = int(spec[0]), int(spec[1]), str(spec[2])
        with open(Path(folder) / BLOB, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except (OSError, TypeError, ValueError, IndexError, KeyError):
        return None
    return data if len(data) == length and hashlib.sha256(data).hexdigest() == digest else None


def write_shard(folder: Path, root: Path, names: list[str], size: int = SIZE) -> dict:
    """Add the thumbnails of `names` (image paths under `root`) to the shard in `folder`,
    keeping those it holds; returns how many were added and the images that could not be read."""
    folder = Path(folder)
    index = read_index(folder)
    kept = {name: read_thumbnail(folder, name, index) for name in index}
    thumbs = {name: data for name, data in kept.items() if data is not None}
    unreadable, added = [], 0
    for name in (n for n in dict.fromkeys(names) if n not in thumbs):
        try:
            small = open_image(Path(root) / name)  # a ValueError names the file
        except ValueError as exc:
            unreadable.append(str(exc))
            continue
        small.thumbnail((size, size))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=85)
        thumbs[name], added = buffer.getvalue(), added + 1
    _write(folder, thumbs)
    return {"thumbnails": len(thumbs), "added": added, "unreadable": unreadable}


def copy_shard(source: Path, target: Path, names: list[str]) -> int:
    """Write into `target` a shard of those of `names` whose thumbnail the shard in `source` holds
    intact (a bundle carries only what its lists can show); returns how many, writing nothing for none."""
    index = read_index(source)
    thumbs = {name: data for name in dict.fromkeys(names)
              if (data := read_thumbnail(source, name, index)) is not None}
    if thumbs:
        _write(Path(target), thumbs)
    return len(thumbs)


def _write(folder: Path, thumbs: dict[str, bytes]) -> None:
    blob, index, offset = bytearray(), {}, 0
    for name, data in thumbs.items():
        index[name] = [offset, len(data), hashlib.sha256(data).hexdigest()]
        blob += data
        offset += len(data)
    atomic_write_bytes(folder / BLOB, bytes(blob))
    atomic_write_text(folder / INDEX, json.dumps(index))
