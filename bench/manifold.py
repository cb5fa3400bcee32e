"""Time the Manifolds page's layouts on a Paris6k-sized database (6392 x 1280, 11 clusters).

    python -m bench.manifold      (from the repository root)

The first UMAP call includes numba's JIT compilation (printed separately).
"""
import tempfile
import time
from pathlib import Path

import numpy as np

from cbir.diffusion import affinity_graph, normalize_graph
from cbir.manifold import LAYOUT_EPOCHS, diffusion_distances, layouts, umap_layout

N_DB, DIM, N_CLUSTERS = 6392, 1280, 11


def timed(label, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:44s} {time.perf_counter() - start:6.1f} s")
    return result


def main():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((N_CLUSTERS, DIM))
    db = (centres[rng.integers(N_CLUSTERS, size=N_DB)] + 1.5 * rng.standard_normal((N_DB, DIM)))
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)
    timed("UMAP of 300 points (numba JIT warm-up)", lambda: umap_layout(db[:300]))
    S = timed("diffusion graph (k=50, mutual, gamma=3)", lambda: normalize_graph(affinity_graph(db, k=50)))
    timed(f"umap_layout ({N_DB} x {DIM}, cosine, {LAYOUT_EPOCHS} epochs)",
          lambda: umap_layout(db, n_epochs=LAYOUT_EPOCHS))
    timed(f"diffusion_distances ({N_DB} x {N_DB} dense)", lambda: diffusion_distances(S))
    with tempfile.TemporaryDirectory() as tmp:
        timed("layouts(): both UMAPs, distances, alignment", lambda: layouts(db, S, Path(tmp), "k50"))
        timed("layouts() again (from the cache)", lambda: layouts(db, S, Path(tmp), "k50"))


if __name__ == "__main__":
    main()
