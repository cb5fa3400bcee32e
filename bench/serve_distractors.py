"""The dashboard's memory serving a stored 1M-distractor evaluation (issue 14; target <= 1.5 GB).

    python -m bench.serve_distractors [--distractors 1001001] [--k 1000] [--dim 2048] [--shard] [--keep DIR]

Builds a synthetic cache as `python -m cbir evaluate --dataset rparis6k ... --distractors
revisitop1m` leaves it: an rParis6k-sized benchmark (6322 images with small JPEGs, 70
queries, easy / medium / hard) with GeM and R-MAC entries of `--dim` float32 descriptors;
R1M's dataset description (the full list of names) and, per method, a distractor entry
whose manifest states `--distractors` float16 descriptors (db.npy is a sparse file of that
size: nothing may read it) holding one top-`--k` file per protocol. The lists are the
benchmark's exact top K merged with distractors of interleaved scores (so some positives
fall beyond K); each query's shown distractors have a small JPEG under the distractors' root
(with --shard: in a thumbnail shard instead, the JPEGs deleted, as on Community Cloud).

Then `streamlit run app.py` (headless) serves that cache, and Chromium opens the
Overview, the Query explorer (50 results of three queries, two methods: distractor tiles
read lazily), the Curves and the Diffusion lab on "rParis6k + R1M"; after each page the
server's VmRSS and VmHWM (peak) are read from /proc/PID/status. One JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

PROTOCOLS = ("easy", "medium", "hard")
QUERIES = 70
IMAGES = 6322
LANDMARKS = 11


def emit(**figures) -> None:
    print(json.dumps(figures), flush=True)


def jpeg(path: Path, seed: int) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(int(c) for c in np.random.default_rng(seed).integers(40, 220, 3))
    Image.new("RGB", (96, 72), colour).save(path, quality=80)


def benchmark(root: Path, dim: int, rng):
    """An rParis6k-sized revisited dataset: landmarks of ~575 images, queries outside the database."""
    from cbir.data import Dataset, Query

    labels = rng.integers(0, LANDMARKS, IMAGES)
    images = [f"paris_{labels[i]}_{i:06d}" for i in range(IMAGES)]
    paths = [f"jpg/{name}.jpg" for name in images]
    for i, path in enumerate(paths):
        jpeg(root / path, i)
    q_labels = np.arange(QUERIES) % LANDMARKS
    gnd = {p: [] for p in PROTOCOLS}
    for lm in q_labels:
        same = np.flatnonzero(labels == lm)
        easy, hard, junk = same[::3], same[1::3], same[2::3][:40]
        gnd["easy"].append({"ok": easy, "junk": np.concatenate([junk, hard])})
        gnd["medium"].append({"ok": np.concatenate([easy, hard]), "junk": junk})
        gnd["hard"].append({"ok": hard, "junk": np.concatenate([junk, easy])})
    queries = [Query(f"paris_query_{q:02d}", -1, paths[int(np.flatnonzero(labels == lm)[0])])
               for q, lm in enumerate(q_labels)]
    dataset = Dataset("rparis6k", str(root), images, paths, [str(x) for x in labels], queries,
                      {p: [{k: np.sort(v) for k, v in g.items()} for g in gs] for p, gs in gnd.items()},
                      IMAGES, QUERIES)
    centres = rng.normal(size=(LANDMARKS, dim))
    db = centres[labels] + 2.5 * rng.normal(size=(IMAGES, dim))
    queries_x = centres[q_labels] + 2.5 * rng.normal(size=(QUERIES, dim))
    unit = [(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) for x in (db, queries_x)]
    return dataset, unit[0], unit[1]


def distractor_entry(cache: Path, distractors, method, dim: int) -> Path:
    """A distractor entry whose manifest states a million float16 rows; db.npy is sparse (never read)."""
    from cbir.cache import dataset_key, entry_dir, names_hash

    folder = entry_dir(cache, dataset_key(distractors), method)
    folder.mkdir(parents=True, exist_ok=True)
    size = 128 + len(distractors.images) * dim * 2
    with open(folder / "db.npy", "wb") as f:
        f.truncate(size)
    np.save(folder / "queries.npy", np.zeros((0, dim), np.float16))
    manifest = {"format": 1, "method": method.descriptor_key().to_dict(), "dataset": distractors.name,
                "dataset_key": dataset_key(distractors), "names_sha1": names_hash(distractors.images),
                "query_names_sha1": names_hash([]), "n_images": len(distractors.images), "n_queries": 0,
                "dim": dim, "dtype": "float16",
                "files": {"db.npy": "0" * 64, "queries.npy": "0" * 64},
                "sizes": {"db.npy": size, "queries.npy": (folder / "queries.npy").stat().st_size}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def merged_topk(db, queries, n_distractors: int, k: int, rng):
    """The benchmark's exact top K merged with distractors whose scores interleave with it."""
    from cbir.ranking import search

    scores, ids = search(db, queries, topk=k)
    fake_scores = np.sort(rng.uniform(scores[:, k // 3:k // 3 + 1], scores[:, :1], (len(queries), k)), axis=1)[:, ::-1]
    fake_ids = len(db) + rng.integers(0, n_distractors, (len(queries), k))
    both_ids, both_scores = np.concatenate([ids, fake_ids], 1), np.concatenate([scores, fake_scores], 1)
    order = np.argsort(-both_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(both_ids, order, 1), np.take_along_axis(both_scores, order, 1).astype(np.float32)


def build(tmp: Path, n_distractors: int, k: int, dim: int, shard: bool) -> tuple[dict, str, list[str]]:
    from cbir.cache import dataset_key, read_manifest, save_dataset, save_entry
    from cbir.data import Dataset
    from cbir.distractors import combined_name
    from cbir.method import Method
    from cbir.topk import place_ground_truth
    from cbir.thumbshard import shown_distractors, write_shard
    from cbir.topkstore import provenance, store_topk, topk_path

    rng = np.random.default_rng(0)
    data, cache = tmp / "data", tmp / "cache"
    dataset, db, queries = benchmark(data / "rparis6k", dim, rng)
    r1m_root = data / "revisitop1m"
    names = [f"jpg/{i % 1000:03d}/{i:08x}.jpg" for i in range(n_distractors)]
    distractors = Dataset("revisitop1m", str(r1m_root), names, names, ["distractor"] * n_distractors, [], {},
                          max(n_distractors, 1_001_001), 0)
    save_dataset(cache, distractors)
    name = combined_name(dataset, distractors)
    shown_queries = [q.name for q in dataset.queries[:3]]
    methods = [Method(backbone="resnet50", pooling=p) for p in ("gem", "rmac")]
    for m, method in enumerate(methods):
        noisy = db + (0.01 * m) * rng.normal(size=db.shape).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        save_entry(cache, dataset, method, noisy, queries)
        folder = distractor_entry(cache, distractors, method, dim)
        ids, scores = merged_topk(noisy, queries, n_distractors, k, rng)
        for protocol in PROTOCOLS:
            topk = place_ground_truth(ids, scores, dataset.gnd[protocol], IMAGES + n_distractors)
            record = provenance(dataset, protocol, method, k, read_manifest(cache / dataset_key(dataset) / method.slug()),
                                read_manifest(folder), name, str(r1m_root))
            store_topk(topk_path(folder, dataset, protocol, k), topk, record, names, IMAGES)
        for item in np.unique(ids[:3, :50]):
            if item >= IMAGES:
                jpeg(r1m_root / names[item - IMAGES], int(item))
        if shard:
            shown = [names[i] for i in shown_distractors(ids[:3], IMAGES)]
            write_shard(cache / dataset_key(distractors), r1m_root, shown)
    if shard:
        for path in r1m_root.rglob("*.jpg"):
            path.unlink()
    env = {"CBIR_CACHE_DIR": str(cache), "CBIR_DATA_DIR": str(data), "CBIR_DEMO_DIR": ""}
    key = f"{dataset_key(dataset)}~{dataset_key(distractors)}"
    return env, key, [urlencode({"dataset": key, "protocol": "medium", "query": q, "top": 50,
                                 "methods": [x.slug() for x in methods]}, doseq=True) for q in shown_queries]


def memory(pid: int) -> dict:
    fields = {line.split(":")[0]: int(line.split()[1]) for line in open(f"/proc/{pid}/status")
              if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss_mib": round(fields["VmRSS"] / 1024, 1), "peak_rss_mib": round(fields["VmHWM"] / 1024, 1)}


def serve(env: dict, key: str, explorer: list[str]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, FLAGS, Server, settled

    visits = [("Overview", "", urlencode({"dataset": key, "protocol": "medium"}))]
    visits += [(f"Query explorer ({i + 1})", "Query_explorer", q) for i, q in enumerate(explorer)]
    visits += [("Curves", "Curves", explorer[0]), ("Diffusion lab", "Diffusion_lab", explorer[0])]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        with Server(env) as server:
            emit(stage="server started", **memory(server.process.pid))
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for label, path, query in visits:
                start = time.perf_counter()
                page.goto(f"{server.url}/{path}?{query}")
                settled(page, timeout=600_000)
                failed = page.locator("[data-testid='stException']").count()
                emit(stage=label, seconds=round(time.perf_counter() - start, 2), exceptions=failed,
                     named="rParis6k + R1M" in page.inner_text("body"), **memory(server.process.pid))
            final = memory(server.process.pid)
        browser.close()
    emit(measure="dashboard server peak RSS serving rParis6k + R1M (VmHWM)", value_mib=final["peak_rss_mib"],
         target_mib=1536, within_target=final["peak_rss_mib"] <= 1536)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", type=int, default=1_001_001)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--keep", type=Path, default=None, help="build the cache here and keep it")
    parser.add_argument("--shard", action="store_true",
                        help="the shown distractors in a thumbnail shard, their images deleted (Community Cloud)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        start = time.perf_counter()
        env, key, explorer = build(where, args.distractors, args.k, args.dim, args.shard)
        emit(stage="cache built", seconds=round(time.perf_counter() - start, 1), distractors=args.distractors,
             k=args.k, dim=args.dim, shard=args.shard, cache=env["CBIR_CACHE_DIR"])
        serve(env, key, explorer)


if __name__ == "__main__":
    main()
