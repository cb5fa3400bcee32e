"""The seed study's three tables, reproduced for the methods in the cache.

Table 1 compares the baseline poolings (MAC, SPoC, GeM), table 2 R-MAC, table 3
R-MAC with diffusion (a fourth, beyond the study: R-MAC with fast spectral ranking
and k-reciprocal re-ranking), each row with the study's columns (its mAP@10, mAP@100 and
full-list "mAP (at all dataset)", `cbir.metrics.seed_map_at_k`), the reference
protocol's full mAP and mP@1/5/10, the seed study's published figure beside each of
its columns (`cbir.study.SEED_TABLE`: same backbone, or a named stand-in for one the
study did not use), and the published reference mAP with our difference where the
literature reports the same method. Published figures
are full-list reference mAP on the whole benchmark (REFERENCE.md); on a partial
dataset the difference is shown but flagged as not comparable. A fine-tuning table
puts each trained head (cbir.heads) beside the descriptors it was applied to.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .cache import load_entry
from .data import Dataset
from .metrics import evaluation_report
from .method import Method
from .rerank import rerank
from .evaluation import load_grid
from .spectral import stored_ranker
from .study import NOT_COMPARABLE, published_for, study_columns

TABLES = (
    ("Table 1: baseline poolings", lambda m: m.pooling in ("mac", "spoc", "gem") and m.rerank == "none"),
    ("Table 2: R-MAC", lambda m: m.pooling == "rmac" and m.rerank == "none"),
    ("Table 3: R-MAC + diffusion", lambda m: m.pooling == "rmac" and m.rerank == "diffusion"),
    ("Beyond the study: R-MAC + FSR, k-reciprocal",
     lambda m: m.pooling == "rmac" and m.rerank in ("fsr", "kreciprocal")),
)
COLUMNS = ("method", "seed mAP@10", "study mAP@10", "seed mAP@100", "study mAP@100", "seed mAP (all)",
           "study mAP (all)", "study row", "mAP", "published mAP", "mAP - published", "published source",
           "mP@1", "mP@5", "mP@10", "dim", "study dim")


def percent(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def method_row(dataset: Dataset, entry, method: Method, protocol: str, note: str = "") -> dict:
    """One table row of `method` on the loaded (checksum-verified) `entry` of its descriptors."""
    result = evaluation_report(rerank(method, entry.db, entry.queries, ranker=stored_ranker(entry, method)),
                               dataset, protocol)
    published = published_for(dataset.name, method)
    ours = percent(result["mAP"])
    return {
        "method": f"{method.label()} {note}".strip(),
        "seed mAP@10": percent(result["seed_mAP@10"]),
        "seed mAP@100": percent(result["seed_mAP@100"]),
        "seed mAP (all)": percent(result["seed_mAP"]),
        **study_columns(dataset.name, method),
        "mAP": ours,
        "published mAP": None if published is None else published.map,
        "mAP - published": None if published is None or ours is None else round(ours - published.map, 2),
        "published source": None if published is None else "; ".join(filter(None, (published.source,
                                                                                    published.note))),
        "mP@1": percent(result["mP@1"]),
        "mP@5": percent(result["mP@5"]),
        "mP@10": percent(result["mP@10"]),
        "dim": int(entry.manifest["dim"]),
    }


def tuned_diffusion(entry, method: Method, protocol: str) -> Method | None:
    """The best (alpha, k) of the entry's stored grid when it beats `method`'s own (alpha, k):
    chosen on the test queries, so the row that shows it is labelled so."""
    grid = load_grid(entry, protocol)
    if grid is None or (grid["kq"], grid["gamma"]) != (method.kq, method.gamma):
        return None
    values = np.asarray(grid["map"])
    i, j = np.unravel_index(int(np.argmax(values)), values.shape)
    best = method.with_rerank("diffusion", alpha=grid["alphas"][i], k=grid["ks"][j])
    return None if (best.alpha, best.k) == (method.alpha, method.k) else best


def study_tables(dataset: Dataset, cache_root: Path, methods: list[Method], protocol: str) -> dict[str, list[dict]]:
    """Rows of each of the study's tables for the given methods (a method lands in one table).

    The diffusion table's title states its (alpha, k); where the stored grid holds a better
    (alpha, k), that row follows, labelled as tuned on the test queries.
    """
    tables = {}
    for title, belongs in TABLES:
        rows = []
        for method in (m for m in methods if belongs(m)):
            entry = load_entry(cache_root, dataset, method)  # read and verified once for its rows
            rows.append(method_row(dataset, entry, method, protocol))
            tuned = tuned_diffusion(entry, method, protocol) if method.rerank == "diffusion" else None
            if tuned is not None:
                rows.append(method_row(dataset, entry, tuned, protocol,
                                       "[best of the stored (alpha, k) grid: tuned on the test queries]"))
        if rows:
            used = sorted({(m.alpha, m.k) for m in methods if belongs(m) and m.rerank == "diffusion"})
            if used:
                title += " (" + "; ".join(f"alpha={a:g}, k={k}" for a, k in used) + ")"
            tables[title] = rows
    return tables


FINETUNE_TITLE = "Fine-tuning: trained heads, before / after"
FINETUNE_COLUMNS = ("method", "head", "trained on", "transductive", "mAP before", "mAP after", "difference",
                    "mP@10 before", "mP@10 after", "dim before", "dim after", "train seconds")


def finetuning_rows(dataset: Dataset, cache_root: Path, methods: list[Method], protocol: str) -> list[dict]:
    """One row per headed method without re-ranking: reference mAP without and with its head."""
    rows = []
    for method in methods:
        if not method.head or method.rerank != "none":
            continue
        after_entry = load_entry(cache_root, dataset, method)
        before_entry = load_entry(cache_root, dataset, method.without_head())
        after = evaluation_report(rerank(method, after_entry.db, after_entry.queries), dataset, protocol)
        before = evaluation_report(rerank(method, before_entry.db, before_entry.queries), dataset, protocol)
        head = after_entry.manifest.get("head", {})
        rows.append({
            "method": method.without_head().label(), "head": f"{head.get('kind')} {method.head}",
            "trained on": head.get("trained_on"), "transductive": "yes" if method.head_transductive else "no",
            "mAP before": percent(before["mAP"]), "mAP after": percent(after["mAP"]),
            "difference": None if before["mAP"] is None or after["mAP"] is None
            else round(percent(after["mAP"]) - percent(before["mAP"]), 2),
            "mP@10 before": percent(before["mP@10"]), "mP@10 after": percent(after["mP@10"]),
            "dim before": int(before_entry.manifest["dim"]), "dim after": int(after_entry.manifest["dim"]),
            "train seconds": head.get("train_seconds")})
    return rows


def finetuning_markdown(rows: list[dict]) -> str:
    lines = [f"## {FINETUNE_TITLE}", "",
             "Reference full-list mAP (%) of the descriptors without and with the head; a head is "
             "trained on other images than these unless marked transductive.", "",
             "| " + " | ".join(FINETUNE_COLUMNS) + " |", "|" + "---|" * len(FINETUNE_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in FINETUNE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines + [""])


def _cell(value) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(tables: dict[str, list[dict]], dataset: Dataset, protocol: str) -> str:
    lines = [f"# {dataset.name}: {dataset.status_line()}, protocol {protocol}", "",
             "Figures in %. 'seed' columns: the seed study's AP@k normalised by the positives "
             "within the top k; 'mAP': reference full-list trapezoid AP (junk removed). "
             "'study' columns: the seed study's published figure for the same column, backbone, "
             "pooling and re-ranking (full Paris6k); for a backbone the study did not use, "
             "'study row' names the row it is put beside. 'published mAP' and the difference: "
             "only where the method is the one published (reference mAP).", ""]
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


def rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
