"""Where the backbone's forward runs: eager torch, or OpenVINO on a CPU.

OpenVINO's CPU plugin runs EfficientNet-Lite0 at 1024 px about 2.5-3x faster than
torch's eager forward on the same cores, with the same float32 values (max abs
difference ~1e-4). Its own default on CPUs with AMX/AVX512-BF16 is bf16, which
changes the descriptors, so fp32 is forced unless bf16 is asked for (a precision
that is part of the method's name and cache key).

A converted model depends on the backbone, its weights and the size policy; it is
stored once under `<cache>/.models/` (OpenVINO IR, dynamic batch, height and width)
and reused by every later extraction. The feature map comes back as a torch tensor
so pooling is shared with the torch runtime.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

RUNTIMES = ("torch", "openvino")
MODELS_DIR = ".models"
CONVERSION_SIDE = 224


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def default_runtime(device_type: str = "cpu") -> str:
    """OpenVINO on a CPU when it is installed (same fp32 descriptors, faster); torch otherwise."""
    return "openvino" if device_type == "cpu" and openvino_installed() else "torch"


def check_runtime(runtime: str, device_type: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")
    if runtime == "openvino":
        if device_type != "cpu":
            raise ValueError(f"the openvino runtime runs on the CPU, not on device {device_type!r}")
        if not openvino_installed():
            raise ValueError("the openvino runtime is not installed: pip install -r requirements-extract.txt "
                             "(or pip install openvino), or choose --runtime torch")


def model_stem(backbone, size: int) -> str:
    """File name of a converted model: backbone, weights (their hash) and the size policy."""
    import openvino

    weights = (backbone.weights_sha256 or backbone.weights)[:16]
    return f"{backbone.name}-{backbone.weights}-{weights}-max{size}-ov{openvino.__version__.split('-')[0]}"


def converted_model(backbone, cache_root: Path, size: int) -> tuple[Path, dict]:
    """The backbone's OpenVINO IR (converting it on first use) and how it was made."""
    import openvino
    import torch

    folder = Path(cache_root) / MODELS_DIR
    xml = folder / (model_stem(backbone, size) + ".xml")
    about = xml.with_suffix(".json")
    if xml.is_file() and xml.with_suffix(".bin").is_file() and about.is_file():
        return xml, json.loads(about.read_text()) | {"conversion_cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    side = min(size, CONVERSION_SIDE)
    with torch.inference_mode():
        model = openvino.convert_model(backbone.model.float().eval(), example_input=torch.zeros(1, 3, side, side),
                                       input=[(-1, 3, -1, -1)])
    tmp = folder / (xml.stem + ".tmp.xml")
    openvino.save_model(model, tmp, compress_to_fp16=False)
    info = {"model_file": xml.name, "conversion_seconds": round(time.perf_counter() - start, 3),
            "openvino": openvino.__version__}
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)
    about.write_text(json.dumps(info))
    return xml, info | {"conversion_cached": False}


class TorchForward:
    """The eager torch forward; bf16 autocast on a GPU (pooling stays float32), or when asked for."""

    def __init__(self, backbone, device, precision: str = "fp32"):
        import torch

        self.model, self.device, self.precision = backbone.model, device, precision
        self.bf16 = device.type == "cuda" or precision == "bf16"
        self.info = {"runtime": f"torch {torch.__version__}",
                     "precision": "bfloat16 autocast forward, float32 pooling" if self.bf16 else "float32"}

    def __call__(self, x):
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


class OpenVINOForward:
    """The converted model compiled for the CPU, fp32 (or bf16) inference, `threads` streams' worth."""

    def __init__(self, backbone, cache_root: Path, size: int, precision: str = "fp32", threads: int | None = None):
        import openvino

        xml, conversion = converted_model(backbone, cache_root, size)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = openvino.Core().compile_model(xml, "CPU", config)
        self.request = self.compiled.create_infer_request()
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == "bf16" and used != openvino.Type.bf16:
            raise ValueError(f"this CPU has no bf16 support in OpenVINO (it runs {used}); use --precision fp32")
        self.info = {"runtime": f"openvino {openvino.__version__}",
                     "precision": "bfloat16 inference" if precision == "bf16" else "float32",
                     "conversion": conversion}

    def __call__(self, x):
        import numpy as np
        import torch

        self.request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def make_forward(runtime: str, backbone, device, *, cache_root: Path, size: int, precision: str = "fp32",
                 threads: int | None = None):
    """A callable (B, 3, H, W) normalised float32 tensor -> (B, C, h, w) float32 feature map."""
    check_runtime(runtime, device.type)
    if runtime == "openvino":
        return OpenVINOForward(backbone, cache_root, size, precision, threads)
    return TorchForward(backbone, device, precision)
