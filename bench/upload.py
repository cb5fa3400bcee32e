"""Memory of describing one uploaded image: torch-free (bundled OpenVINO model) against torch.

    python -m bench.upload [--root ../shared/data/paris6k-250] [--size 1024]

Extracts Lite0 R-MAC on 4 images with the OpenVINO runtime into a temporary cache, then
in two fresh processes describes a 1024 px photo: with `cbir.torchfree` (torch blocked
from importing, as on Community Cloud with requirements.txt + openvino) and with torch
(`cbir.extraction.describe_image`). Prints each process's peak RSS (MiB), its time, and
whether the two descriptors agree. This is the describing process alone, not a whole
Streamlit server (which adds its own ~150-250 MiB to both).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
