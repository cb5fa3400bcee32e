"""Distractor sets added to a benchmark's database: revisitop's R1M (Radenovic et al. 2018).

A distractor set is described like a dataset without queries or ground truth, so the
extractor and the cache handle it as any other (`distractor_dataset`). Evaluation ranks
each query against the database followed by the distractors; the benchmark's ground truth
is unchanged (its indices are database indices, and every distractor is a negative), and
only each query's top K is kept (`cbir.topk`). Re-rankings against them (QE, AQE, truncated
diffusion on a persisted kNN graph) are `cbir.scalererank`'s. Every name says what was
ranked: "rParis6k + R1M".

Layout of revisitop's download (`download_distractors` in revisitop's code): `ROOT/
revisitop1m.txt` lists one image a line relative to `ROOT/jpg/`, with ".jpg" added to
a name without an extension. Fetching the 100 archives is not part of this tool yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import Dataset
from .topk import DEFAULT_TOPK, exact_topk, place_ground_truth, topk_report



class DistractorSet(NamedTuple):
    short_name: str
    list_file: str
    folder: str
    extension: str
    n_images: int


DISTRACTOR_SETS = {"revisitop1m": DistractorSet("R1M", "revisitop1m.txt", "jpg", ".jpg", 1_001_001)}


def read_image_list(root: Path, name: str = "revisitop1m") -> list[str]:
    """The image paths (relative to `root`) of a distractor set's list file; a clear error
    names the file and the line when it is absent, empty or leaves its folder."""
    if name not in DISTRACTOR_SETS:
        raise ValueError(f"unknown distractor set {name!r}; choose one of {sorted(DISTRACTOR_SETS)}")
    spec = DISTRACTOR_SETS[name]
    list_file, folder = Path(root) / spec.list_file, spec.folder
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{list_file}: cannot read the {name} image list ({exc})") from exc
    paths = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry:
            continue
        relative = Path(entry)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{list_file}, line {number}: {entry!r} is not a path inside {folder}/")
        paths.append(str(Path(folder) / (entry if relative.suffix else entry + spec.extension)))
    if not paths:
        raise ValueError(f"{list_file}: the {name} image list is empty")
    return paths


def distractor_dataset(root: Path, name: str = "revisitop1m") -> Dataset:
    """The distractor set as a dataset without queries, for the extractor and the cache:
    the listed images present under `root` (a partial download is named so, "R1M (2000 of
    1001001 images)"), the others in `missing`. Images are not decoded here (a million of
    them): the extractor reports any it cannot read, naming the file."""
    root = Path(root).expanduser().resolve()
    listed = read_image_list(root, name)
    present = [p for p in listed if (root / p).is_file()]
    if not present:
        raise ValueError(f"{root}: none of the {len(listed)} images of {name}'s list is present "
                         f"(first expected: {root / listed[0]})")
    missing = sorted(set(listed) - set(present))
    return Dataset(name, str(root), present, present, ["distractor"] * len(present), [], {},
                   max(len(listed), DISTRACTOR_SETS[name].n_images), 0, missing=missing)


def combined_name(dataset: Dataset, distractors: Dataset) -> str:
    """"rParis6k + R1M"; a partial set says how much of it: "rParis6k + R1M (2000 of 1001001 images)"."""
    spec = DISTRACTOR_SETS.get(distractors.name)
    short = spec.short_name if spec else distractors.name
    share = f" ({len(distractors.images)} of {distractors.n_images_total} images)" if distractors.partial else ""
    return f"{dataset.display_name()} + {short}{share}"


def distractor_report(db: np.ndarray, distractor_db: np.ndarray, queries: np.ndarray, dataset: Dataset,
                      distractors: Dataset, protocol: str, k: int = DEFAULT_TOPK, rank=exact_topk):
    """(report, top-K) of `rank(parts, queries, k)` (default exact search; `cbir.scalererank`
    re-ranks) of `queries` over the database then the distractors."""
    if np.shape(db)[1:] != np.shape(distractor_db)[1:]:
        raise ValueError(f"database descriptors have shape {np.shape(db)[1:]} but the distractors' "
                         f"{np.shape(distractor_db)[1:]}: describe both with the same method")
    ids, scores = rank([db, distractor_db], queries, k=k)
    topk = place_ground_truth(ids, scores, dataset.gnd[protocol], len(db) + len(distractor_db))
    report = topk_report(topk, dataset, protocol, name=combined_name(dataset, distractors))
    report["n_distractors"] = len(distractor_db)
    return report, topk


def add_distractor_args(p, evaluates: bool) -> None:
    """`--distractors NAME --distractors-root DIR` of `extract`, and `--topk K` of `evaluate`."""
    p.add_argument("--distractors", choices=sorted(DISTRACTOR_SETS), default=None,
                   help="add a distractor set to the database (ground truth unchanged)")
    p.add_argument("--distractors-root", type=Path, default=None,
                   help=f"its folder ({', '.join(s.list_file for s in DISTRACTOR_SETS.values())} and the images)")
    if evaluates:
        from .annindex import ANN_KINDS
        from .scalererank import DEFAULT_TRUNCATE

        p.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                       help="with distractors: the length of each query's stored list")
        p.add_argument("--truncate", type=int, default=DEFAULT_TRUNCATE,
                       help="with distractors, --rerank diffusion: diffuse over each query's top T items")
        p.add_argument("--ann", choices=ANN_KINDS, default="hnsw",
                       help="with distractors, --rerank diffusion: the index the kNN graph is searched "
                            "with (flat = exact; stored in the distractors' cache entry)")
        p.add_argument("--thumbnails", action="store_true",
                       help="with distractors: store thumbnails of the distractors the lists can show, "
                            "so that the dashboard shows them without the images")


def distractors_from_args(args) -> Dataset | None:
    """The distractor set the arguments name, or None; refuses half-given or unusable options."""
    if args.distractors is None:
        if args.distractors_root is not None:
            raise ValueError("--distractors-root needs --distractors (e.g. --distractors revisitop1m)")
        if getattr(args, "thumbnails", False):
            raise ValueError("--thumbnails (of the distractors) needs --distractors and --distractors-root")
        return None
    if args.distractors_root is None:
        raise ValueError(f"--distractors {args.distractors} needs --distractors-root DIR")
    from .scalererank import check_rerank_at_scale

    check_rerank_at_scale(getattr(args, "rerank", "none"))
    if getattr(args, "topk", DEFAULT_TOPK) < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if getattr(args, "truncate", 1) < 1:
        raise ValueError(f"--truncate must be at least 1, got {args.truncate}")
    return distractor_dataset(args.distractors_root, args.distractors)


def evaluate_against(dataset: Dataset, entry, method, distractors: Dataset, cache_root: Path, protocol: str,
                     k: int = DEFAULT_TOPK, progress=None, ann=None, truncate: int | None = None,
                     thumbnails: bool = False, **options) -> dict:
    """The report of `method` on `dataset` + `distractors`: from the stored top-K lists when they
    were computed by this method from these very descriptors and ground truth (`topk_reused`),
    else by extracting what the cache lacks and ranking; the lists are stored, with their
    provenance, in the distractors' cache entry (`topk_file`; `topk_recomputed` says why a
    stored file was not used). A re-ranking is `cbir.scalererank`'s: diffusion runs on the kNN
    graph `ann` (`AnnParams`) over both, truncated to each query's top `truncate`. With
    `thumbnails`, the distractors the lists can show are added to the thumbnail shard
    (`cbir.thumbshard`)."""
    from .cache import CacheError, dataset_key, entry_dir, read_manifest
    from .extraction import ensure_descriptors
    from .scalererank import ranking_suffix, scale_ranking
    from .topkstore import StaleTopK, checked_topk, provenance, store_topk, topk_path

    folder = entry_dir(cache_root, dataset_key(distractors), method)  # its key hashes the distractors' names
    path = topk_path(folder, dataset, protocol, k, ranking_suffix(method, ann, truncate))
    report, stale = None, {}
    if path.is_file():
        try:
            stored = checked_topk(path, dataset, protocol, entry.manifest, read_manifest(folder), method)
            report, ids = {**stored.report(dataset, protocol), "topk_reused": True}, stored.topk.ids
        except (StaleTopK, CacheError) as exc:
            stale = {"topk_recomputed": str(exc)}
    if report is None:
        distractor_entry = ensure_descriptors(distractors, method, cache_root, progress, **options)
        rank, details = scale_ranking(method, entry, distractor_entry, dataset, ann, truncate, progress)
        report, topk = distractor_report(entry.db, distractor_entry.db, entry.queries, dataset, distractors,
                                         protocol, k, rank)
        report.update(details)
        record = provenance(dataset, protocol, method, k, entry.manifest, distractor_entry.manifest,
                            report["dataset_name"], distractors.root, ranking=details)
        try:
            store_topk(path, topk, record, distractors.paths, len(entry.db))
            report["topk_file"] = str(path)
        except OSError:
            report["topk_file"] = None
        report, ids = {**report, "topk_reused": False, **stale}, topk.ids
    if thumbnails:
        from .thumbshard import shown_distractors, write_shard

        shown = [distractors.paths[i] for i in shown_distractors(ids, len(entry.db))]
        report["thumbnail_shard"] = write_shard(folder.parent, Path(distractors.root), shown)
    return report
