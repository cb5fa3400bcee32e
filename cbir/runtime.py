"""Where the backbone's forward runs: eager torch, or OpenVINO on a CPU.

OpenVINO's CPU plugin runs EfficientNet-Lite0 at 1024 px about 2.5-3x faster than
torch's eager forward on the same cores, with the same float32 values (max abs
difference ~1e-4). Its own default on CPUs with AMX/AVX512-BF16 is bf16, which
changes the descriptors, so fp32 is forced unless bf16 is asked for (a precision
that is part of the method's name and cache key).

A converted model depends on the backbone, its weights and the size policy; it is
stored once under `<cache>/.models/` (OpenVINO IR, dynamic batch, height and width)
and reused by every later extraction. The feature map comes back as a torch tensor
so pooling is shared with the torch runtime. The converted model's JSON also describes the
backbone (mean, std, channels, parameters, weights), so a later OpenVINO extraction neither
imports timm nor builds the torch network (`runtime_backbone`): about 1.3 s saved per command
and per Ray actor.
"""
from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, replace
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


def model_stem(name: str, weights: str, weights_sha256: str | None, size: int) -> str:
    """File name of a converted model: backbone, weights (their hash) and the size policy."""
    import openvino

    digest = (weights_sha256 or weights)[:16]
    return f"{name}-{weights}-{digest}-max{size}-ov{openvino.__version__.split('-')[0]}"


def converted_model(backbone, cache_root: Path, size: int) -> tuple[Path, dict]:
    """The backbone's OpenVINO IR (converting it on first use) and how it was made."""
    import tempfile

    import openvino
    import torch

    from .cache import atomic_write_text

    folder = Path(cache_root) / MODELS_DIR
    xml = folder / (model_stem(backbone.name, backbone.weights, backbone.weights_sha256, size) + ".xml")
    about = xml.with_suffix(".json")
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        try:  # the JSON is written last: it says the conversion completed
            info = json.loads(about.read_text())
        except (OSError, ValueError):
            pass
        else:
            if "backbone" not in info:  # converted before the JSON described it: later runs can skip timm
                info["backbone"] = backbone_description(backbone)
                atomic_write_text(about, json.dumps(info))
            return xml, info | {"conversion_cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    side = min(size, CONVERSION_SIDE)
    with torch.inference_mode():
        model = openvino.convert_model(backbone.model.float().eval(), example_input=torch.zeros(1, 3, side, side),
                                       input=[(-1, 3, -1, -1)])
    info = {"model_file": xml.name, "conversion_seconds": round(time.perf_counter() - start, 3),
            "openvino": openvino.__version__, "backbone": backbone_description(backbone)}
    # Concurrent converters (Ray actors, two commands) each save under their own temporary
    # name and rename over the final files, which are whole whichever lands last.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".converting-") as tmp:
        saved = Path(tmp) / xml.name
        openvino.save_model(model, saved, compress_to_fp16=False)
        saved.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        saved.replace(xml)
    atomic_write_text(about, json.dumps(info))
    return xml, info | {"conversion_cached": False}


DESCRIBED = ("name", "weights", "mean", "std", "channels", "n_params", "weights_sha256", "n_feature_params",
             "weights_source")


def backbone_description(backbone) -> dict:
    return {field: getattr(backbone, field) for field in DESCRIBED}


def weights_sha256(name: str, weights: str, weights_file: Path | None) -> str | None:
    """The sha256 `load_backbone` would record, found without timm: of the weights file, or the
    Lite package's; None for random weights; "" where only timm can resolve them (the hub)."""
    from .backbones import ALIASES, lite_package_file
    from .cache import sha256_file

    if weights == "random":
        return None
    path = Path(weights_file) if weights_file is not None else lite_package_file(ALIASES.get(name, name))
    return sha256_file(path) if path is not None and path.is_file() else ""


def described_backbone(name: str, weights: str, weights_file: Path | None, cache_root: Path, size: int):
    """The backbone as its converted model's JSON describes it (no network: `model` is None),
    or None when the model is not converted yet or its JSON predates the description."""
    from .backbones import Backbone

    digest = weights_sha256(name, weights, weights_file)
    if digest == "":
        return None
    xml = Path(cache_root) / MODELS_DIR / (model_stem(name, weights, digest, size) + ".xml")
    try:
        about = json.loads(xml.with_suffix(".json").read_text()).get("backbone")
    except (OSError, ValueError):
        return None
    if not (xml.is_file() and xml.with_suffix(".bin").is_file() and isinstance(about, dict)
            and set(about) == set(DESCRIBED) and about["weights_sha256"] == digest):
        return None
    source = {"weights_source": str(weights_file)} if weights_file is not None else {}  # where it is now
    return Backbone(model=None, classifier=None,
                    **{**about, "mean": tuple(about["mean"]), "std": tuple(about["std"]), **source})


def torch_threads_beside(runtime: str, threads: int) -> int:
    """torch's threads while `runtime` runs the forward on `threads`. Under OpenVINO torch only
    normalises and pools, on one thread: two OpenMP workers spinning after each small op took
    the cores from OpenVINO's threads (extraction loop 16.3-17.0 -> 17.8-17.9 images/s on Paris
    photos, 2 cores)."""
    return 1 if runtime == "openvino" else threads


def runtime_backbone(runtime: str, name: str, weights: str, weights_file: Path | None, device, cache_root: Path,
                     size: int):
    """The backbone `make_forward` needs: for OpenVINO, its description when its model is already
    converted (timm is then never imported); otherwise loaded, channels-last, on `device`."""
    import torch

    from .backbones import load_backbone

    if runtime == "openvino":
        described = described_backbone(name, weights, weights_file, cache_root, size)
        if described is not None:
            return described
    loaded = load_backbone(name, weights, weights_file)
    return replace(loaded, model=loaded.model.to(device).to(memory_format=torch.channels_last))


class TorchForward:
    """The eager torch forward; bf16 autocast on a GPU (pooling stays float32), or when asked for."""

    def __init__(self, backbone, device, precision: str = "fp32"):
        import torch

        self.model, self.device, self.precision = backbone.model, device, precision
        self.input_format = torch.channels_last  # the network's own layout (`runtime_backbone`)
        self.bf16 = device.type == "cuda" or precision == "bf16"
        self.info = {"runtime": f"torch {torch.__version__}",
                     "precision": "bfloat16 autocast forward, float32 pooling" if self.bf16 else "float32"}

    def __call__(self, x):
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


@dataclass
class CallTimes:
    """Seconds of one model's calls on one input shape: their number, sum and best."""
    calls: int = 0
    seconds: float = 0.0
    best: float = float("inf")

    def add(self, seconds: float) -> None:
        self.calls, self.seconds, self.best = self.calls + 1, self.seconds + seconds, min(self.best, seconds)


class OpenVINOForward:
    """The converted model compiled for the CPU, fp32 (or bf16) inference, `threads` streams' worth.

    Its input is read as a contiguous NCHW array (`input_format` asks the caller to normalise into
    that layout) and shared with OpenVINO, not copied into the request.

    The stored model has a dynamic batch, height and width. OpenVINO's CPU plugin runs a model
    compiled for one fixed input shape faster on networks of many small layers (steady calls at
    1024 x 768, 2 threads: Lite0 38 against 42-44 ms, EfficientNet-B1 78 against 84-86 ms,
    ResNet-50 and VGG-16 about 1%), with the same values (bitwise, on Paris6k-250's descriptors).
    Photos come in a few sizes (Paris6k-250 at 1024 px: four shapes hold 186 of 250), so a shape
    gets its own compiled model once the dynamic one has spent `STATIC_AFTER_SECONDS` on it over
    two calls or more (a compile takes ~0.1 s); rare shapes and query crops stay on the dynamic
    model. Each such model holds its own activation memory (at 1024 x 768: Lite0 ~125 MB, VGG-16
    ~450 MB), so at most `MAX_STATIC_SHAPES` are kept, and the first one is a probe: if its best
    call is not `STATIC_GAIN` faster than the dynamic model's best on that shape, they are all
    dropped and the dynamic model serves every shape (on one repeated shape: Lite0 kept, B1 at 3%,
    ResNet-50 and VGG-16 dropped)."""

    STATIC_AFTER_SECONDS = 0.25
    MAX_STATIC_SHAPES = 4
    STATIC_GAIN = 0.05
    PROBE_CALLS = 3

    def __init__(self, backbone, cache_root: Path, size: int, precision: str = "fp32", threads: int | None = None):
        import openvino
        import torch

        self.input_format = torch.contiguous_format

        xml, conversion = converted_model(backbone, cache_root, size)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.core, self.config = openvino.Core(), config
        self.model = self.core.read_model(xml)
        self.compiled = self.core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.static_requests: dict[tuple, object] = {}
        self.dynamic_times: dict[tuple, CallTimes] = {}
        self.static_times: dict[tuple, CallTimes] = {}
        self.static_pays: bool | None = None  # None until the first per-shape model is measured
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == "bf16" and used != openvino.Type.bf16:
            raise ValueError(f"this CPU has no bf16 support in OpenVINO (it runs {used}); use --precision fp32")
        self.base_info = {"runtime": f"openvino {openvino.__version__}",
                          "precision": "bfloat16 inference" if precision == "bf16" else "float32",
                          "conversion": conversion}

    @property
    def info(self) -> dict:
        """What the runtime did, for the manifest: the shapes that got their own compiled model."""
        return self.base_info | {"shape_models": {"shapes": [list(shape) for shape in self.static_requests],
                                                  "dropped_not_faster": self.static_pays is False}}

    def _static_request(self, shape: tuple):
        """The request of the model compiled for `shape`, compiled now if the shape has earned it."""
        request = self.static_requests.get(shape)
        times = self.dynamic_times.get(shape)
        if (request is None and self.static_pays is not False and times is not None and times.calls >= 2
                and times.seconds >= self.STATIC_AFTER_SECONDS and len(self.static_requests) < self.MAX_STATIC_SHAPES):
            model = self.model.clone()
            model.reshape(list(shape))
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            self.static_requests[shape] = request
        return request

    def _measure(self, shape: tuple, request, seconds: float) -> None:
        if request is None:
            self.dynamic_times.setdefault(shape, CallTimes()).add(seconds)
        elif self.static_pays is None:
            times = self.static_times.setdefault(shape, CallTimes())
            times.add(seconds)
            if times.calls >= self.PROBE_CALLS:
                self.static_pays = times.best <= (1 - self.STATIC_GAIN) * self.dynamic_times[shape].best
                if not self.static_pays:
                    self.static_requests.clear()

    def __call__(self, x):
        import numpy as np
        import torch

        array = np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
        static = self._static_request(array.shape)
        request = static or self.request
        start = time.perf_counter()
        request.infer({0: array}, share_inputs=True)
        self._measure(array.shape, static, time.perf_counter() - start)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def make_forward(runtime: str, backbone, device, *, cache_root: Path, size: int, precision: str = "fp32",
                 threads: int | None = None):
    """A callable (B, 3, H, W) normalised float32 tensor -> (B, C, h, w) float32 feature map."""
    check_runtime(runtime, device.type)
    if runtime == "openvino":
        return OpenVINOForward(backbone, cache_root, size, precision, threads)
    return TorchForward(backbone, device, precision)
