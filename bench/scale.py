"""Search and extraction at R1M scale (issue 14), one run, figures printed as JSON lines.

    python -m bench.scale [--n 100000] [--dim 512] [--images 50] [--skip-ray] [--skip-search] [--keep DIR]

Search, on synthetic clustered unit vectors stored as float16 (N x D: a 6,322-row database
then N - 6,322 distractors, as two parts never stacked; 70 queries), through the library:
exact top-1000 search of the queries over both parts (`cbir.topk.exact_topk`, 100k rows at a
time); the persisted FAISS index and kNN graph (`cbir.annindex.ensure_graph`: HNSW M = 32,
efConstruction 64, efSearch 128, float16 vectors kept float16; k = 50): index build, graph
search, recall@50 against exact search on 1,000 sampled items, files' size, and the reload
(checksums verified); the mutual graph from the stored lists and truncated diffusion
(`cbir.scalererank.TruncatedDiffusion`: each query's exact top 5,000, its sub-graph, the
solve) per query, and again after an alpha change (sub-graphs and Lanczos bases reused).
Each line carries the process's peak resident memory so far. `--keep DIR` stores the index
there (a rerun loads it) instead of a temporary folder.

Extraction, on `--images` generated 160 x 120 pictures, Lite0 (random weights, the same
cost as ImageNet's) at 128 px on the torch runtime, or with `--photos DIR` the first
`--images` Paris6k-250 photos at 1024 px (ImageNet Lite0, four poolings, the default CPU
runtime): in-process against Ray Data (local instance, started before timing) with 1 and 2
model actors, images per second each, of the whole job and at steady state (from a second
run on a quarter of the images). The in-process figure is taken after a warm-up extraction
(imports, model, conversion); Ray's whole-job figure includes its actors' start and model
loading, as a job's would.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

N_QUERIES, DIM, CLUSTERS, TOPK, GRAPH_K, RECALL_SAMPLE, TRUNCATE = 70, 512, 2000, 1000, 50, 1000, 5000
DATABASE = 6322  # rParis6k's database; the other rows play the distractors


def report(name: str, **figures) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"measure": name, **figures, "peak_rss_mb": round(peak_mb)}), flush=True)


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


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def bench_search(n: int, dim: int, keep: Path | None) -> None:
    from cbir.annindex import AnnParams, array_stamp, ensure_graph
    from cbir.scalererank import TruncatedDiffusion
    from cbir.topk import exact_topk

    data = clustered(n + N_QUERIES, dim, CLUSTERS)
    database = min(DATABASE, n // 2)
    parts, queries = [data[:database], data[database:n]], data[n:].astype(np.float32)
    report("data", n=n, database=database, distractors=n - database, dim=dim, dtype="float16",
           db_mb=round(n * dim * 2 / 2**20, 1))

    _, seconds = timed(lambda: exact_topk(parts, queries, k=TOPK))
    report("exact search", queries=N_QUERIES, topk=TOPK, seconds=round(seconds, 3))

    stamp, seconds = timed(lambda: array_stamp(*parts))
    report("descriptor stamp", seconds=round(seconds, 2))
    params = AnnParams(kind="hnsw", k=GRAPH_K, recall_sample=RECALL_SAMPLE)
    with tempfile.TemporaryDirectory() as tmp:
        folder = (keep or Path(tmp)) / f"ann-{params.slug()}"
        graph, seconds = timed(lambda: ensure_graph(folder, parts, stamp, params))
        record = graph.record
        report("index and knn graph", status=graph.status, **{k: v for k, v in record["params"].items()},
               storage=record["index"]["storage"], build_seconds=record["index"]["build_seconds"],
               graph_search_seconds=record["graph"]["search_seconds"], recall=record["graph"]["recall"],
               total_seconds=round(seconds, 2), index_mb=round(record["index"]["bytes"] / 2**20, 1),
               graph_mb=round(record["graph"]["bytes"] / 2**20, 1))
        graph, seconds = timed(lambda: ensure_graph(folder, parts, stamp, params))
        report("knn graph reload", status=graph.status, seconds=round(seconds, 2))

    diffusion, seconds = timed(lambda: TruncatedDiffusion(graph.sims, graph.ids, k=GRAPH_K))
    report("mutual graph", edges=diffusion.A.nnz // 2, seconds=round(seconds, 2))
    (top_ids, top_sims), search_seconds = timed(lambda: exact_topk(parts, queries, k=TRUNCATE))
    _, first = timed(lambda: diffusion.rank(top_ids, top_sims, alpha=0.99, truncate=TRUNCATE, k=TOPK))
    _, again = timed(lambda: diffusion.rank(top_ids, top_sims, alpha=0.9, truncate=TRUNCATE, k=TOPK))
    report("truncated diffusion", truncate=TRUNCATE, exact_top_t_seconds=round(search_seconds, 2),
           ms_per_query=round(1000 * first / N_QUERIES, 1),
           ms_per_query_after_alpha_change=round(1000 * again / N_QUERIES, 1))


def ray_workload(n_images: int, photos: Path | None, tmp: Path):
    """(dataset, methods, runtime) of the Ray comparison: the first `n_images` Paris6k-250 photos
    with Lite0's ImageNet weights at 1024 px on the OpenVINO runtime (`--photos DIR`), else
    generated 160 x 120 pictures, random weights, 128 px, torch."""
    from dataclasses import replace

    from PIL import Image

    from cbir.data import load_dataset
    from cbir.method import Method
    from cbir.runtime import default_runtime

    if photos is not None:
        full = load_dataset("paris6k", photos)
        dataset = replace(full, images=full.images[:n_images], paths=full.paths[:n_images],
                          labels=full.labels[:n_images], queries=[], gnd={p: [] for p in full.gnd})
        return dataset, [Method(pooling=p) for p in ("mac", "spoc", "gem", "rmac")], default_runtime()
    rng = np.random.default_rng(0)
    root = tmp / "images"
    for i in range(n_images):
        (root / f"c{i % 5}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"c{i % 5}" / f"{i:04d}.jpg", quality=90)
    return load_dataset("folder", root, queries=1), [Method(pooling="gem", size=128, weights="random")], "torch"


def fresh_cache(tmp: Path, name: str) -> Path:
    """An empty cache that shares the warm-up's converted models (conversion is not timed)."""
    from cbir.runtime import MODELS_DIR

    cache = tmp / name
    cache.mkdir()
    if (tmp / "warm-up" / MODELS_DIR).is_dir():
        (cache / MODELS_DIR).symlink_to(tmp / "warm-up" / MODELS_DIR, target_is_directory=True)
    return cache


def bench_ray(n_images: int, photos: Path | None) -> None:
    """Each engine on all the images and on a quarter of them: images/s of the whole job, and
    at steady state (the images between the two runs over the time between them), which
    leaves out what a job pays once (Ray's actors starting, loading and compiling the model)."""
    from dataclasses import replace

    from cbir.distributed import RayEngine, start_ray
    from cbir.extraction import extract

    with tempfile.TemporaryDirectory() as tmp:
        dataset, methods, runtime = ray_workload(n_images, photos, Path(tmp))
        extract(dataset, methods, Path(tmp) / "warm-up", runtime=runtime)  # imports, weights, conversion: not timed
        n, part = len(dataset.images), max(1, len(dataset.images) // 4)  # each query is a database image
        quarter = replace(dataset, images=dataset.images[:part], paths=dataset.paths[:part],
                          labels=dataset.labels[:part], queries=[], gnd={p: [] for p in dataset.gnd})

        def timed(name: str, engine) -> tuple[float, float]:
            seconds = []
            for subset in (dataset, quarter):
                cache = fresh_cache(Path(tmp), f"{name}-{len(subset.images)}")
                start = time.perf_counter()
                extract(subset, methods, cache, runtime=runtime, engine=engine)
                seconds.append(time.perf_counter() - start)
            extra = seconds[0] - seconds[1]  # None: the fixed cost's noise exceeds the extra images' time
            return seconds[0], (n - part) / extra if extra > 0 else None

        local, local_steady = timed("local", None)
        report("extraction in-process", images=n, runtime=runtime, size=methods[0].size,
               images_per_second=round(n / local, 2), steady_images_per_second=local_steady and round(local_steady, 2))
        start = time.perf_counter()
        start_ray(None)
        report("ray start", seconds=round(time.perf_counter() - start, 2))
        start = time.perf_counter()  # Ray's first job also starts its worker processes: not a job's cost
        extract(quarter, methods, fresh_cache(Path(tmp), "ray-warm-up"), runtime=runtime, engine=RayEngine(actors=1))
        report("ray first job (worker processes started)", images=part, seconds=round(time.perf_counter() - start, 2))
        for actors in (1, 2):
            seconds, steady = timed(f"ray{actors}", RayEngine(actors=actors))
            report("extraction ray", actors=actors, images=n, images_per_second=round(n / seconds, 2),
                   ratio_to_in_process=round(local / seconds, 3), steady_images_per_second=steady and round(steady, 2),
                   steady_ratio_to_in_process=round(steady / local_steady, 3) if steady and local_steady else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="database size (the issue's target is 1,000,000)")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--images", type=int, default=50, help="images for the extraction comparison")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--photos", type=Path, default=None,
                        help="Ray comparison on this Paris6k-250 folder's photos at 1024 px (OpenVINO)")
    parser.add_argument("--keep", type=Path, default=None, help="store the index in DIR (a rerun loads it)")
    args = parser.parse_args()
    if not args.skip_search:
        bench_search(args.n, args.dim, args.keep)
    if not args.skip_ray:
        bench_ray(args.images, args.photos)


if __name__ == "__main__":
    main()
