"""Stored top-K evaluation: each query keeps only its K best items (with scores) and the
ranks of its positives and junk among them.

Against a million distractors a full ranking is 70 x 1M indices per method; the report,
galleries and curves need only the head of each list and where the positives fall. mAP,
mP@k and the seed study's columns are computed from those ranks alone. When every
positive of every query lies within the top K the figures equal the full-ranking ones;
otherwise the missing positives count as never retrieved (a lower bound), and the report
says "truncated at K" and how many queries it affects.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import check_protocol, compute_map, seed_map_at_k, summarise

DEFAULT_TOPK = 1000
SEARCH_BLOCK = 100_000  # rows searched at once: 100k x 2048 float32 is 800 MB


@dataclass
class TopK:
    """Top-K lists of a ranking over `n_ranked` items and the ground truth placed in them."""
    ids: np.ndarray              # (n_q, K) item indices by descending score
    scores: np.ndarray           # (n_q, K) their scores
    positive_ranks: list         # per query, 0-based ranks of its positives found in the top K
    junk_ranks: list             # per query, 0-based ranks of its junk found in the top K
    n_positives: np.ndarray      # per query, all its positives (found or not)
    n_ranked: int
    extra: dict = field(default_factory=dict)  # further named arrays stored with it (`save_topk`)

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def truncated(self) -> np.ndarray:
        """Per query: some of its positives fall beyond the top K."""
        found = np.array([len(r) for r in self.positive_ranks], dtype=np.int64)
        return found < self.n_positives


def place_ground_truth(ids: np.ndarray, scores: np.ndarray, gnd, n_ranked: int) -> TopK:
    """The `TopK` of top-K lists `ids` (n_q, K): where each query's positives and junk fall."""
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 2 or len(ids) != len(gnd):
        raise ValueError(f"top-K ids must be (n_queries={len(gnd)}, K), got shape {ids.shape}")
    positives, junk = [], []
    for row, g in zip(ids, gnd):
        positives.append(np.flatnonzero(np.isin(row, np.asarray(g["ok"], np.int64))))
        junk.append(np.flatnonzero(np.isin(row, np.asarray(g.get("junk", ()), np.int64))))
    return TopK(ids, np.asarray(scores, np.float32), positives, junk,
                np.array([len(g["ok"]) for g in gnd], dtype=np.int64), int(n_ranked))


def _merged(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of candidate lists by descending score, ties to the lower index."""
    order = np.stack([np.lexsort((i, -s.astype(np.float64))) for i, s in zip(ids, scores)])[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def exact_topk(parts, queries: np.ndarray, k: int = DEFAULT_TOPK,
               block: int = SEARCH_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of `queries` over the rows of `parts` stacked in order
    (e.g. the database, then the distractors), without stacking them: `block` rows at a
    time are searched (in float32, so float16 parts never exist whole in float32) and
    the running lists merged. Ties go to the lower index, as in a stable sort."""
    from .ranking import search

    queries = np.asarray(queries, np.float32)
    ids = np.zeros((len(queries), 0), np.int64)
    scores = np.zeros((len(queries), 0), np.float32)
    offset = 0
    for part in parts:
        for start in range(0, len(part), block):
            rows = part[start:start + block]
            s, i = search(rows, queries, topk=min(k, len(rows)))
            ids, scores = _merged(np.concatenate([ids, i + offset + start], axis=1),
                                  np.concatenate([scores, s], axis=1), k)
        offset += len(part)
    if offset == 0:
        raise ValueError("cannot rank against an empty database")
    return ids, scores


def position_lists(topk: TopK):
    """The ranking restated over positions: row q is 0..K-1, its positives the positions
    they hold, the ones beyond K given positions K, K+1, ... that no row reaches."""
    k = topk.k
    ranks = np.broadcast_to(np.arange(k, dtype=np.int64), (len(topk.ids), k))
    gnd = []
    for found, junk, n in zip(topk.positive_ranks, topk.junk_ranks, topk.n_positives):
        missing = k + np.arange(int(n) - len(found), dtype=np.int64)
        gnd.append({"ok": np.concatenate([np.asarray(found, np.int64), missing]),
                    "junk": np.asarray(junk, np.int64)})
    return ranks, gnd


def topk_report(topk: TopK, dataset, protocol: str, name: str | None = None) -> dict:
    """The evaluation report (as `cbir.evaluation.blocked_report`) from the stored top-K only,
    with `truncated_at` (K), `n_queries_truncated` and a `mAP_label` saying so."""
    gnd = check_protocol(dataset, protocol)
    if [len(g["ok"]) for g in gnd] != topk.n_positives.tolist():
        raise ValueError(f"the stored top-K lists were made with another ground truth than "
                         f"{dataset.name!r} protocol {protocol!r}")
    ranks, position_gnd = position_lists(topk)
    reference = compute_map(ranks, position_gnd, kappas=(1, 5, 10))
    # The seed's AP@k counts the positives within the top k: lists shorter than k (and than the
    # whole ranking) cannot say how many there are, so that column is left empty (null).
    complete = topk.k >= topk.n_ranked
    metrics = {"ap": reference["aps"], "mp": reference["prs"],
               **{f"seed{k}": seed_map_at_k(ranks, position_gnd, k)[1] if k is None or k <= topk.k or complete
                  else np.full(len(ranks), np.nan) for k in (10, 100, None)}}
    report = summarise(metrics, dataset, protocol)
    truncated = int((topk.truncated & (topk.n_positives > 0)).sum())
    report.update({
        "dataset_name": name or dataset.display_name(),
        "n_ranked": topk.n_ranked,
        "truncated_at": topk.k,
        "n_queries_truncated": truncated,
        "mAP_label": (f"mAP (truncated at K={topk.k}: {truncated} queries have positives beyond it, "
                      "counted as never retrieved)") if truncated else "mAP",
    })
    return report


TOPK_ARRAYS = ("ids", "scores", "pos", "pos_off", "junk", "junk_off", "n_positives", "n_ranked")


def save_topk(path: Path, topk: TopK) -> None:
    """One .npz; the ragged rank lists are stored flat with offsets, `topk.extra` beside them."""
    from .cache import atomic_write_bytes

    def flat(lists):
        return (np.concatenate([np.asarray(r, np.int64) for r in lists] or [np.zeros(0, np.int64)]),
                np.cumsum([0] + [len(r) for r in lists]))

    pos, pos_off = flat(topk.positive_ranks)
    junk, junk_off = flat(topk.junk_ranks)
    buffer = io.BytesIO()
    np.savez(buffer, ids=topk.ids, scores=topk.scores, pos=pos, pos_off=pos_off, junk=junk,
             junk_off=junk_off, n_positives=topk.n_positives, n_ranked=np.int64(topk.n_ranked), **topk.extra)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_topk(path: Path) -> TopK:
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            def split(values, offsets):
                return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            return TopK(z["ids"], z["scores"], split(z["pos"], z["pos_off"]), split(z["junk"], z["junk_off"]),
                        z["n_positives"], int(z["n_ranked"]),
                        {name: z[name] for name in z.files if name not in TOPK_ARRAYS})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a stored top-K evaluation ({exc})") from exc
