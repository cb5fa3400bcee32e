"""A small generated dataset and cache for the dashboard tests (3 landmarks x 6 images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cbir.cache import save_entry
from cbir.data import Dataset, Query
from cbir.method import Method

LANDMARKS = ("arch", "bridge", "tower")
PER_LANDMARK = 6
METHODS = (Method(pooling="mac"), Method(pooling="rmac"))
COLOURS = {"arch": (200, 60, 60), "bridge": (60, 160, 60), "tower": (60, 60, 200)}


def make_dataset(data_dir: Path) -> Dataset:
    """JPEGs under data_dir/tiny; two queries per landmark (original protocol: query in the database).

    The last image of each landmark is junk for that landmark's queries.
    """
    root = data_dir / "tiny"
    images, paths, labels = [], [], []
    for lm in LANDMARKS:
        (root / lm).mkdir(parents=True, exist_ok=True)
        for j in range(PER_LANDMARK):
            name = f"{lm}_{j:02d}"
            Image.new("RGB", (64 + 8 * j, 48), COLOURS[lm]).save(root / lm / f"{name}.jpg")
            images.append(name)
            paths.append(f"{lm}/{name}.jpg")
            labels.append(lm)
    queries, gnd = [], []
    for li, lm in enumerate(LANDMARKS):
        members = np.arange(li * PER_LANDMARK, (li + 1) * PER_LANDMARK)
        for j in (0, 1):
            index = int(members[j])
            queries.append(Query(images[index], index, paths[index], (4.0, 4.0, 40.0, 30.0)))
            gnd.append({"ok": members[:-1].astype(np.int64), "junk": members[-1:].astype(np.int64)})
    return Dataset("tiny", str(root), images, paths, labels, queries, {"original": gnd},
                   n_images_total=len(images), n_queries_total=len(queries))


def make_cache(cache_dir: Path, dataset: Dataset, seed: int = 0) -> None:
    """Clustered random descriptors: rmac is cleaner (less noise) than mac, so their mAPs differ."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(LANDMARKS), 32))
    label_index = np.array([LANDMARKS.index(lm) for lm in dataset.labels])
    for method, noise in zip(METHODS, (1.6, 0.9)):
        db = centres[label_index] + noise * rng.normal(size=(len(label_index), 32))
        queries = db[[q.index for q in dataset.queries]] + 0.3 * rng.normal(size=(len(dataset.queries), 32))
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        save_entry(cache_dir, dataset, method, db.astype(np.float32), queries.astype(np.float32),
                   extra={"backbone": {"name": method.backbone, "n_params": 3_371_000}})


def build(tmp: Path) -> tuple[Path, Path, Dataset]:
    data_dir, cache_dir = tmp / "data", tmp / "cache"
    dataset = make_dataset(data_dir)
    make_cache(cache_dir, dataset)
    return data_dir, cache_dir, dataset


def assert_every_page_renders(at, repo: Path, layouts: bool = True) -> None:
    """Switch `at` (an AppTest already run) to every page: no exception, no error, and (with
    `layouts`) the stored UMAP layouts found."""
    for page in sorted(repo.glob("pages/*.py")):
        at.switch_page(str(page.relative_to(repo))).run()
        assert not at.exception, (page.name, [e.value for e in at.exception])
        assert not at.error, (page.name, [e.value for e in at.error])
        if layouts and page.name == "5_Manifolds.py":
            assert not any("not computed yet" in i.value for i in at.info), "stored layouts not found"


DISTRACTOR_LIST = "revisitop1m.txt"
N_DISTRACTORS = 12
STORED_K = 10


def make_distractor_evaluation(tmp: Path, cache_dir: Path, dataset: Dataset, k: int = STORED_K,
                               reranked: tuple = ()):
    """A stored evaluation of every method on `dataset` + 12 R1M-style distractors (top-`k` lists),
    as `python -m cbir evaluate --distractors revisitop1m` leaves it; each distractor lies near
    a query, so it outranks that query's positives. `reranked` methods (re-rankings of those)
    are stored too, diffusion on an exact graph truncated to 20. The distractors' db.npy is
    then deleted: serving the evaluation must not need it. Returns (distractors, their root)."""
    from cbir.annindex import AnnParams
    from cbir.cache import load_entry
    from cbir.distractors import distractor_dataset, evaluate_against

    root = tmp / "data" / "r1m"
    names = [f"{i % 3}/{i:04x}" for i in range(N_DISTRACTORS)]
    for name in names:
        (root / "jpg" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (56, 40), (120, 120, 40)).save(root / "jpg" / f"{name}.jpg")
    (root / DISTRACTOR_LIST).write_text("\n".join(names) + "\n")
    distractors = distractor_dataset(root)
    rng = np.random.default_rng(3)
    for method in METHODS:
        entry = load_entry(cache_dir, dataset, method)
        near = entry.queries[np.arange(N_DISTRACTORS) % len(dataset.queries)]
        db = near + 0.05 * rng.normal(size=near.shape)
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        save_entry(cache_dir, distractors, method, db.astype(np.float32), np.zeros((0, db.shape[1]), np.float32))
        report = evaluate_against(dataset, entry, method, distractors, cache_dir, "original", k)
        for other in (m for m in reranked if m.descriptor_key() == method):
            evaluate_against(dataset, entry, other, distractors, cache_dir, "original", k,
                             ann=AnnParams(kind="flat", k=other.k), truncate=20)
        Path(report["topk_file"]).parent.joinpath("db.npy").unlink()
    return distractors, root
