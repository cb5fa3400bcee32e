"""Retrieval datasets with their ground truth, exactly as the literature defines them.

A `Dataset` is what every other stage needs: the database images present and
readable, the queries (with boxes), and per protocol the positives ("ok") and junk
of each query as indices into the database. It round-trips through JSON so the
dashboard can read it from the cache without the original files.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from .files import inside


BENCHMARK_NAMES = {"paris6k": "Paris6k", "rparis6k": "rParis6k", "oxford5k": "Oxford5k", "roxford5k": "rOxford5k"}


@dataclass(frozen=True)
class Query:
    name: str
    index: int
    path: str
    bbox: tuple[float, float, float, float] | None = None


@dataclass
class Dataset:
    name: str
    root: str
    images: list[str]
    paths: list[str]
    labels: list[str]
    queries: list[Query]
    gnd: dict[str, list[dict[str, np.ndarray]]]
    n_images_total: int
    n_queries_total: int
    missing: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    dropped_queries: list[dict] = field(default_factory=list)

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.gnd)

    @property
    def partial(self) -> bool:
        return len(self.images) < self.n_images_total or len(self.queries) < self.n_queries_total

    def status_line(self) -> str:
        return (f"{len(self.images)} of {self.n_images_total} images, "
                f"{len(self.queries)} of {self.n_queries_total} queries")

    def display_name(self) -> str:
        """The name users know, with the share present when partial: "Paris6k (250 of 6392 images)"."""
        name = BENCHMARK_NAMES.get(self.name, self.name)
        return f"{name} ({len(self.images)} of {self.n_images_total} images)" if self.partial else name

    def image_path(self, i: int) -> Path:
        return Path(self.root) / self.paths[i]

    def query_path(self, q: int) -> Path:
        return Path(self.root) / self.queries[q].path

    def query_label(self, q: int) -> str:
        """Landmark / class of query q; revisited queries are not in the database (index -1),
        so `labels[query.index]` would silently read the last image's label."""
        query = self.queries[q]
        return self.labels[query.index] if query.index >= 0 else landmark_of(query.name)

    def image_as_query_truth(self, protocol: str, index: int) -> tuple[dict | None, str]:
        """Ground truth when database image `index` is the query, and how it was judged.

        A class protocol judges by the class label (the image itself junk, as for its own
        queries); a benchmark judges only an image that is one of its queries, by that
        query's ground truth; any other image has none (unjudged).
        """
        if protocol == "class":
            label = self.labels[index]
            same = np.flatnonzero(np.asarray(self.labels) == label)
            return ({"ok": same[same != index], "junk": np.array([index])},
                    f"judged by its class label ({label!r})")
        for q, query in enumerate(self.queries):
            if query.index == index:
                return (self.gnd[protocol][q], f"judged by the ground truth of benchmark query {query.name} "
                        "(described here as the full image, not cropped to its box)")
        return None, "no ground truth for this image in this benchmark: frames are amber (unjudged)"

    def to_json(self) -> dict:
        data = asdict(self)
        data["queries"] = [asdict(q) for q in self.queries]
        data["gnd"] = {p: [{k: np.asarray(v).tolist() for k, v in g.items()} for g in gs]
                       for p, gs in self.gnd.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Dataset":
        data = dict(data)
        data["queries"] = [Query(q["name"], q["index"], q["path"],
                                 tuple(q["bbox"]) if q.get("bbox") is not None else None)
                           for q in data["queries"]]
        data["gnd"] = {p: [{k: np.asarray(v, dtype=np.int64) for k, v in g.items()} for g in gs]
                       for p, gs in data["gnd"].items()}
        return cls(**data)

    def save(self, path: Path) -> None:
        from .cache import atomic_write_text
        atomic_write_text(Path(path), json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "Dataset":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid dataset description ({exc})") from exc


# --- images -------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# A smaller image gives the backbones (stride 32) a 1x1 map of padding: R-MAC all zero, GeM not unit.
MIN_IMAGE_SIDE = 32
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class PixelError(ValueError):
    """Pixels without a defined 8-bit meaning (floating point, out of range)."""


def to_rgb(img: Image.Image, path) -> Image.Image:
    """8-bit RGB pixels. PIL's `convert("RGB")` clips 16-bit greyscale to white, so those
    (and 32-bit integer images holding 16-bit values) are scaled by 255/65535 first;
    floating-point and out-of-range pixels have no defined scale and are refused."""
    if img.mode in WIDE_GREY_MODES:
        values = np.asarray(img, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise PixelError(f"{path}: {img.mode} pixel values outside 0-65535; convert it to 8 or 16 bits")
        return Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise PixelError(f"{path}: floating-point pixels have no defined 8-bit scale; convert it to 8 or 16 bits")
    return img.convert("RGB")


def open_image(path) -> Image.Image:
    """The image as RGB pixels as stored (no EXIF rotation: ground-truth boxes refer to these)."""
    try:
        with Image.open(path) as img:
            return to_rgb(img, path)
    except PixelError:
        raise
    except IMAGE_ERRORS as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from exc


def check_image(path) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) and None if the image decodes and is large enough, else (None, error).

    A draft-mode decode (JPEG DCT scaling to 1/8) still walks the whole entropy-coded
    stream, so truncated files are caught; it saves the full-size IDCT and colour
    conversion only (about 3/4 of a full decode's CPU; bench/bench_image_check.py).
    """
    try:
        with Image.open(path) as img:
            size = img.size
            img.draft("RGB", (64, 64))
            img.load()
            if img.mode == "F" or img.mode in WIDE_GREY_MODES:
                to_rgb(img, path)
    except PixelError as exc:
        return None, str(exc).removeprefix(f"{path}: ")
    except IMAGE_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if min(size) < MIN_IMAGE_SIDE:
        return None, (f"too small: {size[0]}x{size[1]} px, descriptors need at least "
                      f"{MIN_IMAGE_SIDE} px a side")
    return size, None


def check_images(paths: list[Path], workers: int | None = None) -> list[tuple[tuple[int, int] | None, str | None]]:
    """`check_image` over many files in a thread pool (PIL decodes without holding the GIL)."""
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_image, paths, chunksize=16))


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except IMAGE_ERRORS as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from exc


def index_images(root: Path) -> dict[str, str]:
    """Image name (file stem) -> path relative to `root`, over the layouts the archives produce:
    `jpg/` (revisitop), `paris/<landmark>/` (paris_1/2.tgz), `oxbuild_images/` (oxbuild_images.tgz)."""
    folders = [root / "jpg", root / "oxbuild_images"]
    if (root / "paris").is_dir():
        folders += sorted(p for p in (root / "paris").iterdir() if p.is_dir())
    files: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in (".jpg", ".jpeg") and entry.is_file():
                files.setdefault(stem, Path(entry.path).relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"{root}: no images found (expected paris/<landmark>/*.jpg, "
                                f"jpg/*.jpg or oxbuild_images/*.jpg)")
    return files


def landmark_of(name: str) -> str:
    """`paris_eiffel_000266` -> `eiffel`; `all_souls_000013` -> `all_souls`."""
    stem = name[len("paris_"):] if name.startswith("paris_") else name
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


# --- ground-truth pickles -------------------------------------------------------

SAFE_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ground-truth files: plain containers, numbers, strings and numpy arrays.

    Any other global (a function such as os.system that a hostile pickle would call)
    is refused before it is even imported.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def load_restricted_pickle(path: Path):
    """A pickle of plain data only (RestrictedUnpickler); ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError) as exc:
        raise ValueError(f"{path}: not a valid ground-truth pickle ({exc})") from exc


def load_ground_truth_pickle(path: Path) -> dict:
    """Read a cnnimageretrieval/revisitop `gnd_*.pkl` with the restricted unpickler and
    check it has `imlist`, `qimlist` and one `gnd` entry per query."""
    path = Path(path)
    data = load_restricted_pickle(path)
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise ValueError(f"{path}: expected a dict with imlist, qimlist and gnd")
    if len(data["gnd"]) != len(data["qimlist"]):
        raise ValueError(f"{path}: {len(data['gnd'])} gnd entries for {len(data['qimlist'])} queries")
    return data


# --- benchmark ground truth -----------------------------------------------------

class RawQuery(NamedTuple):
    """A query as the ground-truth files state it, before matching against the images present."""
    name: str
    bbox: tuple[float, float, float, float] | None
    source: str
    lists: dict[str, list[str]]


QUERY_FILE = re.compile(r"^(?P<landmark>.+)_(?P<number>\d+)_query\.txt$")


def read_text(path: Path) -> str:
    """A ground-truth text file's contents; ValueError naming it when it is not text."""
    try:
        return Path(path).read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None


def parse_query_line(path: Path, prefix: str = "") -> tuple[str, tuple[float, float, float, float], int]:
    """`<image> x1 y1 x2 y2` -> (name without `prefix`, box, line number); anything else is a ValueError."""
    lines = [(i, line) for i, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{path}: expected one line '<image> x1 y1 x2 y2', found {len(lines)} lines")
    number, line = lines[0]
    fields = line.split()
    try:
        if len(fields) != 5:
            raise ValueError(f"{len(fields)} fields")
        box = tuple(float(x) for x in fields[1:])
    except ValueError as exc:
        raise ValueError(f"{path}:{number}: expected '<image> x1 y1 x2 y2', got {line!r} ({exc})") from None
    name = fields[0][len(prefix):] if prefix and fields[0].startswith(prefix) else fields[0]
    return name, box, number


def read_txt_ground_truth(gt_dir: Path, prefix: str = "") -> list[RawQuery]:
    """The original-protocol text files `<lm>_<n>_{query,good,ok,junk}.txt`, in the order
    of the pickles (landmark, then query number); positives are good + ok."""
    found = []
    for path in gt_dir.iterdir():
        match = QUERY_FILE.match(path.name)
        if match:
            found.append((match["landmark"], int(match["number"]), path))
    if not found:
        raise FileNotFoundError(f"{gt_dir}: no *_query.txt ground-truth files")
    queries = []
    for landmark, number, path in sorted(found):
        name, box, number = parse_query_line(path, prefix)
        lists = {}
        for part in ("good", "ok", "junk"):
            part_path = gt_dir / f"{landmark}_{number}_{part}.txt"
            if not part_path.is_file():
                raise FileNotFoundError(f"{part_path}: ground-truth file missing (query {name})")
            lists[part] = read_text(part_path).split()
        queries.append(RawQuery(name, box, f"{path}:{number}",
                                {"ok": lists["good"] + lists["ok"], "junk": lists["junk"]}))
    return queries


def pickle_queries(data: dict, path: Path, parts: tuple[str, ...]) -> list[RawQuery]:
    """Queries of a `gnd_*.pkl`, with index lists turned into image names."""
    imlist = list(data["imlist"])
    queries = []
    for number, (qname, gnd) in enumerate(zip(data["qimlist"], data["gnd"])):
        try:
            lists = {part: [imlist[int(i)] for i in np.asarray(gnd[part]).ravel()] for part in parts}
            bbx = gnd.get("bbx")
            box = None if bbx is None or len(bbx) == 0 else tuple(float(x) for x in np.asarray(bbx).ravel()[:4])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad gnd entry for query {qname} ({exc!r})") from exc
        queries.append(RawQuery(str(qname), box, f"{path} (qimlist[{number}])", lists))
    return queries


def checked_box(box, size: tuple[int, int], query: RawQuery, image: Path) -> tuple[float, float, float, float]:
    """The query box clipped to the image; more than 1 px outside (or empty) is an error."""
    x1, y1, x2, y2 = box
    w, h = size
    if not (-1 <= x1 <= w + 1 and -1 <= x2 <= w + 1 and -1 <= y1 <= h + 1 and -1 <= y2 <= h + 1):
        raise ValueError(f"{query.source}: box {box} of query {query.name} lies outside its "
                         f"{w}x{h} image {image}")
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{query.source}: box {box} of query {query.name} is empty")
    return (x1, y1, x2, y2)


def original_protocol(lists: dict) -> dict[str, tuple[list[str], list[str]]]:
    return {"original": (lists["ok"], lists["junk"])}


def revisited_protocols(lists: dict) -> dict[str, tuple[list[str], list[str]]]:
    """Radenovic et al. 2018: Easy ignores hard positives, Hard ignores easy ones (as junk)."""
    easy, hard, junk = lists["easy"], lists["hard"], lists["junk"]
    return {"easy": (easy, junk + hard), "medium": (easy + hard, junk), "hard": (hard, junk + easy)}


def assemble(name: str, root: Path, files: dict[str, str], candidates: list[str], universe: list[str],
             raw_queries: list[RawQuery], queries_in_db: bool,
             protocols: Callable[[dict], dict[str, tuple[list[str], list[str]]]],
             labels: dict[str, str], verify_images: bool = True, workers: int | None = None) -> Dataset:
    """Match ground truth against the files present and readable.

    `candidates` are the database names on disk (in order); `universe` every database name
    the benchmark has (its size is `n_images_total`; those not on disk are `missing`).
    Queries whose image is missing or unreadable are dropped, each recorded in
    `dropped_queries` with the ground-truth file (and line) naming it; ground-truth lists
    are restricted to the database images present. An image path resolving outside
    `root` (a symlink included) is refused.
    """
    in_db = set(candidates)
    to_check = list(candidates) + [q.name for q in raw_queries if q.name in files and q.name not in in_db]
    sizes: dict[str, tuple[int, int]] = {}
    unreadable = []
    if verify_images:
        for n, (size, error) in zip(to_check, check_images([root / files[n] for n in to_check], workers)):
            if error is None:
                sizes[n] = size
            else:
                unreadable.append({"name": n, "error": error})
    bad = {u["name"] for u in unreadable}
    images = [n for n in candidates if n not in bad]
    index = {n: i for i, n in enumerate(images)}
    for rel in files.values():
        try:
            inside(root / rel, root)
        except ValueError as exc:
            raise ValueError(f"{exc}: a dataset's images must lie inside its folder") from None
    queries, dropped = [], []
    gnd = {p: [] for p in protocols({part: [] for part in ("ok", "easy", "hard", "junk")})}
    for raw in raw_queries:
        if raw.name not in files or raw.name in bad or (queries_in_db and raw.name not in index):
            reason = "unreadable" if raw.name in bad else "not present"
            dropped.append({"name": raw.name, "source": raw.source, "reason": f"its image is {reason}"})
            continue
        path = root / files[raw.name]
        box = None
        if raw.bbox is not None:
            box = checked_box(raw.bbox, sizes.get(raw.name) or image_size(path), raw, path)
        queries.append(Query(raw.name, index[raw.name] if queries_in_db else -1, files[raw.name], box))
        for protocol, (ok, junk) in protocols(raw.lists).items():
            gnd[protocol].append({
                "ok": np.array(sorted({index[n] for n in ok if n in index}), dtype=np.int64),
                "junk": np.array(sorted({index[n] for n in junk if n in index}), dtype=np.int64)})
    missing = [n for n in universe if n not in files]
    return Dataset(name=name, root=str(root), images=images, paths=[files[n] for n in images],
                   labels=[labels[n] for n in images], queries=queries, gnd=gnd,
                   n_images_total=len(universe), n_queries_total=len(raw_queries),
                   missing=missing, unreadable=unreadable, dropped_queries=dropped)


BENCHMARKS = {
    "paris6k": {"gt_dirs": ("paris_120310",), "pickle": "gnd_paris6k.pkl", "prefix": ""},
    "oxford5k": {"gt_dirs": ("gt_files_170407", "gt_files"), "pickle": "gnd_oxford5k.pkl", "prefix": "oxc1_"},
    "rparis6k": {"pickle": "gnd_rparis6k.pkl"},
    "roxford5k": {"pickle": "gnd_roxford5k.pkl"},
}


def load_original(name: str, root: Path, verify_images: bool = True, workers: int | None = None) -> Dataset:
    """Paris6k / Oxford5k, original protocol: the query stays in the database.

    Ground truth comes from the txt files if present, else from the pickle. The database
    is the pickle's `imlist` if there is one (6392 names for Paris6k), else every image on
    disk plus every name the txt files mention (names without a file are `missing`).
    """
    spec = BENCHMARKS[name]
    gt_dir = next((root / d for d in spec["gt_dirs"] if (root / d).is_dir()), None)
    pkl = root / spec["pickle"]
    if gt_dir is None and not pkl.is_file():
        raise FileNotFoundError(f"{root / spec['gt_dirs'][0]}: no ground truth (neither this folder "
                                f"nor {pkl} exists); run `python -m cbir download {name} --root {root}`")
    data = load_ground_truth_pickle(pkl) if pkl.is_file() else None
    raw = read_txt_ground_truth(gt_dir, spec["prefix"]) if gt_dir else pickle_queries(data, pkl, ("ok", "junk"))
    files = index_images(root)
    if data is not None:
        universe = sorted(set(map(str, data["imlist"])))
    else:
        named = {n for q in raw for listed in q.lists.values() for n in listed} | {q.name for q in raw}
        universe = sorted(named | set(files))
    candidates = [n for n in universe if n in files]
    return assemble(name, root, files, candidates, universe, raw, True, original_protocol,
                    {n: landmark_of(n) for n in files}, verify_images, workers)


def load_revisited(name: str, root: Path, verify_images: bool = True, workers: int | None = None) -> Dataset:
    """rParis6k / rOxford5k (Radenovic et al. 2018): queries are not in the database."""
    pkl = root / BENCHMARKS[name]["pickle"]
    if not pkl.is_file():
        raise FileNotFoundError(f"{pkl}: revisited ground truth missing; "
                                f"run `python -m cbir download {name} --root {root}`")
    data = load_ground_truth_pickle(pkl)
    raw = pickle_queries(data, pkl, ("easy", "hard", "junk"))
    files = index_images(root)
    universe = sorted(set(map(str, data["imlist"])))
    candidates = [n for n in universe if n in files]
    return assemble(name, root, files, candidates, universe, raw, False, revisited_protocols,
                    {n: landmark_of(n) for n in files}, verify_images, workers)


# --- generic labelled collections -------------------------------------------------

def class_protocol(lists: dict) -> dict[str, tuple[list[str], list[str]]]:
    """Relevance = same class; the query itself is junk (neither hit nor miss)."""
    return {"class": (lists["ok"], lists["junk"])}


def select_queries(images: list[str], labels: dict[str, str], queries, source: Path) -> list[str]:
    """None: every image; an int: the first n of each class; a list: those names."""
    if queries is None:
        return list(images)
    if isinstance(queries, int) and not isinstance(queries, bool):
        if queries < 1:
            raise ValueError(f"{source}: queries per class must be at least 1, got {queries}")
        taken: dict[str, int] = {}
        chosen = []
        for n in images:
            if taken.get(labels[n], 0) < queries:
                taken[labels[n]] = taken.get(labels[n], 0) + 1
                chosen.append(n)
        return chosen
    chosen = [str(q) for q in queries]
    unknown = sorted(set(chosen) - set(images))
    if unknown:
        raise ValueError(f"{source}: query images not in the dataset: {unknown[:5]}")
    return chosen


def labelled_collection(name: str, root: Path, files: dict[str, str], labels: dict[str, str],
                        query_names: list[str], verify_images: bool, workers: int | None) -> Dataset:
    """A dataset where relevance is the class label (folder or csv manifests)."""
    members: dict[str, list[str]] = {}
    for n in files:
        members.setdefault(labels[n], []).append(n)
    raw = [RawQuery(q, None, str(root), {"ok": [m for m in members[labels[q]] if m != q], "junk": [q]})
           for q in query_names]
    present = [n for n in files if (root / files[n]).is_file()]
    return assemble(name, root, {n: files[n] for n in present}, present, list(files), raw,
                    True, class_protocol, labels, verify_images, workers)


def load_folder(root: Path, queries=None, verify_images: bool = True, workers: int | None = None) -> Dataset:
    """`root/<class>/<image>`: one sub-folder per class, image names `<class>/<file>`."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if stray:
        raise ValueError(f"{root}: images directly in the folder ({stray[:3]}); a folder dataset needs "
                         f"one sub-folder per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders")
    files, labels = {}, {}
    for folder in classes:
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        for p in found:
            key = f"{folder.name}/{p.name}"
            files[key], labels[key] = key, folder.name
    chosen = select_queries(list(files), labels, queries, root)
    return labelled_collection("folder", root, files, labels, chosen, verify_images, workers)


def load_csv(manifest: Path, queries=None, verify_images: bool = True, workers: int | None = None) -> Dataset:
    """A manifest `path,label[,is_query]` (header row); paths are relative to its folder.

    Listed files that do not exist are `missing`. `is_query` (1/0, true/false, yes/no)
    picks the queries unless `queries` is given; without either, every image is a query.
    """
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found")
    root = manifest.parent
    files, labels, flagged = {}, {}, []
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if "path" not in header or "label" not in header:
            raise ValueError(f"{manifest}: header must name columns path,label[,is_query]; got {header}")
        reader.fieldnames = header
        for line, row in enumerate(reader, start=2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise ValueError(f"{manifest}:{line}: empty path or label")
            if Path(path).is_absolute() or ".." in Path(path).parts:
                raise ValueError(f"{manifest}:{line}: {path} leaves the manifest's folder; "
                                 "paths must be relative to it")
            if path in files:
                raise ValueError(f"{manifest}:{line}: {path} listed twice")
            files[path], labels[path] = path, label
            flag = (row.get("is_query") or "").strip().lower()
            if flag in ("1", "true", "yes"):
                flagged.append(path)
            elif flag not in ("", "0", "false", "no"):
                raise ValueError(f"{manifest}:{line}: is_query must be 1/0, true/false or yes/no, got {flag!r}")
    if not files:
        raise ValueError(f"{manifest}: no images listed")
    if queries is None and "is_query" in header:
        queries = flagged
    chosen = select_queries(list(files), labels, queries, manifest)
    return labelled_collection("csv", root, files, labels, chosen, verify_images, workers)


def load_dataset(name: str, root: Path, **options) -> Dataset:
    """Load a benchmark (paris6k, rparis6k, oxford5k, roxford5k) or a labelled collection
    (folder: `root/<class>/*`; csv: `root` is the manifest) with its ground truth.

    Options: `verify_images` (default True: decode-check every image, skip unreadable ones),
    `workers` (threads for that check); for folder/csv also `queries` (None = every image,
    an int = that many per class, or a list of image names).
    """
    root = Path(root).expanduser().resolve()
    if name in ("paris6k", "oxford5k"):
        return load_original(name, root, **options)
    if name in ("rparis6k", "roxford5k"):
        return load_revisited(name, root, **options)
    if name == "folder":
        return load_folder(root, **options)
    if name == "csv":
        return load_csv(root, **options)
    if name == "sfm120k":
        from .sfm import load_sfm120k
        return load_sfm120k(root, **options)
    raise ValueError(f"unknown dataset {name!r}; choose paris6k, rparis6k, oxford5k, roxford5k, folder, csv "
                     "or sfm120k")


def dataset_summary(ds: Dataset) -> dict:
    """What `python -m cbir info` prints: counts against the full benchmark, and what is absent."""
    return {
        "name": ds.name,
        "root": ds.root,
        "n_images": len(ds.images),
        "n_images_total": ds.n_images_total,
        "n_queries": len(ds.queries),
        "n_queries_total": ds.n_queries_total,
        "partial": ds.partial,
        "missing_images": len(ds.missing),
        "missing": list(ds.missing),
        "unreadable": list(ds.unreadable),
        "dropped_queries": list(ds.dropped_queries),
        "protocols": list(ds.protocols),
        "status": ds.status_line(),
    }
