"""Ranked galleries: thumbnails with a coloured frame (green positive, red negative, grey junk).

Images come from the cache's thumbnails (`<cache>/<key>/thumbs/<name>.jpg`, written by
bundles, with the originals' sizes in `thumbs.json` to scale query boxes) when present,
else from the original file under the dataset root. Paths read
from dataset.json must stay inside the dataset root or the data root: a `..` escape is
refused, never opened.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw, ImageOps

from cbir.data import Dataset, to_rgb

from .state import EXPLORER, IMAGE_QUERY, OPEN_PAGE, cache_root, data_root, set_view

THUMB = 192
FRAME = {"positive": (34, 160, 60), "negative": (210, 40, 40), "junk": (150, 150, 150),
         "query": (30, 90, 220), "unjudged": (240, 190, 40)}


def inside(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path.is_relative_to(r.resolve()) for r in roots)


def safe_path(dataset: Dataset, relative: str) -> Path:
    """The file `relative` under the dataset root; ValueError if it would leave the allowed roots."""
    return path_under(dataset.root, relative)


def path_under(root: str, relative: str) -> Path:
    """The file `relative` under `root` (a dataset's or a distractor set's); ValueError if it
    would leave `root` and the data root."""
    if not root:
        raise ValueError(f"{relative}: this cache has no original images (a bundle without thumbnail)")
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{relative}: image path leaves the dataset root {root}")
    path = Path(root) / rel
    if not inside(path, [Path(root), data_root()]):
        raise ValueError(f"{path}: outside the dataset root and the data root {data_root()}")
    return path


def placeholder(text: str, size: int = THUMB) -> Image.Image:
    img = Image.new("RGB", (size, size * 3 // 4), (235, 235, 235))
    ImageDraw.Draw(img).text((8, size // 3), text, fill=(90, 90, 90))
    return img


@st.cache_resource(max_entries=2048, show_spinner=False)
def _thumbnail(path: str, size: int, box: tuple | None, original_width: int | None) -> Image.Image:
    """The image shrunk to `size`, with `box` (in the original's pixels) drawn in query blue.

    No EXIF rotation: ground-truth boxes refer to the pixels as stored (`cbir.data.open_image`).
    """
    with Image.open(path) as img:
        img = to_rgb(img, path)
    if box is not None:
        factor = img.width / (original_width or img.width)
        ImageDraw.Draw(img).rectangle([v * factor for v in box], outline=FRAME["query"],
                                      width=max(2, round(3 * max(img.size) / size)))
    img.thumbnail((size, size))
    return img


@st.cache_data(max_entries=8, show_spinner=False)
def _original_widths(path: str, stamp: int) -> dict[str, int]:
    try:
        sizes = json.loads(Path(path).read_text())["original_size"]
        return {name: int(wh[0]) for name, wh in sizes.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def thumbnail(dataset: Dataset, key: str, relative: str, name: str, size: int = THUMB,
              box: tuple | None = None) -> Image.Image:
    """A small RGB image, from the cache's thumbnail of `name` if there is one (bundles), else
    from the original file; a placeholder saying why if neither can be read."""
    return thumbnail_under(dataset.root, key, relative, name, size, box)


def thumbnail_under(root: str, key: str, relative: str, name: str, size: int = THUMB,
                    box: tuple | None = None) -> Image.Image:
    """`thumbnail` of the image `relative` under `root`, the thumbnails being those of cache folder `key`."""
    folder = cache_root() / key
    stored = folder / "thumbs" / f"{name}.jpg"
    try:
        if stored.is_file():
            widths = folder / "thumbs.json"
            original = _original_widths(str(widths), widths.stat().st_mtime_ns) if widths.is_file() else {}
            if box is None or name in original:
                return _thumbnail(str(stored), size, box, original.get(name))
        return _thumbnail(str(path_under(root, relative)), size, box, None)
    except ValueError as exc:
        return placeholder(f"refused: {exc}"[:40], size)
    except OSError:
        return placeholder(f"missing: {Path(relative).name}"[:40], size)


def relevance(gnd: dict, n_db: int) -> np.ndarray:
    """Per database image: 'positive', 'junk' or 'negative' for one query's ground truth."""
    labels = np.full(n_db, "negative", dtype=object)
    labels[np.asarray(gnd.get("junk", []), dtype=np.int64)] = "junk"
    labels[np.asarray(gnd["ok"], dtype=np.int64)] = "positive"
    return labels


@dataclass(frozen=True)
class Tile:
    index: int
    rank: int
    kind: str
    note: str = ""

    def caption(self, dataset: Dataset) -> str:
        text = f"#{self.rank} {dataset.images[self.index]} [{self.kind}]"
        return f"{text} {self.note}" if self.note else text


def tiles(ranking: np.ndarray, gnd: dict, n_db: int, top: int, notes: dict | None = None) -> list[Tile]:
    """The first `top` results of one query's ranking, each with its relevance."""
    labels = relevance(gnd, n_db)
    notes = notes or {}
    return [Tile(int(i), r + 1, labels[i], notes.get(int(i), ""))
            for r, i in enumerate(ranking[:top]) if i >= 0]


def framed(img: Image.Image, kind: str, border: int = 6) -> Image.Image:
    return ImageOps.expand(img, border=border, fill=FRAME[kind])


def draw(dataset: Dataset, key: str, items: list[Tile], width: int = 150, as_query: str = "",
         picture=None) -> None:
    """One `st.image` per tile in a wrapping row, so tests can read each caption.

    With `as_query` (a prefix unique on the page), each tile gets a "use as query" button.
    `picture(tile)`, when given, gives a tile's (image, caption) instead, or None for a database
    tile drawn as usual (a stored distractor evaluation's tiles include distractors).
    """
    def database_picture(tile: Tile) -> tuple[Image.Image, str]:
        return (thumbnail(dataset, key, dataset.paths[tile.index], dataset.images[tile.index]),
                tile.caption(dataset))

    with st.container(horizontal=True, gap="small"):
        for tile in items:
            image, caption = (picture and picture(tile)) or database_picture(tile)
            with st.container(width=width + 12, gap=None):
                st.image(framed(image, tile.kind), caption=caption, width=width)
                if as_query:
                    st.button("use as query", key=f"{as_query}_{tile.index}", on_click=use_as_query,
                              args=(dataset.images[tile.index],), help="rank the database for this image")


def use_as_query(name: str) -> None:
    """Button callback: the Query explorer opens with this database image as the query."""
    set_view(IMAGE_QUERY, name)
    st.session_state[OPEN_PAGE] = EXPLORER


def positions(ranking: np.ndarray) -> np.ndarray:
    """1-based rank of every database image in a full ranking (inverse permutation)."""
    pos = np.empty(len(ranking), dtype=np.int64)
    pos[ranking] = np.arange(1, len(ranking) + 1)
    return pos


def shift_notes(shown: np.ndarray, before: np.ndarray) -> dict[int, str]:
    """For each image shown after re-ranking, its rank before and how far it moved: "(was #7, up 4)"."""
    rank_before = positions(before)
    notes = {}
    for r, i in enumerate(shown, start=1):
        was = int(rank_before[i])
        move = was - r
        arrow = f"up {move}" if move > 0 else f"down {-move}" if move < 0 else "same"
        notes[int(i)] = f"(was #{was}, {arrow})"
    return notes


def later_notes(shown: np.ndarray, after: np.ndarray) -> dict[int, str]:
    """For each image shown before re-ranking, its rank after: "(now #3)"."""
    rank_after = positions(after)
    return {int(i): f"(now #{int(rank_after[i])})" for i in shown}
