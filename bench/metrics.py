"""Time the metrics on a Paris6k-sized problem (55 queries x 6392 images); the dashboard
recomputes them on every slider move, so compute_map must stay well under 100 ms.

    python -m bench.metrics      (from the repository root)
"""
import time

import numpy as np

from cbir.metrics import compute_map, precision_at_k_curves, seed_map_at_k

N_QUERIES, N_DB, REPEATS = 55, 6392, 20


def main():
    rng = np.random.default_rng(0)
    gnd = [{"ok": rng.choice(N_DB, rng.integers(5, 300), replace=False),
            "junk": rng.choice(N_DB, rng.integers(0, 200), replace=False)} for _ in range(N_QUERIES)]
    gnd = [{"ok": g["ok"], "junk": np.setdiff1d(g["junk"], g["ok"])} for g in gnd]
    ranks = np.argsort(rng.random((N_QUERIES, N_DB)), axis=1)
    for name, fn in [("compute_map", lambda: compute_map(ranks, gnd)),
                     ("seed_map_at_k(k=100)", lambda: seed_map_at_k(ranks, gnd, 100)),
                     ("precision_at_k_curves(kmax=100)", lambda: precision_at_k_curves(ranks, gnd, 100))]:
        fn()
        start = time.perf_counter()
        for _ in range(REPEATS):
            fn()
        print(f"{name:34s} {1000 * (time.perf_counter() - start) / REPEATS:7.1f} ms "
              f"({N_QUERIES} x {N_DB})")


if __name__ == "__main__":
    main()
