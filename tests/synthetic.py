"""Small benchmark-shaped datasets for everyone's tests, written to a tmp folder.

`make_paris_like` writes the official Paris6k layout (images under
`paris/<landmark>/`, ground truth in `paris_120310/`) with the quirks the real
data has: the query is one of its own positives, positives are split over
`_good` and `_ok`, junk entries exist, and some ground-truth names have no image.
Images of one landmark share a colour and a stripe pattern (plus noise), so any
sensible descriptor ranks same-landmark images first.

Layout and ground truth of `make_paris_like(root)` with the defaults
(landmarks defense, eiffel, louvre; per_landmark=6; queries_per_landmark=1):

- present images per landmark: `paris_<lm>_000000` .. `paris_<lm>_000005` (18 in all);
- query n (1-based) of a landmark is image n-1, box = the image minus a 10% margin;
- good: images 0-2, ok: images 3 .. per_landmark-2 plus the missing `paris_<lm>_00000{per_landmark}`;
- junk: the last image `paris_<lm>_00000{per_landmark-1}` plus the missing `..{per_landmark+1}`;
- so each query has per_landmark-1 present positives (itself included) and 1 present junk,
  and 2 missing names per landmark (6 in all): n_images_total = 24.
"""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(200, 40, 40), (40, 160, 60), (40, 70, 200), (210, 180, 30), (150, 50, 170),
           (30, 170, 170), (230, 120, 20), (90, 90, 90), (160, 110, 60), (20, 20, 120)]


def landmark_image(index: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An RGB image whose colour and stripe orientation identify class `index`; noise varies it."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.pi * (index % 7) / 7
    period = 8 + 3 * (index % 4)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
    img = colour[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    img += rng.normal(0, 12, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_jpeg(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)
    return path


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download / corrupt JPEG)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:max(1, int(len(data) * keep))])
    return path


def make_paris_like(root: Path, landmarks=("defense", "eiffel", "louvre"), per_landmark: int = 6,
                    queries_per_landmark: int = 1, size: tuple[int, int] = (96, 72),
                    seed: int = 0, distractors: int = 0, missing_queries: int = 0) -> Path:
    """Write a Paris6k-shaped dataset under `root` (see the module docstring); returns `root`.

    `distractors` adds `paris/general/paris_general_NNNNNN.jpg` images that no ground truth
    names (as the real archive has). `missing_queries` adds that many extra queries (to the
    first landmark) whose query image is absent, so loaders must drop them.
    """
    if per_landmark < 4 or not 1 <= queries_per_landmark <= per_landmark - 1:
        raise ValueError("need per_landmark >= 4 and 1 <= queries_per_landmark < per_landmark")
    root = Path(root)
    rng = np.random.default_rng(seed)
    gt = root / "paris_120310"
    gt.mkdir(parents=True, exist_ok=True)
    w, h = size
    box = (0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h)
    for li, lm in enumerate(landmarks):
        names = [f"paris_{lm}_{i:06d}" for i in range(per_landmark + 2)]
        for name in names[:per_landmark]:
            write_jpeg(root / "paris" / lm / f"{name}.jpg", landmark_image(li, size, rng))
        good, ok = names[:3], names[3:per_landmark - 1] + [names[per_landmark]]
        junk = [names[per_landmark - 1], names[per_landmark + 1]]
        queries = names[:queries_per_landmark]
        if li == 0:
            queries += [f"paris_{lm}_{900000 + k:06d}" for k in range(missing_queries)]
        for n, qname in enumerate(queries, start=1):
            stem = gt / f"{lm}_{n}"
            Path(f"{stem}_query.txt").write_text(
                f"{qname} {box[0]:.6f} {box[1]:.6f} {box[2]:.6f} {box[3]:.6f}\n")
            for part, listed in (("good", good), ("ok", ok), ("junk", junk)):
                Path(f"{stem}_{part}.txt").write_text("".join(f"{x}\n" for x in listed))
    for i in range(distractors):
        write_jpeg(root / "paris" / "general" / f"paris_general_{i:06d}.jpg",
                   landmark_image(len(landmarks) + i, size, rng))
    return root


def write_gnd_pickle(root: Path, name: str = "gnd_paris6k.pkl", extra_names: int = 0) -> Path:
    """Write the cnnimageretrieval pickle (`imlist`, `qimlist`, `qidx`, `gnd`) equivalent to
    the txt ground truth under `root/paris_120310` (as `make_paris_like` writes it).

    The imlist is every name the txt files mention plus every image on disk, plus
    `extra_names` made-up names (images of the full benchmark that this copy lacks).
    """
    root = Path(root)
    queries, lists = [], {}
    for qfile in sorted((root / "paris_120310").glob("*_query.txt")):
        stem = qfile.name[:-len("_query.txt")]
        fields = qfile.read_text().split()
        queries.append((fields[0], [float(x) for x in fields[1:5]]))
        lists[fields[0]] = {part: (root / "paris_120310" / f"{stem}_{part}.txt").read_text().split()
                            for part in ("good", "ok", "junk")}
    names = {p.stem for p in (root / "paris").glob("*/*.jpg")}
    for parts in lists.values():
        for listed in parts.values():
            names.update(listed)
    names.update(q for q, _ in queries)
    imlist = sorted(names) + [f"paris_general_{800000 + i:06d}" for i in range(extra_names)]
    index = {n: i for i, n in enumerate(imlist)}
    gnd = [{"bbx": bbx,
            "ok": [index[n] for n in lists[q]["good"] + lists[q]["ok"]],
            "junk": [index[n] for n in lists[q]["junk"]]} for q, bbx in queries]
    cfg = {"imlist": imlist, "qimlist": [q for q, _ in queries],
           "qidx": [index[q] for q, _ in queries], "gnd": gnd}
    path = root / name
    path.write_bytes(pickle.dumps(cfg, protocol=3))
    return path


def make_revisited_like(root: Path, landmarks=("defense", "eiffel", "louvre"), per_landmark: int = 8,
                        queries_per_landmark: int = 2, size: tuple[int, int] = (96, 72),
                        seed: int = 0, name: str = "rparis6k") -> Path:
    """Write a revisited-protocol dataset: `jpg/<name>.jpg` and `gnd_<name>.pkl`; returns `root`.

    Queries are separate images (not in `imlist`). Per landmark, database images 0-2 are
    easy, 3-4 hard, 5 junk, the rest unlabelled; one more easy name has no image (missing).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = size
    imlist, qimlist, gnd = [], [], []
    for li, lm in enumerate(landmarks):
        names = [f"paris_{lm}_{i:06d}" for i in range(per_landmark)]
        for n in names:
            write_jpeg(root / "jpg" / f"{n}.jpg", landmark_image(li, size, rng))
        base = len(imlist)
        imlist += names + [f"paris_{lm}_{per_landmark:06d}"]
        for k in range(queries_per_landmark):
            qname = f"paris_{lm}_{500000 + k:06d}"
            write_jpeg(root / "jpg" / f"{qname}.jpg", landmark_image(li, size, rng))
            qimlist.append(qname)
            gnd.append({"bbx": [0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h],
                        "easy": [base, base + 1, base + 2, base + per_landmark],
                        "hard": [base + 3, base + 4], "junk": [base + 5]})
    (root / f"gnd_{name}.pkl").write_bytes(
        pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, protocol=3))
    return root


def make_class_folder(root: Path, classes=("cats", "dogs", "birds"), per_class: int = 4,
                      size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """Write `root/<class>/<class>_NNN.jpg` (one sub-folder per class); returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            write_jpeg(root / cls / f"{cls}_{i:03d}.jpg", landmark_image(ci, size, rng))
    return root


def make_csv_manifest(root: Path, classes=("cats", "dogs"), per_class: int = 3,
                      queries_per_class: int = 1, size: tuple[int, int] = (64, 48),
                      seed: int = 0) -> Path:
    """Write images under `root/images/` and `root/manifest.csv` (`path,label,is_query`);
    returns the csv path (what `load_dataset("csv", ...)` takes as root)."""
    root = Path(root)
    make_class_folder(root / "images", classes, per_class, size, seed)
    path = root / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "is_query"])
        for cls in classes:
            for i in range(per_class):
                writer.writerow([f"images/{cls}/{cls}_{i:03d}.jpg", cls, int(i < queries_per_class)])
    return path


def clustered_unit_vectors(n: int, dim: int, clusters: int, noise: float, seed: int = 0):
    """(n, dim) float32 unit vectors around `clusters` random centres, and each one's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def record_model_inputs(monkeypatch) -> list[tuple[int, ...]]:
    """Shapes of every tensor the backbone's model receives during extraction."""
    import cbir.backbones

    shapes = []
    original = cbir.backbones.load_backbone

    def recording(*args, **kwargs):
        backbone = original(*args, **kwargs)
        backbone.model.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
        return backbone

    monkeypatch.setattr(cbir.backbones, "load_backbone", recording)
    return shapes
