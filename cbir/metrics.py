"""Retrieval metrics with the semantics of the landmark-retrieval literature (numpy only).

`compute_map` follows the revisitop / cnnimageretrieval reference evaluation exactly:
junk is removed from the ranked list before scoring, AP is the reference "trapezoid"
AP, mAP averages over queries that have at least one positive, and mP@k is the
reference's (not plain P@k). It is vectorised so the dashboard can recompute it on
every slider move (55 queries x 6392 images: about 20 ms).

Conventions: `ranks` is an int array (n_queries, n_db) whose row q lists database
indices by descending similarity (revisitop's own code takes the transpose). A row may
be a truncated top-k list: positives missing from it count as never retrieved.
Rows are assumed to hold each index at most once. `gnd` is a list (one per query)
of {"ok": positives, "junk": ignored images}, indices into the database.

The seed study's "mAP@k" (`seed_map_at_k`) is a different metric; it is offered,
clearly named, so the seed's table can be reproduced column for column.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

POSITIVE, JUNK = 1, -1
CHUNK_ELEMENTS = 1 << 21


def _as_ranks(ranks, gnd) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be 2-D (n_queries, n_db), got shape {ranks.shape}")
    if ranks.size and not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must hold integer database indices, got dtype {ranks.dtype}")
    if len(ranks) != len(gnd):
        raise ValueError(f"ranks has {len(ranks)} rows but the ground truth has {len(gnd)} queries")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks holds negative database indices (padding from a search "
                         "with fewer results than k?)")
    return ranks.astype(np.int64, copy=False)


def _ground_truth(gnd) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positives and junk of each query as int64 arrays; an image may not be both."""
    parsed = []
    for q, g in enumerate(gnd):
        try:
            ok = np.asarray(g["ok"], dtype=np.int64).ravel()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"ground truth of query {q}: no valid 'ok' index list ({exc})") from exc
        junk = np.asarray(g.get("junk", ()), dtype=np.int64).ravel()
        if (ok.size and ok.min() < 0) or (junk.size and junk.min() < 0):
            raise ValueError(f"ground truth of query {q}: negative image index")
        both = np.intersect1d(ok, junk)
        if both.size:
            raise ValueError(f"ground truth of query {q}: images {both[:5].tolist()} are both "
                             "positive and junk")
        parsed.append((ok, junk))
    return parsed


def _scored_chunks(ranks, gnd):
    """Yield (query slice, is_positive, rank after junk removal, hit number, n_positives).

    For each ranked item: `is_positive` marks positives; `kept_rank` is its 0-based rank
    once junk is dropped from the list; `hit` is how many positives precede it (j in the
    reference). Junk entries are never positive, so their kept_rank is never used.
    """
    ranks = _as_ranks(ranks, gnd)
    parsed = _ground_truth(gnd)
    n_q, n_cols = ranks.shape
    width = max([int(ranks.max()) + 1 if ranks.size else 0]
                + [int(a.max()) + 1 for ok, junk in parsed for a in (ok, junk) if a.size])
    n_pos = np.array([len(ok) for ok, _ in parsed], dtype=np.int64)
    step = max(1, CHUNK_ELEMENTS // max(width, n_cols, 1))
    for start in range(0, n_q, step):
        rows = slice(start, min(start + step, n_q))
        labels = np.zeros((rows.stop - start, width), dtype=np.int8)
        for i, (ok, junk) in enumerate(parsed[rows]):
            labels[i, junk] = JUNK
            labels[i, ok] = POSITIVE
        ranked = np.take_along_axis(labels, ranks[rows], axis=1)
        is_positive = ranked == POSITIVE
        kept_rank = np.cumsum(ranked != JUNK, axis=1) - 1
        hit = np.cumsum(is_positive, axis=1) - 1
        yield rows, is_positive, kept_rank, hit, n_pos[rows]


def compute_map(ranks, gnd, kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """Reference mAP, per-query AP and reference mP@k (revisitop `compute_map`).

    AP: with n positives and the j-th positive (0-based) at 0-based rank r after junk
    removal, AP = sum_j (p0 + p1) / (2 n), p0 = 1 if r == 0 else j / r, p1 = (j+1)/(r+1).
    mP@k: kq = min(1-based rank of the last positive, k), #(positives within kq) / kq; a
    positive missing from a truncated row ranks after it (so kq = k): exact when the row keeps at
    least k items after junk removal, a lower bound otherwise. Queries without positives get
    NaN and are left out of the means. Where the reference would fail (a truncated list with
    no positive in it) AP and mP@k are 0.

    Returns dict(map, aps (n_q,), mpr (len(kappas),) mean mP@k, prs (n_q, len(kappas))).
    """
    kappas = [int(k) for k in kappas]
    if any(k < 1 for k in kappas):
        raise ValueError(f"kappas must be positive, got {kappas}")
    aps = np.full(len(gnd), np.nan)
    prs = np.full((len(gnd), len(kappas)), np.nan)
    for rows, is_positive, kept_rank, hit, n_pos in _scored_chunks(ranks, gnd):
        r = np.where(is_positive, kept_rank, 1).astype(np.float64)
        j = hit.astype(np.float64)
        p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1))
        p1 = (j + 1) / (r + 1)
        area = np.where(is_positive, p0 + p1, 0.0).sum(axis=1)
        has_pos = n_pos > 0
        aps[rows] = np.where(has_pos, area / (2 * np.maximum(n_pos, 1)), np.nan)
        one_based = np.where(is_positive, kept_rank + 1, 0)
        last = one_based.max(axis=1) if one_based.shape[1] else np.zeros(len(n_pos), np.int64)
        # A positive missing from a (truncated) row is ranked after it: the last positive is then
        # beyond the row, so kq is k, not the last positive the row holds.
        last = np.where(is_positive.sum(axis=1) < n_pos, np.iinfo(np.int64).max, last)
        for c, k in enumerate(kappas):
            kq = np.minimum(last, k)
            within = (is_positive & (one_based <= kq[:, None])).sum(axis=1)
            prs[rows, c] = np.where(has_pos, within / np.maximum(kq, 1), np.nan)
    scored = ~np.isnan(aps)
    if not scored.any():
        return dict(map=float("nan"), aps=aps, mpr=np.full(len(kappas), np.nan), prs=prs)
    return dict(map=float(aps[scored].mean()), aps=aps, mpr=prs[scored].mean(axis=0), prs=prs)


def seed_ap_at_k(ranks, gnd, k: int | None, remove_junk: bool = True) -> np.ndarray:
    """Per-query AP@k of the seed study: (1 / GTP) * sum_{i <= k} P@i * rel@i.

    GTP is the number of positives within the top k (the only reading under which the
    seed's "92% mAP@10 against 60% mAP" is possible); a query with no positive in its
    top k scores 0. k=None scores the whole dataset: GTP = all positives of the query,
    which is plain non-interpolated AP (positives missing from a truncated row add 0).
    Junk is removed first, as in the reference evaluation, unless remove_junk=False
    (then junk counts as a miss, which is what code without junk handling computes).
    Queries without positives get NaN.
    """
    if k is not None and int(k) < 1:
        raise ValueError(f"k must be positive or None, got {k}")
    if not remove_junk:
        gnd = [{"ok": g["ok"]} for g in gnd]
    aps = np.full(len(gnd), np.nan)
    for rows, is_positive, kept_rank, hit, n_pos in _scored_chunks(ranks, gnd):
        counted = is_positive if k is None else is_positive & (kept_rank < int(k))
        precision = (hit + 1) / np.maximum(kept_rank + 1.0, 1.0)  # junk before any kept item: never counted
        total = np.where(counted, precision, 0.0).sum(axis=1)
        gtp = n_pos if k is None else counted.sum(axis=1)
        aps[rows] = np.where(gtp > 0, total / np.maximum(gtp, 1), 0.0)
        aps[rows] = np.where(n_pos > 0, aps[rows], np.nan)
    return aps


def seed_map_at_k(ranks, gnd, k: int | None, remove_junk: bool = True) -> tuple[float, np.ndarray]:
    """The seed study's mAP@k (see `seed_ap_at_k`): mean over queries with positives, per-query array."""
    aps = seed_ap_at_k(ranks, gnd, k, remove_junk=remove_junk)
    scored = ~np.isnan(aps)
    return (float(aps[scored].mean()) if scored.any() else float("nan")), aps


def precision_at_k_curves(ranks, gnd, kmax: int) -> np.ndarray:
    """Plain P@k for k = 1..kmax after junk removal, (n_q, kmax); NaN rows for queries without positives.

    Items missing from a truncated row count as misses.
    """
    if int(kmax) < 1:
        raise ValueError(f"kmax must be positive, got {kmax}")
    kmax = int(kmax)
    curves = np.full((len(gnd), kmax), np.nan)
    ks = np.arange(1, kmax + 1)
    for rows, is_positive, kept_rank, hit, n_pos in _scored_chunks(ranks, gnd):
        hits_at = np.zeros((len(n_pos), kmax + 1), dtype=np.int64)
        q, r = np.nonzero(is_positive & (kept_rank < kmax))
        np.add.at(hits_at, (q, kept_rank[q, r] + 1), 1)
        curve = np.cumsum(hits_at, axis=1)[:, 1:] / ks
        curves[rows] = np.where((n_pos > 0)[:, None], curve, np.nan)
    return curves


def pr_curves(ranks, gnd) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query (recall, precision) after junk removal, the curve the reference AP integrates.

    For the j-th positive at rank r: the points (j/n, p0) and ((j+1)/n, p1) of the
    trapezoid AP, so `np.trapezoid(precision, recall)` equals the query's AP. Queries
    without positives (or none retrieved) get empty arrays.
    """
    curves: list[tuple[np.ndarray, np.ndarray]] = []
    for rows, is_positive, kept_rank, hit, n_pos in _scored_chunks(ranks, gnd):
        for i in range(len(n_pos)):
            r = kept_rank[i][is_positive[i]].astype(np.float64)
            if not r.size:
                curves.append((np.empty(0), np.empty(0)))
                continue
            j = np.arange(r.size, dtype=np.float64)
            p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1))
            p1 = (j + 1) / (r + 1)
            recall = np.column_stack([j, j + 1]).ravel() / n_pos[i]
            precision = np.column_stack([p0, p1]).ravel()
            curves.append((recall, precision))
    return curves


DEFINITIONS = {
    "mAP": "reference full-list mAP (revisitop): junk removed, trapezoid AP, mean over "
           "queries with positives. The headline figure.",
    "mP@1": "reference mP@1: kq = min(rank of last positive, 1), #positives in top kq / kq",
    "mP@5": "reference mP@5 (as mP@1 with k = 5); not plain P@5",
    "mP@10": "reference mP@10 (as mP@1 with k = 10); not plain P@10",
    "mAP@10": "seed study's mAP@10 = seed_mAP@10: AP@10 = sum_{i<=10} P@i rel@i / "
              "(positives within the top 10), 0 if none; junk removed",
    "mAP@100": "seed study's mAP@100 = seed_mAP@100 (as mAP@10 with k = 100)",
    "seed_mAP@10": "same as mAP@10",
    "seed_mAP@100": "same as mAP@100",
    "seed_mAP": "seed study's 'mAP (at all dataset)': non-interpolated AP over all "
                "positives (sum of P@i at each positive / #positives); junk removed",
    "per_query.ap": "reference AP of each query (null: the query has no positives)",
}


def _fraction(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def check_protocol(dataset, protocol: str) -> list[dict]:
    """The ground truth of `protocol`, after checking it exists and matches the queries."""
    if protocol not in dataset.gnd:
        raise ValueError(f"dataset {dataset.name!r} has no protocol {protocol!r}; "
                         f"available: {sorted(dataset.gnd)}")
    gnd = dataset.gnd[protocol]
    if len(gnd) != len(dataset.queries):
        raise ValueError(f"dataset {dataset.name!r}: {len(dataset.queries)} queries but "
                         f"{len(gnd)} ground-truth entries for protocol {protocol!r}")
    return gnd


def query_metrics(ranks, gnd, dataset) -> dict[str, np.ndarray]:
    """Per-query values every report figure is a mean of (NaN: no positives): reference AP,
    reference mP@1/5/10, the seed's AP@10, AP@100 and AP over the whole list."""
    ranks = np.asarray(ranks)
    if ranks.ndim == 2 and ranks.size and ranks.max() >= len(dataset.images):
        raise ValueError(f"ranks refer to image {int(ranks.max())} but dataset "
                         f"{dataset.name!r} has {len(dataset.images)} images")
    reference = compute_map(ranks, gnd, kappas=(1, 5, 10))
    return {"ap": reference["aps"], "mp": reference["prs"],
            **{f"seed{k}": seed_map_at_k(ranks, gnd, k)[1] for k in (10, 100, None)}}


def _mean(values: np.ndarray) -> float | None:
    scored = ~np.isnan(values)
    return float(values[scored].mean(axis=0)) if scored.any() else None


def summarise(metrics: dict[str, np.ndarray], dataset, protocol: str) -> dict:
    """The report of `evaluation_report` from per-query values (possibly computed in blocks)."""
    gnd = dataset.gnd[protocol]
    scored = ~np.isnan(metrics["ap"])
    mp = metrics["mp"][scored].mean(axis=0) if scored.any() else [None] * 3
    return {
        "protocol": protocol,
        "dataset": dataset.name,
        "n_images": len(dataset.images),
        "n_queries": len(dataset.queries),
        "n_queries_scored": int(scored.sum()),
        "mAP": _mean(metrics["ap"]),
        "mP@1": None if mp[0] is None else float(mp[0]),
        "mP@5": None if mp[1] is None else float(mp[1]),
        "mP@10": None if mp[2] is None else float(mp[2]),
        "mAP@10": _mean(metrics["seed10"]),
        "mAP@100": _mean(metrics["seed100"]),
        "seed_mAP@10": _mean(metrics["seed10"]),
        "seed_mAP@100": _mean(metrics["seed100"]),
        "seed_mAP": _mean(metrics["seedNone"]),
        "per_query": [{"query": q.name, "ap": _fraction(ap), "positives": len(g["ok"])}
                      for q, ap, g in zip(dataset.queries, metrics["ap"], gnd)],
        "definitions": DEFINITIONS,
    }


def evaluation_report(ranks, dataset, protocol: str) -> dict:
    """The JSON the CLI prints for one ranking: reference metrics plus the seed's columns.

    All metrics are fractions in [0, 1]; NaN (no query with positives) becomes null.
    """
    return summarise(query_metrics(ranks, check_protocol(dataset, protocol), dataset), dataset, protocol)
