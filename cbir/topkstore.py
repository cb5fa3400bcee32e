"""Stored top-K evaluations against distractors: what each was computed from, checked before use.

A `topk-<dataset key>-<protocol>-k<K>.npz` (`cbir.topk`) in the distractors' cache entry
answers for one method only while the descriptors and the ground truth it came from are
unchanged. So it records them (`provenance`: both entries' checksums as their manifests
state them, the ground truth's hash, the evaluation's name, the distractors' root) and
the names of the distractors its lists hold: the dashboard serves it without the
distractors' dataset description (a million names) or descriptors, and `evaluate`
reuses it instead of searching again. A damaged, older or stale file raises `StaleTopK`
naming it; it is never used.

A bundle (`cbir.bundle`) carries the lists but reduced descriptors (float16 or PCA): its
entry's manifest records the full-precision entry it was reduced from (`reduced_from`,
checked against the cache when the bundle was built, then covered by the bundle's
checksums), and inside a verified bundle the lists are checked against that record. Their
figures are those of the full-precision descriptors, and say so (`computed_on`).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .cache import CacheError, dataset_key, read_manifest
from .data import Dataset
from .distractors import DISTRACTOR_SETS
from .method import Method
from .topk import TopK, load_topk, place_ground_truth, save_topk, topk_report

FORMAT = 1


class StaleTopK(ValueError):
    """A stored top-K file that is damaged, of another format, or computed from other inputs."""


def topk_path(distractor_entry: Path, dataset: Dataset, protocol: str, k: int, suffix: str = "") -> Path:
    """`suffix` names a re-ranking (`cbir.scalererank.ranking_suffix`); exact search has none."""
    return Path(distractor_entry) / f"topk-{dataset_key(dataset)}-{protocol}-k{k}{suffix}.npz"


def is_distractor_key(key: str) -> bool:
    """Whether a cache folder holds a distractor set (not a dataset the dashboard can show)."""
    return any(key.startswith(f"{name}-") for name in DISTRACTOR_SETS)


def distractor_short_name(key: str) -> str:
    """"R1M" for a distractor cache folder of revisitop1m (the key itself for an unknown set)."""
    return next((spec.short_name for name, spec in DISTRACTOR_SETS.items() if key.startswith(f"{name}-")), key)


def gnd_hash(gnd: list[dict]) -> str:
    """A hash of one protocol's ground truth: positives and junk of every query, in order."""
    lists = [[sorted(int(i) for i in g["ok"]), sorted(int(i) for i in g.get("junk", ()))] for g in gnd]
    return hashlib.sha1(json.dumps(lists).encode()).hexdigest()


def entry_sources(manifest: dict) -> dict:
    """What a cache entry's descriptors are, as its manifest states it (no array read)."""
    return {"dataset_key": manifest.get("dataset_key"), "names_sha1": manifest.get("names_sha1"),
            "n_images": manifest.get("n_images"),
            "files": {name: manifest.get("files", {}).get(name) for name in ("db.npy", "queries.npy")}}


def reduced_from(manifest: dict) -> dict:
    """What a bundle's reduced entry records of the full-precision entry `manifest` describes."""
    return {"sources": entry_sources(manifest), "dim": manifest.get("dim"), "dtype": manifest.get("dtype")}


def provenance(dataset: Dataset, protocol: str, method: Method, k: int, manifest: dict, distractor_manifest: dict,
               name: str, distractor_root: str, ranking: dict | None = None) -> dict:
    """What a stored evaluation was computed from, and what it is (the file's name is not relied on).
    `ranking` holds a re-ranking's report fields (`cbir.scalererank.scale_ranking`: its full
    label, the truncation, the approximate graph and its recall), restored with the report."""
    return {"format": FORMAT, "dataset_key": dataset_key(dataset), "protocol": protocol, "k": int(k),
            "method": method.to_dict(), "database": entry_sources(manifest),
            "distractors": entry_sources(distractor_manifest), "distractor_root": distractor_root,
            "gnd_sha1": gnd_hash(dataset.gnd[protocol]), "dataset_name": name, "ranking": ranking or {}}


def store_topk(path: Path, topk: TopK, record: dict, distractor_paths: list[str], n_db: int) -> None:
    """Save `topk` with its provenance and the names of the distractors its lists hold."""
    shown = np.unique(topk.ids[topk.ids >= n_db])
    names = np.array([distractor_paths[i - n_db].encode() for i in shown.tolist()], dtype=bytes)  # UTF-8
    save_topk(path, replace(topk, extra={"provenance": np.array(json.dumps(record)), "distractor_ids": shown,
                                         "distractor_paths": names}))


@dataclass
class StoredTopK:
    """A validated stored top-K evaluation: the lists, their provenance, the distractors' names."""
    topk: TopK
    provenance: dict
    path: Path
    n_db: int
    distractor_ids: np.ndarray = field(repr=False)
    distractor_paths: np.ndarray = field(repr=False)
    computed_on: dict | None = None  # in a bundle: the full-precision entry (`reduced_from`) the lists came from

    @property
    def name(self) -> str:
        return self.provenance["dataset_name"]

    def distractor_path(self, item: int) -> str:
        """The relative path (under the distractors' root) of ranked item `item` >= n_db."""
        at = int(np.searchsorted(self.distractor_ids, item))
        if at == len(self.distractor_ids) or self.distractor_ids[at] != item:
            raise StaleTopK(f"{self.path}: item {item} is in no stored list")
        return bytes(self.distractor_paths[at]).decode()

    def report(self, dataset: Dataset, protocol: str) -> dict:
        report = topk_report(self.topk, dataset, protocol, name=self.name)
        report["n_distractors"] = self.topk.n_ranked - self.n_db
        report["topk_file"] = str(self.path)
        report.update(self.provenance.get("ranking") or {})
        if self.computed_on is not None:
            report["computed_on"] = {"dim": self.computed_on.get("dim"), "dtype": self.computed_on.get("dtype")}
        return report


def read_provenance(path: Path) -> dict:
    """The provenance recorded in a top-K file (only that member is read)."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            record = json.loads(str(z["provenance"]))
    except KeyError:
        raise StaleTopK(f"{path}: written without provenance (an older version); run `python -m cbir "
                        "evaluate ... --distractors ...` again to replace it") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # zip, npy or JSON damage
        raise StaleTopK(f"{path}: not a readable stored top-K evaluation ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StaleTopK(f"{path}: provenance of another format; run evaluate again to replace it")
    return record


def _recorded_method(record: dict) -> Method | None:
    try:
        return Method.from_dict(record["method"])
    except (KeyError, TypeError, ValueError):
        return None


def checked_topk(path: Path, dataset: Dataset, protocol: str, manifest: dict, distractor_manifest: dict,
                 method: Method | None = None, in_bundle: bool = False) -> StoredTopK:
    """The stored evaluation at `path` once it was computed (by `method`, when given) from exactly
    these descriptors (both manifests) and this ground truth, and its lists are consistent;
    StaleTopK otherwise. `in_bundle`: `manifest` is a verified bundle's reduced entry, and the
    lists must come from the full-precision entry it records (`reduced_from`)."""
    if protocol not in dataset.gnd:
        raise StaleTopK(f"{path}: computed for protocol {protocol!r}, which {dataset.name} lacks")
    record = read_provenance(path)
    rerun = "run `python -m cbir evaluate ... --distractors ...` again to recompute it"
    if in_bundle:
        rerun += ", then rebuild the bundle"
    if method is not None and _recorded_method(record) != method:
        raise StaleTopK(f"{path}: computed by another method than {method.label()}; {rerun}")
    computed_on = manifest.get("reduced_from") if in_bundle else None
    database = (computed_on or {}).get("sources") if in_bundle else entry_sources(manifest)
    for side, current in (("database", database), ("distractors", entry_sources(distractor_manifest))):
        if record.get(side) != current:
            raise StaleTopK(f"{path}: computed from other {side} descriptors than the "
                            f"{'bundle was built from' if in_bundle else 'cache now holds'}; {rerun}")
    if record.get("dataset_key") != dataset_key(dataset) or record.get("protocol") != protocol:
        raise StaleTopK(f"{path}: computed for {record.get('dataset_key')} {record.get('protocol')}, "
                        f"not {dataset_key(dataset)} {protocol}")
    if record.get("gnd_sha1") != gnd_hash(dataset.gnd[protocol]):
        raise StaleTopK(f"{path}: computed with another ground truth than {dataset.name!r} protocol "
                        f"{protocol!r} now has; {rerun}")
    try:
        topk = load_topk(path)
    except ValueError as exc:
        raise StaleTopK(str(exc)) from None
    if not isinstance(record.get("k"), int) or topk.k != min(record["k"], topk.n_ranked):
        raise StaleTopK(f"{path}: lists of length {topk.k}, its provenance says K={record.get('k')} "
                        f"of {topk.n_ranked} ranked items")
    n_db = int(manifest["n_images"])
    problem = _inconsistency(topk, dataset.gnd[protocol], n_db, n_db + int(distractor_manifest["n_images"]))
    if problem:
        raise StaleTopK(f"{path}: damaged ({problem}); {rerun}")
    return StoredTopK(topk, record, Path(path), n_db, topk.extra.get("distractor_ids", np.zeros(0, np.int64)),
                      topk.extra.get("distractor_paths", np.zeros(0, bytes)), computed_on)


def _inconsistency(topk: TopK, gnd: list[dict], n_db: int, n_ranked: int) -> str | None:
    """What is wrong with the stored lists, if anything: shapes, ranges, order, placements."""
    ids, scores = topk.ids, topk.scores
    if ids.ndim != 2 or ids.shape != scores.shape or len(ids) != len(gnd):
        return f"lists of shape {ids.shape} / {scores.shape} for {len(gnd)} queries"
    if topk.n_ranked != n_ranked or (ids.size and (ids.min() < 0 or ids.max() >= n_ranked)):
        return f"item indices outside the {n_ranked} ranked items"
    if not np.isfinite(scores).all() or (np.diff(scores, axis=1) > 0).any():
        return "scores not finite or not in descending order"
    placed = place_ground_truth(ids, scores, gnd, n_ranked)
    same = all(np.array_equal(a, b) for a, b in zip(placed.positive_ranks + placed.junk_ranks,
                                                    list(topk.positive_ranks) + list(topk.junk_ranks)))
    if not same or not np.array_equal(placed.n_positives, topk.n_positives):
        return "stored positive or junk ranks do not match the lists"
    named = topk.extra.get("distractor_ids", np.zeros(0, np.int64))
    if len(named) != len(topk.extra.get("distractor_paths", ())) or \
            not np.isin(ids[ids >= n_db], named).all():
        return "the names of the distractors in the lists are incomplete"
    return None


@dataclass
class StoredEvaluation:
    """The stored top-K evaluations of one benchmark against one distractor set in a cache."""
    key: str                      # "<dataset key>~<distractor key>": its id in links (URL-safe)
    dataset_key: str
    distractor_key: str
    name: str                     # "rParis6k + R1M"
    files: dict = field(default_factory=dict)  # (Method, protocol) -> path of the largest K

    @property
    def protocols(self) -> list[str]:
        return list(dict.fromkeys(protocol for _, protocol in self.files))

    def methods(self, protocol: str) -> list[Method]:
        return [method for method, p in self.files if p == protocol]


def stored_evaluations(cache_root: Path, problems: list[str] | None = None) -> dict[str, StoredEvaluation]:
    """Every stored top-K evaluation in the cache, grouped by (benchmark, distractor set), as
    their provenance states it; a file whose provenance cannot be read, or that lies in
    another method's entry, is left out, with a message in `problems`."""
    found: dict[str, StoredEvaluation] = {}
    sizes: dict[tuple, int] = {}
    root = Path(cache_root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and is_distractor_key(p.name)) if root.is_dir() else []
    for path in (p for folder in folders for p in sorted(folder.glob("*/topk-*.npz"))):
        try:
            record = read_provenance(path)
            method, k = Method.from_dict(record["method"]), int(record["k"])
            dataset, protocol = str(record["dataset_key"]), str(record["protocol"])
            read_manifest(path.parent)
            if method.descriptor_key().slug() != path.parent.name:
                raise StaleTopK(f"{path}: holds {method.label()}, not the entry {path.parent.name} (misplaced)")
        except (StaleTopK, CacheError, KeyError, TypeError, ValueError) as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        distractor_key = path.parent.parent.name
        key = f"{dataset}~{distractor_key}"
        evaluation = found.setdefault(key, StoredEvaluation(key, dataset, distractor_key,
                                                            str(record.get("dataset_name", key))))
        if k > sizes.get((key, method, protocol), 0):
            evaluation.files[(method, protocol)], sizes[(key, method, protocol)] = path, k
    return found
