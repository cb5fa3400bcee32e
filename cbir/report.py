"""The seed study's three tables, reproduced for the methods in the cache.

Table 1 compares the baseline poolings (MAC, SPoC, GeM), table 2 R-MAC, table 3
R-MAC with diffusion (a fourth, beyond the study: R-MAC with fast spectral ranking
and k-reciprocal re-ranking), each row with the study's columns (its mAP@10, mAP@100 and
full-list "mAP (at all dataset)", `cbir.metrics.seed_map_at_k`), the reference
protocol's full mAP and mP@1/5/10, and the published figure with our difference
where the study (or the literature) reports the same method, and the study's own
EfficientNet-B1 figure for the same pooling beside any backbone. Published figures
are full-list reference mAP on the whole benchmark (REFERENCE.md); on a partial
dataset the difference is shown but flagged as not comparable.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .cache import load_entry
from .data import Dataset
from .metrics import evaluation_report
from .method import Method
from .rerank import rerank
from .spectral import stored_ranker
from .study import NOT_COMPARABLE, published_for, seed_study_for

TABLES = (
    ("Table 1: baseline poolings", lambda m: m.pooling in ("mac", "spoc", "gem") and m.rerank == "none"),
    ("Table 2: R-MAC", lambda m: m.pooling == "rmac" and m.rerank == "none"),
    ("Table 3: R-MAC + diffusion", lambda m: m.pooling == "rmac" and m.rerank == "diffusion"),
    ("Beyond the study: R-MAC + FSR, k-reciprocal", lambda m: m.pooling == "rmac" and m.rerank in ("fsr", "kreciprocal")),
)
COLUMNS = ("method", "seed mAP@10", "seed mAP@100", "seed mAP (all)", "mAP", "published mAP",
           "mAP - published", "published source", "seed study mAP (EfficientNet-B1)", "mP@1", "mP@5", "mP@10",
           "dim")


def percent(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def method_row(dataset: Dataset, cache_root: Path, method: Method, protocol: str) -> dict:
    entry = load_entry(cache_root, dataset, method)
    result = evaluation_report(rerank(method, entry.db, entry.queries, ranker=stored_ranker(entry, method)),
                               dataset, protocol)
    published = published_for(dataset.name, method)
    study = seed_study_for(method) if dataset.name == "paris6k" else None
    ours = percent(result["mAP"])
    return {
        "method": method.label(),
        "seed mAP@10": percent(result["seed_mAP@10"]),
        "seed mAP@100": percent(result["seed_mAP@100"]),
        "seed mAP (all)": percent(result["seed_mAP"]),
        "mAP": ours,
        "published mAP": None if published is None else published.map,
        "mAP - published": None if published is None or ours is None else round(ours - published.map, 2),
        "published source": None if published is None else "; ".join(filter(None, (published.source,
                                                                                    published.note))),
        "seed study mAP (EfficientNet-B1)": None if study is None else study.map,
        "mP@1": percent(result["mP@1"]),
        "mP@5": percent(result["mP@5"]),
        "mP@10": percent(result["mP@10"]),
        "dim": int(entry.manifest["dim"]),
    }


def study_tables(dataset: Dataset, cache_root: Path, methods: list[Method], protocol: str) -> dict[str, list[dict]]:
    """Rows of each of the study's tables for the given methods (a method lands in one table)."""
    tables = {}
    for title, belongs in TABLES:
        rows = [method_row(dataset, cache_root, m, protocol) for m in methods if belongs(m)]
        if rows:
            tables[title] = rows
    return tables


def _cell(value) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(tables: dict[str, list[dict]], dataset: Dataset, protocol: str) -> str:
    lines = [f"# {dataset.name}: {dataset.status_line()}, protocol {protocol}", "",
             "Figures in %. 'seed' columns: the seed study's AP@k normalised by the positives "
             "within the top k; 'mAP': reference full-list trapezoid AP (junk removed). "
             "'published mAP' and the difference: only where the method is the one published; "
             "'seed study mAP': the study's full-Paris6k figure for the same pooling and "
             "re-ranking with its EfficientNet-B1 backbone, for orientation.", ""]
    if dataset.partial:
        lines += [f"**{NOT_COMPARABLE}**", ""]
    for title, rows in tables.items():
        lines += [f"## {title}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def to_csv(tables: dict[str, list[dict]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("table",) + COLUMNS)
    writer.writeheader()
    for title, rows in tables.items():
        for row in rows:
            writer.writerow({"table": title, **row})
    return buffer.getvalue()
