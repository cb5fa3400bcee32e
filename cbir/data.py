"""Retrieval datasets with their ground truth, exactly as the literature defines them.

A `Dataset` is what every other stage needs: the database images present and
readable, the queries (with boxes), and per protocol the positives ("ok") and junk
of each query as indices into the database. It round-trips through JSON so the
dashboard can read it from the cache without the original files.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


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

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.gnd)

    @property
    def partial(self) -> bool:
        return len(self.images) < self.n_images_total or len(self.queries) < self.n_queries_total

    def status_line(self) -> str:
        return (f"{len(self.images)} of {self.n_images_total} images, "
                f"{len(self.queries)} of {self.n_queries_total} queries")

    def image_path(self, i: int) -> Path:
        return Path(self.root) / self.paths[i]

    def query_path(self, q: int) -> Path:
        return Path(self.root) / self.queries[q].path

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
