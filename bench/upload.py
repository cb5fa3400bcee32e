"""Memory of describing one uploaded image: torch-free (bundled OpenVINO model) against torch.

    python -m bench.upload [--root ../shared/data/paris6k-250] [--size 1024] [--server]

Extracts Lite0 R-MAC on 4 images with the OpenVINO runtime into a temporary cache, then
in two fresh processes describes a 1024 px photo: with `cbir.torchfree` (torch blocked
from importing, as on Community Cloud with requirements.txt + openvino) and with torch
(`cbir.extraction.describe_image`). Prints each process's peak RSS (MiB), its time, and
whether the two descriptors agree. This is the describing process alone.

`--server` measures what Community Cloud's limit applies to: a whole `streamlit run app.py`
serving Lite0 R-MAC of all of Paris6k-250, its RSS (VmRSS) and peak (VmHWM) after the
Query explorer opened and again after Chromium uploaded a photo and searched with it.
Once with torch blocked from importing (what a Cloud install of requirements.txt +
openvino has; the entry carries its converted model) and once with torch (the model
hidden, so the upload is described by torch, as for entries without one).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "paris6k-250"

DESCRIBE = """
import json, sys, time
from pathlib import Path
if sys.argv[1] == "torchfree":
    sys.modules["torch"] = sys.modules["timm"] = None
import numpy as np
from cbir.cache import list_datasets, load_entry
from cbir.method import Method
cache, image = Path(sys.argv[2]), Path(sys.argv[3])
method = Method(pooling="rmac", size=int(sys.argv[4]))
entry = load_entry(cache, next(iter(list_datasets(cache).values())), method)
start = time.perf_counter()
if sys.argv[1] == "torchfree":
    from cbir.torchfree import describe_image
    desc = describe_image(image, method, entry)
else:
    from cbir.backbones import load_backbone
    from cbir.extraction import describe_image
    desc = describe_image(image, method, load_backbone(method.backbone, method.weights))
seconds = time.perf_counter() - start
np.save(sys.argv[5], desc)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's peak.
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(json.dumps({"peak_rss_mib": round(int(status["VmHWM"].split()[0]) / 1024, 1),
                  "seconds": round(seconds, 2), "torch_imported": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""


BLOCK_TORCH = "import sys\nfor name in ('torch', 'timm', 'torchvision'):\n    sys.modules[name] = None\n"


def status_mib(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def server_after_upload(cache: Path, dataset, method, image: Path, torch_blocked: bool, tmp: Path) -> dict:
    """RSS of a fresh Streamlit server: the Query explorer opened, then an upload searched."""
    from urllib.parse import urlencode

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO / "tests"))
    from test_browser import CHROMIUM, FLAGS, Server, settled

    from cbir.cache import dataset_key

    env = {"CBIR_CACHE_DIR": str(cache), "CBIR_DEMO_DIR": "", "PYTHONPATH": str(REPO)}
    if torch_blocked:
        site = tmp / "block-torch"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCK_TORCH)
        env["PYTHONPATH"] = f"{site}:{REPO}"
    query = urlencode({"dataset": dataset_key(dataset), "protocol": "original", "methods": method.slug()})
    with Server(env) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server.url}/Query_explorer?{query}")
        settled(page, timeout=180_000)
        opened = status_mib(server.process.pid)
        page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(image))
        page.get_by_role("button", name="Search with").click(timeout=60_000)
        page.get_by_text("No ground truth for an uploaded image").wait_for(timeout=180_000)
        searched = status_mib(server.process.pid)
        errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").count()
        browser.close()
    return {"torch_blocked": torch_blocked, "after_opening_mib": opened, "after_upload_mib": searched,
            "errors_shown": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--server", action="store_true", help="a whole Streamlit server's RSS after an upload")
    args = parser.parse_args()
    if args.server:
        return measure_server(args)

    import numpy as np

    from cbir.data import load_dataset
    from cbir.extraction import extract
    from cbir.method import Method

    full = load_dataset("paris6k", args.root)
    dataset = replace(full, images=full.images[:4], paths=full.paths[:4], labels=full.labels[:4], queries=[],
                      gnd={p: [] for p in full.gnd})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        extract(dataset, [Method(pooling="rmac", size=args.size)], cache, runtime="openvino")
        image = dataset.image_path(0)
        for mode in ("torchfree", "torch"):
            out = subprocess.run([sys.executable, "-c", DESCRIBE, mode, str(cache), str(image), str(args.size),
                                  str(Path(tmp) / f"{mode}.npy")], cwd=REPO, capture_output=True, text=True,
                                 env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
            results[mode] = json.loads(out.stdout.splitlines()[-1])
        a, b = (np.load(Path(tmp) / f"{m}.npy")[0] for m in ("torchfree", "torch"))
        results["cosine_torchfree_vs_torch"] = round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), 6)
    print(json.dumps(results, indent=1))


def measure_server(args) -> None:
    from cbir.data import load_dataset
    from cbir.extraction import extract
    from cbir.method import Method
    from cbir.runtime import MODELS_DIR

    dataset = load_dataset("paris6k", args.root)
    method = Method(pooling="rmac", size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        extract(dataset, [method], cache, runtime="openvino")
        image = dataset.image_path(len(dataset.images) - 1)
        results = [server_after_upload(cache, dataset, method, image, True, Path(tmp))]
        (cache / MODELS_DIR).rename(Path(tmp) / "models-hidden")
        results.append(server_after_upload(cache, dataset, method, image, False, Path(tmp)))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
