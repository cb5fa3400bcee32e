"""Dashboard speed on Paris6k-250: diffusion-lab slider changes (target < 300 ms of script
time) and a cold start of the overview (target < 5 s).

    python -m bench.dashboard [--cache DIR | --demo] [--browser]

The cache is DIR, else $CBIR_CACHE_DIR, else cache/; it must hold a dataset whose root is
the Paris6k-250 folder (built by `python -m cbir extract --dataset paris6k --root
../shared/data/paris6k-250`). Without one, descriptors of the real shape (250 x 1280,
clustered by landmark) are generated into a temporary cache and the output says so.
With --demo, the user's cache is empty and the app serves the embedded demo (a fresh clone).

Slider: AppTest reruns the whole page script after each change (a browser reruns only
the slider's fragment, so this is an upper bound); each alpha is new, so every change
solves the diffusion for all queries on the cached graph. Cold start: a fresh Python
process renders the overview with AppTest (imports, cache reads, evaluation of every
method); with --browser, also `streamlit run` + Chromium until the overview has rendered.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARIS250 = REPO.parent / "shared" / "data" / "paris6k-250"
sys.path[0] = str(REPO)  # this file is bench/dashboard.py: keep it from shadowing the `dashboard` package


def find_cache(cache: Path) -> Path | None:
    from cbir.cache import list_datasets, list_entries
    for key, dataset in list_datasets(cache).items():
        if Path(dataset.root).resolve() == PARIS250.resolve() and list_entries(cache, key):
            return cache
    return None


def synthetic_cache(root: Path) -> Path:
    """Paris6k-250's real dataset description with random descriptors clustered by landmark."""
    import numpy as np

    from cbir.cache import save_entry
    from cbir.data import load_dataset
    from cbir.method import Method

    dataset = load_dataset("paris6k", PARIS250)
    rng = np.random.default_rng(0)
    names = sorted(set(dataset.labels))
    centres = rng.normal(size=(len(names), 1280))
    label = np.array([names.index(x) for x in dataset.labels])
    for pooling in ("spoc", "rmac"):
        db = centres[label] + 1.2 * rng.normal(size=(len(label), 1280))
        queries = db[[max(q.index, 0) for q in dataset.queries]] + 0.5 * rng.normal(size=(len(dataset.queries), 1280))
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        save_entry(root, dataset, Method(pooling=pooling), db.astype(np.float32), queries.astype(np.float32))
    return root


def slider_times(changes: int = 8) -> tuple[list[float], float, float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("pages/3_Diffusion_lab.py").run()
    if at.exception:
        raise RuntimeError(f"diffusion lab failed: {at.exception[0].value}")
    times = []
    shown = []
    for alpha in [0.9 - 0.013 * i for i in range(changes)]:
        start = time.perf_counter()
        at.slider(key="w_alpha").set_value(round(alpha, 3)).run()
        times.append(time.perf_counter() - start)
        shown.append(at.metric[0].value)
    start = time.perf_counter()
    at.slider(key="w_k").set_value(20).run()
    new_graph = time.perf_counter() - start
    start = time.perf_counter()
    at.slider(key="w_k").set_value(50).run()
    cached_graph = time.perf_counter() - start
    print(f"  mAP shown along the alpha sweep: {', '.join(shown)}")
    return times, new_graph, cached_graph


def cold_start_apptest() -> float:
    code = ("from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('app.py', default_timeout=120).run()\n"
            "assert not at.exception and at.dataframe, at.exception\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def cold_start_browser() -> float:
    sys.path.insert(0, str(REPO / "tests"))
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, FLAGS, Server, settled

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        start = time.perf_counter()
        with Server({}) as server:
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("[data-testid='stDataFrame']", timeout=60_000)
            settled(page)
            elapsed = time.perf_counter() - start
        browser.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("CBIR_CACHE_DIR", REPO / "cache")))
    parser.add_argument("--browser", action="store_true", help="also time streamlit run + Chromium")
    parser.add_argument("--demo", action="store_true", help="an empty cache: the app serves the embedded demo")
    args = parser.parse_args()
    if not PARIS250.is_dir() and not args.demo:
        sys.exit(f"error: {PARIS250}: Paris6k-250 not found")
    with tempfile.TemporaryDirectory() as tmp:
        cache = None if args.demo else find_cache(args.cache)
        if args.demo:
            from cbir.demo import DEMO_DIR
            print(f"Fresh clone: empty cache, serving the embedded demo {DEMO_DIR}")
            cache = Path(tmp) / "empty-cache"
            os.environ["CBIR_DATA_DIR"] = str(Path(tmp) / "no-data")
        elif cache is None:
            print(f"No Paris6k-250 cache in {args.cache}: using SYNTHETIC descriptors of the real shape "
                  "(250 x 1280, clustered by landmark); mAP values are meaningless, timings are not.")
            cache = synthetic_cache(Path(tmp))
        else:
            print(f"Paris6k-250 cache: {cache}")
        os.environ["CBIR_CACHE_DIR"] = str(cache)
        os.environ.setdefault("CBIR_DATA_DIR", str(PARIS250.parent))
        os.chdir(REPO)
        times, new_graph, cached_graph = slider_times()
        print(f"diffusion lab, alpha change (script time, whole page): median {1000 * statistics.median(times):.0f} ms, "
              f"max {1000 * max(times):.0f} ms over {len(times)} changes (target < 300 ms)")
        print(f"diffusion lab, k change: new graph {1000 * new_graph:.0f} ms, cached graph {1000 * cached_graph:.0f} ms")
        cold = [cold_start_apptest() for _ in range(2)]
        print(f"cold start to the rendered overview (fresh process, AppTest): "
              f"{', '.join(f'{c:.2f}' for c in cold)} s (target < 5 s)")
        if args.browser:
            print(f"cold start with streamlit run + Chromium until the overview table shows: "
                  f"{cold_start_browser():.2f} s")


if __name__ == "__main__":
    main()
