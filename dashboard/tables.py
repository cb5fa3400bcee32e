"""Tables the pages show, assembled from `cbir.metrics.evaluation_report` (figures in percent)."""
from __future__ import annotations

import pandas as pd

from cbir.cache import CacheError
from cbir.method import Method
from cbir.study import published_for

from . import loaders

METRICS = {  # column -> evaluation_report key
    "seed mAP@10": "seed_mAP@10",
    "seed mAP@100": "seed_mAP@100",
    "seed mAP (all)": "seed_mAP",
    "mAP": "mAP",
    "mP@1": "mP@1",
    "mP@5": "mP@5",
    "mP@10": "mP@10",
}


def percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def overview(key: str, dataset_name: str, methods: list[Method], protocol: str
             ) -> tuple[pd.DataFrame, list[str]]:
    """One row per method; entries that fail validation are left out and reported."""
    rows, errors = [], []
    for method in methods:
        try:
            manifest = loaders.manifest(key, method)
            report = loaders.stored_report(key, method, protocol)
        except CacheError as exc:
            errors.append(str(exc))
            continue
        published = published_for(dataset_name, method)
        n_params = (manifest.get("backbone") or {}).get("n_params")
        rows.append({
            "method": method.label(),
            "backbone": method.backbone,
            "pooling": method.pooling,
            "whitening": method.whitening,
            "re-ranking": method.rerank,
            **{column: percent(report[name]) for column, name in METRICS.items()},
            "dim": int(manifest["dim"]),
            "params (M)": None if n_params is None else n_params / 1e6,
            "published mAP": None if published is None else published.map,
            "published source": "" if published is None else published.source,
            "id": loaders.method_id(method),
        })
    return pd.DataFrame(rows), errors


def per_query(view, methods: list[Method]) -> pd.DataFrame:
    """Per-query reference AP (percent), one column per method label, indexed by query name."""
    data = {}
    for method in methods:
        report = loaders.report(view.key, method, view.protocol)
        data[method.label()] = [percent(row["ap"]) for row in report["per_query"]]
    return pd.DataFrame(data, index=view.query_names)
