"""Re-ranking against database + distractors, with neither stacked whole: query expansion
and truncated diffusion over exact top lists, the diffusion graph from `cbir.annindex`.

- `qe` / `aqe`: as `cbir.rerank.query_expansion`, with the query's top `qe_n` taken by exact
  search over the parts (`cbir.topk.exact_topk`) and their rows gathered from the parts;
  the expanded query is searched exactly again. Nothing is approximate.
- `diffusion`: each query's top T (`truncate`) items of exact search, the sub-graph among
  them of the mutual kNN graph of all items (`cbir.diffusion.mutual_graph` on the stored
  neighbour lists) re-normalised, and the system solved as `DiffusionRanker` does with
  truncation (`cbir.diffusion.solve_with_basis`, Lanczos basis kept per query so an alpha
  change re-solves in milliseconds). The graph is approximate when the index is (its recall
  is recorded); the truncation to T is the reference's approximation for large databases.
  Within the top T items are ordered by diffusion score, ties and unreached items in
  initial order; the items beyond T follow in initial order. The stored score is the
  diffusion score, 0 for items it did not reach.

k-reciprocal re-ranking and FSR need the whole database's neighbour sets or spectrum and
are refused against distractors.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .annindex import AnnGraph, AnnParams, descriptor_stamp, ensure_graph, stacked_rows
from .diffusion import mutual_graph, normalize_graph, solve_with_basis, unit_rows, vectors_from_similarities
from .method import Method
from .rerank import AQE_EXPONENT
from .topk import DEFAULT_TOPK, exact_topk

RERANKINGS_AT_SCALE = ("none", "qe", "aqe", "diffusion")
DEFAULT_TRUNCATE = 5000


def check_rerank_at_scale(rerank: str) -> None:
    """ValueError (one line) for a re-ranking not evaluated against distractors."""
    if rerank not in RERANKINGS_AT_SCALE:
        raise ValueError(f"--rerank {rerank} with distractors is not supported: it needs the neighbour sets or "
                         f"spectrum of the whole stacked database; choose one of {', '.join(RERANKINGS_AT_SCALE)}")


def expanded_queries(parts, queries: np.ndarray, n: int, exponent: float) -> np.ndarray:
    """`cbir.rerank.query_expansion` over the stacked parts: L2-normalised `q + sum_i w_i x_i`
    over the query's exact top `n`, `w_i = max(s_i, 0)^exponent` (1 with exponent 0)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    queries = unit_rows(queries, "queries")
    ids, sims = exact_topk(parts, queries, k=n)
    weights = np.maximum(sims, 0.0) ** exponent if exponent else np.ones_like(sims)
    neighbours = stacked_rows(parts, ids.ravel()).reshape(*ids.shape, -1)
    return unit_rows(queries + np.einsum("qn,qnd->qd", weights, neighbours), "expanded queries")


class TruncatedDiffusion:
    """Diffusion of each query over its top T items only, on sub-graphs of one mutual kNN graph
    built from stored neighbour lists (n, >= k) of all items.

    The sub-graphs, query vectors and Lanczos bases of the last query batch are kept, so an
    alpha change on the same instance re-solves without rebuilding them (bench.scale measures
    it; `scale_ranking` ranks once per evaluation, and the Diffusion lab does not serve
    evaluations against distractors).
    """

    def __init__(self, sims: np.ndarray, ids: np.ndarray, k: int = 50, gamma: float = 3.0):
        if np.shape(ids)[1] < k:
            raise ValueError(f"the stored graph has {np.shape(ids)[1]} neighbours per item, fewer than k={k}")
        self.k, self.gamma = k, gamma
        self.A = mutual_graph(np.asarray(sims)[:, :k], np.asarray(ids)[:, :k], gamma)
        self._batch: dict | None = None

    def _prepared(self, top_ids: np.ndarray, top_sims: np.ndarray, kq: int, truncate: int) -> list[dict]:
        """Per query: its top T items (sorted), their positions in the initial order, y and the
        re-normalised sub-graph; from the cache when the batch is the last one."""
        digest = hashlib.blake2b(f"{top_ids.shape} {kq} {truncate}".encode(), digest_size=16)
        digest.update(np.ascontiguousarray(top_ids, np.int64))
        digest.update(np.ascontiguousarray(top_sims, np.float32))
        if self._batch is not None and self._batch["key"] == digest.digest():
            return self._batch["queries"]
        prepared = []
        for ids, sims in zip(top_ids[:, :truncate], top_sims[:, :truncate]):
            order = np.argsort(ids, kind="stable")
            items = ids[order]
            y = vectors_from_similarities(sims[order][None, :], kq, self.gamma)
            prepared.append({"items": items, "position": np.argsort(order), "y": y,
                             "S": normalize_graph(self.A[items][:, items]), "basis": None})
        self._batch = {"key": digest.digest(), "queries": prepared}
        return prepared

    def rank(self, top_ids: np.ndarray, top_sims: np.ndarray, alpha: float = 0.99, kq: int = 10,
             truncate: int = DEFAULT_TRUNCATE, k: int = DEFAULT_TOPK, solver: str = "krylov", tol: float = 1e-6
             ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k `(ids, diffusion scores)` from each query's exact top lists `top_ids`, `top_sims`
        (n_q, >= max(truncate, k)), by descending initial similarity."""
        top_ids, top_sims = np.asarray(top_ids, np.int64), np.asarray(top_sims, np.float32)
        if truncate < 1:
            raise ValueError(f"truncate must be at least 1, got {truncate}")
        width = top_ids.shape[1]
        truncate, k = min(truncate, width), min(k, width)
        ids = np.empty((len(top_ids), k), np.int64)
        scores = np.zeros((len(top_ids), k), np.float32)
        for q, query in enumerate(self._prepared(top_ids, top_sims, kq, truncate)):
            f, _, query["basis"] = solve_with_basis(query["S"], query["y"], alpha, solver, tol, basis=query["basis"])
            head = np.maximum(f[query["position"], 0], 0.0)  # in initial order
            moved = np.argsort(-head, kind="stable")
            ranked = np.concatenate([top_ids[q, :truncate][moved], top_ids[q, truncate:]])[:k]
            ids[q] = ranked
            scores[q, :min(k, truncate)] = head[moved][:k]
        return ids, scores


def rerank_topk(method: Method, parts, queries: np.ndarray, k: int = DEFAULT_TOPK,
                diffusion: TruncatedDiffusion | None = None, truncate: int = DEFAULT_TRUNCATE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k `(ids, scores)` of `method.rerank` over the stacked parts; `diffusion` holds the graph."""
    check_rerank_at_scale(method.rerank)
    if method.rerank == "none":
        return exact_topk(parts, queries, k=k)
    if method.rerank in ("qe", "aqe"):
        exponent = AQE_EXPONENT if method.rerank == "aqe" else 0.0
        return exact_topk(parts, expanded_queries(parts, queries, method.qe_n, exponent), k=k)
    if diffusion is None or (diffusion.k, diffusion.gamma) != (method.k, method.gamma):
        raise ValueError(f"diffusion against distractors needs the graph of k={method.k}, gamma={method.gamma}")
    top_ids, top_sims = exact_topk(parts, unit_rows(queries, "queries"), k=max(k, truncate))
    return diffusion.rank(top_ids, top_sims, method.alpha, method.kq, truncate, k)


def ann_dir(distractor_entry, dataset) -> Path:
    """Where the index over `dataset`'s database + these distractors lives: the distractors' entry."""
    from .cache import dataset_key

    return Path(distractor_entry.path) / f"ann-{dataset_key(dataset)}"


def entry_graph(entry, distractor_entry, dataset, params: AnnParams, progress=None) -> AnnGraph:
    """The kNN graph over the database then the distractors of two cache entries (stamped by
    their manifests' checksums), stored in the distractors' entry."""
    stamp = descriptor_stamp(entry.manifest["files"]["db.npy"], distractor_entry.manifest["files"]["db.npy"],
                             shapes=[entry.db.shape, distractor_entry.db.shape])
    return ensure_graph(ann_dir(distractor_entry, dataset) / params.slug(), [entry.db, distractor_entry.db],
                        stamp, params, progress)


def diffusion_label(method: Method, graph: AnnGraph, truncate: int) -> str:
    """The method's label with what was approximated: "... +diffusion(a=0.99, k=50) truncated to
    each query's top 5000, approximate kNN graph (HNSW ...; recall@50 0.973 on 1000 sampled items)"."""
    return f"{method.label()} truncated to each query's top {truncate}, {graph.describe()}"


def scale_ranking(method: Method, entry, distractor_entry, dataset, ann: AnnParams | None = None,
                  truncate: int | None = None, progress=None):
    """`(rank(parts, queries, k), report fields)` of `method` over the database and distractor
    entries (the file name of its lists is `ranking_suffix`'s); diffusion's graph comes from (or
    goes to) the cache, and its report fields name the graph and the truncation (`method`,
    `truncate`, `ann_graph`)."""
    check_rerank_at_scale(method.rerank)
    if method.rerank == "none":
        return exact_topk, {}
    if method.rerank != "diffusion":
        return (lambda parts, queries, k: rerank_topk(method, parts, queries, k)), {}
    ann = ann or AnnParams(k=method.k)
    truncate = truncate or DEFAULT_TRUNCATE
    if ann.k != method.k:
        raise ValueError(f"the kNN graph has k={ann.k} but diffusion asks for k={method.k}")
    graph = entry_graph(entry, distractor_entry, dataset, ann, progress)
    diffusion = TruncatedDiffusion(graph.sims, graph.ids, method.k, method.gamma)
    details = {"method": diffusion_label(method, graph, truncate), "truncate": truncate,
               "ann_graph": {"description": graph.describe(), "status": graph.status,
                             "recall": graph.record["graph"]["recall"], "params": graph.record["params"],
                             "index": graph.record["index"],
                             "directory": str(ann_dir(distractor_entry, dataset) / ann.slug())}}
    return (lambda parts, queries, k: rerank_topk(method, parts, queries, k, diffusion, truncate)), details


def ranking_suffix(method: Method, ann: AnnParams | None = None, truncate: int | None = None) -> str:
    """The top-K file-name part of a re-ranking against distractors: "" for exact search,
    the re-ranking's parameters, and for diffusion its truncation and graph index."""
    from .evaluation import rerank_slug

    if method.rerank == "none":
        return ""
    if method.rerank != "diffusion":
        return f"-{rerank_slug(method)}"
    ann = ann or AnnParams(k=method.k)
    search = {"hnsw": f"-ef{ann.ef_search}", "ivf": f"-np{ann.nprobe}"}.get(ann.kind, "")
    return f"-{rerank_slug(method)}-T{truncate or DEFAULT_TRUNCATE}-{ann.slug()}{search}"
