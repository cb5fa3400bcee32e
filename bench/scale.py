"""Search and extraction at R1M scale (issue 14), one run, figures printed as JSON lines.

    python -m bench.scale [--n 100000] [--dim 512] [--images 50] [--skip-ray] [--skip-search]

Search, on synthetic clustered unit vectors stored as float16 (N x D, 70 queries):
exact top-1000 search of the queries (`cbir.topk.exact_topk`, 100k rows at a time); a
FAISS HNSW index (M = 32, efConstruction 64, efSearch 128) over the database: build
time and serialized size, persisted with its parameters; the database-side kNN graph
(k = 50) from it: time and recall@50 against exact search on 1,000 sampled items;
diffusion on that graph truncated to each query's top 5,000, per query, and again after
an alpha change (the graph and sub-graphs reused).

Extraction, on `--images` generated 160 x 120 pictures, Lite0 (random weights, the same
cost as ImageNet's) at 128 px on the torch runtime: in-process against Ray Data (local
instance, started before timing) with 1 and 2 model actors, images per second each. The
in-process figure is taken after a warm-up extraction (imports, model); Ray's include its
actors' start and model loading, as a job's would.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

N_QUERIES, DIM, CLUSTERS, TOPK, GRAPH_K, RECALL_SAMPLE, TRUNCATE = 70, 512, 2000, 1000, 50, 1000, 5000
HNSW_M = 32


def report(name: str, **figures) -> None:
    print(json.dumps({"measure": name, **figures}), flush=True)


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres (noise comparable to the centres' spread), float16."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float16)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        x = centres[rng.integers(0, clusters, stop - start)] + 0.7 * rng.standard_normal((stop - start, dim),
                                                                                           dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_search(n: int, dim: int) -> None:
    import faiss

    from cbir.diffusion import DiffusionRanker
    from cbir.ranking import build_index
    from cbir.topk import exact_topk

    data = clustered(n + N_QUERIES, dim, CLUSTERS)
    db16, queries = data[:n], data[n:].astype(np.float32)
    report("data", n=n, dim=dim, dtype="float16", db_mb=round(db16.nbytes / 2**20, 1))

    start = time.perf_counter()
    exact_topk([db16], queries, k=TOPK)
    report("exact search", queries=N_QUERIES, topk=TOPK, seconds=round(time.perf_counter() - start, 3))

    db = db16.astype(np.float32)
    start = time.perf_counter()
    index = build_index(db, "hnsw", hnsw_m=HNSW_M)
    build = time.perf_counter() - start
    index.hnsw.efSearch = 128
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.hnsw"
        faiss.write_index(index, str(path))
        params = {"index": "hnsw", "M": HNSW_M, "efConstruction": index.hnsw.efConstruction, "efSearch": 128}
        (path.with_suffix(".json")).write_text(json.dumps(params))
        size = path.stat().st_size
    report("index build", **params, seconds=round(build, 2), index_mb=round(size / 2**20, 1))

    start = time.perf_counter()
    sims = np.empty((n, GRAPH_K), np.float32)
    nbrs = np.empty((n, GRAPH_K), np.int64)
    for lo in range(0, n, 8192):
        rows = np.arange(lo, min(n, lo + 8192))
        s, i = index.search(db[rows], GRAPH_K + 1)
        not_self = i != rows[:, None]
        keep = np.cumsum(not_self, axis=1) <= GRAPH_K
        s, i = s[not_self & keep].reshape(len(rows), -1), i[not_self & keep].reshape(len(rows), -1)
        sims[rows], nbrs[rows] = s[:, :GRAPH_K], i[:, :GRAPH_K]
    graph_seconds = time.perf_counter() - start
    sample = np.random.default_rng(1).choice(n, RECALL_SAMPLE, replace=False)
    exact = db[sample] @ db.T
    exact[np.arange(RECALL_SAMPLE), sample] = -np.inf
    truth = np.argpartition(-exact, GRAPH_K, axis=1)[:, :GRAPH_K]
    recall = np.mean([len(np.intersect1d(t, nbrs[s])) / GRAPH_K for t, s in zip(truth, sample)])
    report("knn graph", k=GRAPH_K, seconds=round(graph_seconds, 2), recall_at_50=round(float(recall), 4),
           sample=RECALL_SAMPLE)

    start = time.perf_counter()
    ranker = DiffusionRanker(db, k=GRAPH_K, neighbours=(sims, nbrs))
    graph_build = time.perf_counter() - start
    start = time.perf_counter()
    ranker.rank(queries, alpha=0.99, truncate=TRUNCATE)
    first = time.perf_counter() - start
    start = time.perf_counter()
    ranker.rank(queries, alpha=0.9, truncate=TRUNCATE)
    again = time.perf_counter() - start
    report("truncated diffusion", truncate=TRUNCATE, graph_seconds=round(graph_build, 2),
           ms_per_query=round(1000 * first / N_QUERIES, 1),
           ms_per_query_after_alpha_change=round(1000 * again / N_QUERIES, 1))


def bench_ray(n_images: int) -> None:
    from PIL import Image

    from cbir.data import load_dataset
    from cbir.distributed import RayEngine, start_ray
    from cbir.extraction import extract
    from cbir.method import Method

    rng = np.random.default_rng(0)
    methods = [Method(pooling="gem", size=128, weights="random")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        for i in range(n_images):
            (root / f"c{i % 5}").mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{i % 5}" / f"{i:04d}.jpg", quality=90)
        dataset = load_dataset("folder", root, queries=1)
        extract(dataset, methods, Path(tmp) / "warm-up", runtime="torch")  # imports, weights: not timed
        start = time.perf_counter()
        extract(dataset, methods, Path(tmp) / "local", runtime="torch")
        local = time.perf_counter() - start
        n = len(dataset.images)  # each query is a database image, described once
        report("extraction in-process", images=n, images_per_second=round(n / local, 2))
        start = time.perf_counter()
        start_ray(None)
        report("ray start", seconds=round(time.perf_counter() - start, 2))
        for actors in (1, 2):
            start = time.perf_counter()
            extract(dataset, methods, Path(tmp) / f"ray{actors}", runtime="torch", engine=RayEngine(actors=actors))
            seconds = time.perf_counter() - start
            report("extraction ray", actors=actors, images=n, images_per_second=round(n / seconds, 2),
                   ratio_to_in_process=round(local / seconds, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="database size (the issue's target is 1,000,000)")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--images", type=int, default=50, help="images for the extraction comparison")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    if not args.skip_search:
        bench_search(args.n, args.dim)
    if not args.skip_ray:
        bench_ray(args.images)


if __name__ == "__main__":
    main()
