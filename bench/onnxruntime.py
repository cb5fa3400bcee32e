"""Why ONNX Runtime is not offered as a runtime: its CPU forward against OpenVINO's and torch's.

    pip install onnxruntime onnx   # not in any requirements file
    python -m bench.onnxruntime [--root ../shared/data/paris6k-250] [--limit 30] [--rounds 2]

Lite0 (ImageNet weights) exported to ONNX with dynamic batch, height and width (opset 17),
run by ONNX Runtime's CPU provider (all graph optimisations, the cores extraction uses),
against the OpenVINO fp32 runtime and torch's forward on the same `--limit` Paris6k-250
photos at 1024 px, rounds alternating; prints images/s per round and each runtime's
largest absolute difference from torch's feature maps, as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "paris6k-250"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    try:
        import onnxruntime
    except ImportError:
        sys.exit("bench.onnxruntime needs onnxruntime and onnx: pip install onnxruntime onnx")
    import numpy as np
    import torch

    from cbir.backbones import load_backbone
    from cbir.data import load_dataset
    from cbir.extraction import cpu_count, default_threads, image_tensor, load_image
    from cbir.runtime import OpenVINOForward, TorchForward

    dataset = load_dataset("paris6k", args.root)
    backbone = load_backbone("tf_efficientnet_lite0", "imagenet")
    tensors = [image_tensor(load_image(dataset.image_path(i), 1024), backbone.mean, backbone.std)[None]
               for i in range(min(args.limit, len(dataset.images)))]
    threads = default_threads(0)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "lite0.onnx"
        start = time.perf_counter()
        torch.onnx.export(backbone.model.float().eval(), torch.zeros(1, 3, 224, 224), str(onnx_file),
                          input_names=["x"], output_names=["fmap"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "fmap": {0: "b", 2: "fh", 3: "fw"}})
        export_seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        openvino = OpenVINOForward(backbone, Path(tmp), 1024, threads=threads)
        torch_forward = TorchForward(backbone, torch.device("cpu"))
        forwards = {"torch": lambda x: torch_forward(x).numpy(),
                    "openvino": lambda x: openvino(x).numpy(),
                    "onnxruntime": lambda x: session.run(None, {"x": x.numpy()})[0]}
        rates = {name: [] for name in forwards}
        outputs = {}
        with torch.inference_mode():
            for forward in forwards.values():
                forward(tensors[0])
            for _ in range(args.rounds):
                for name, forward in forwards.items():
                    start = time.perf_counter()
                    outputs[name] = [forward(x) for x in tensors]
                    rates[name].append(round(len(tensors) / (time.perf_counter() - start), 2))
    best = {name: max(r) for name, r in rates.items()}
    print(json.dumps({
        "images": len(tensors), "threads": threads, "cpu_cores": cpu_count(),
        "onnxruntime": onnxruntime.__version__, "export_seconds": round(export_seconds, 2),
        "images_per_s": rates,
        "ratio_onnxruntime_vs_openvino": round(best["onnxruntime"] / best["openvino"], 3),
        "ratio_onnxruntime_vs_torch": round(best["onnxruntime"] / best["torch"], 3),
        "max_abs_diff_vs_torch": {name: float(max(np.abs(a - b).max() for a, b in zip(outputs[name], outputs["torch"])))
                                  for name in ("openvino", "onnxruntime")},
    }, indent=1))


if __name__ == "__main__":
    main()
