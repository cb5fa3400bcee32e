"""Tables the pages show, assembled from `cbir.metrics.evaluation_report` (figures in percent)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cbir.cache import CacheError
from cbir.method import Method
from cbir.study import published_for, study_columns
from cbir.topkstore import StaleTopK

from . import loaders, stored_topk

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


HEADLINE = ["method", "mAP", "mP@1", "mP@5", "mP@10", "seed mAP@10", "study mAP@10", "seed mAP@100",
            "study mAP@100", "seed mAP (all)", "study mAP (all)", "study row", "dim", "study dim", "params (M)",
            "published mAP", "published source", "backbone", "pooling", "whitening", "re-ranking", "id"]


def overview(key: str, dataset_name: str, methods: list[Method], protocol: str, computed: dict | None = None
             ) -> tuple[pd.DataFrame, list[str], list[Method]]:
    """One row per method whose evaluation is stored (or in `computed`), best reference mAP first,
    each seed column beside the study's figure; the methods still to evaluate; entries that
    fail validation are left out and reported."""
    rows, errors, pending = [], [], []
    for method in methods:
        try:
            manifest = loaders.manifest(key, method)
            report = (computed or {}).get(method) or loaders.known_report(key, method, protocol)
        except CacheError as exc:
            errors.append(str(exc))
            continue
        if report is None:
            pending.append(method)
            continue
        rows.append(_row(dataset_name, method, manifest, report))
    return _sorted(pd.DataFrame(rows, columns=HEADLINE)), errors, pending


DISTRACTOR_COLUMNS = ["K", "queries truncated", "distractors"]


def distractor_overview(view) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The Overview's table of a stored distractor evaluation, from each method's top-K lists, with
    their length K and how many queries have positives beyond it; the files refused (named);
    the caveats: the mAP label of each method whose lists are truncated ("truncated at K=1000:
    ..."), what a re-ranking approximated (truncation, approximate kNN graph and its recall), and,
    in a bundle, that the figures come from the full-precision descriptors, not the bundled ones."""
    rows, errors, caveats, computed_on = [], [], [], []
    for method in view.options.values():
        try:
            report = stored_topk.report(view, method)
            manifest = loaders.manifest(view.key, method)
        except (CacheError, StaleTopK) as exc:
            errors.append(str(exc))
            continue
        if report["n_queries_truncated"]:
            caveats.append(f"{method.label()}: {report['mAP_label']}")
        if "truncate" in report:
            caveats.append(f"Approximate: {report['method']}.")
        if "computed_on" in report:  # the dimension the figures were computed with
            manifest = {**manifest, "dim": report["computed_on"]["dim"]}
            computed_on.append(f"{method.label()} ({report['computed_on']['dtype']}, {report['computed_on']['dim']}-D)")
        rows.append({**_row(view.name, method, manifest, report), "K": report["truncated_at"],
                     "queries truncated": report["n_queries_truncated"], "distractors": report["n_distractors"]})
    if computed_on:
        caveats.append("Computed on the full-precision descriptors when the lists were stored: "
                       f"{', '.join(computed_on)}. The bundle carries each query's top-K list, not those "
                       "descriptors (its reduced ones serve the benchmark alone).")
    return _sorted(pd.DataFrame(rows, columns=HEADLINE + DISTRACTOR_COLUMNS)), errors, caveats


def _row(dataset_name: str, method: Method, manifest: dict, report: dict) -> dict:
    published = published_for(dataset_name, method)
    n_params = (manifest.get("backbone") or {}).get("n_params")
    return {
        "method": method.label(),
        "backbone": method.backbone,
        "pooling": method.pooling,
        "whitening": method.whitening,
        "re-ranking": method.rerank,
        **{column: percent(report[name]) for column, name in METRICS.items()},
        **study_columns(dataset_name, method),
        "dim": int(manifest["dim"]),
        "params (M)": None if n_params is None else n_params / 1e6,
        "published mAP": None if published is None else published.map,
        "published source": "" if published is None else published.source,
        "id": loaders.method_id(method),
    }


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("mAP", ascending=False, kind="stable", ignore_index=True)


def evaluate_pending(key: str, pending: list[Method], protocol: str) -> tuple[dict, list[str]]:
    """Evaluate and store what the Overview lacks, one progress bar per method: the reports, the errors."""
    reports, errors = {}, []
    with st.status(f"Evaluating {len(pending)} methods (once: the results are stored in the cache)...",
                   expanded=True) as status:
        for i, method in enumerate(pending, 1):
            bar = st.progress(0.0, text=f"{i}/{len(pending)} {method.label()}")

            def progress(done: int, total: int, what: str, bar=bar, i=i) -> None:
                bar.progress(done / max(total, 1), text=f"{i}/{len(pending)} {what}: {done} / {total} queries")
            try:
                reports[method] = loaders.stored_report(key, method, protocol, progress=progress)
            except (CacheError, ValueError) as exc:
                errors.append(f"{method.label()}: {exc}")
            bar.progress(1.0, text=f"{i}/{len(pending)} {method.label()}: done")
        status.update(label=f"Evaluated {len(pending)} methods", state="complete", expanded=False)
    return reports, errors


def per_query(view, methods: list[Method]) -> pd.DataFrame:
    """Per-query reference AP (percent), one column per method label, indexed by query name."""
    data = {}
    for method in methods:
        report = (stored_topk.report(view, method) if view.distractors
                  else loaders.report(view.key, method, view.protocol))
        data[method.label()] = [percent(row["ap"]) for row in report["per_query"]]
    return pd.DataFrame(data, index=view.query_names)
