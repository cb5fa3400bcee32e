"""`--unfreeze last-stage`: fine-tune the backbone's last stage together with the head.

For users with a GPU and the images (the CPU default trains the head alone). The
frozen part of the network runs once per training image and its output is kept in
memory; each step runs the last stage on the tuple's images, pools as the method
does (R-MAC: the head per region), applies the head, L2, and takes the contrastive
loss (`cbir.heads.fit`). BatchNorm statistics stay frozen: a batch is one image of its
own size. The tuned stage is stored with the head, so evaluating the head describes
the test images again through the tuned network (`describe_dataset`).
Supported: timm EfficientNet (last block stage + conv_head), MobileNetV3 (last block
stage) and ResNet (layer4) networks.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import Dataset
from .method import Method


def split_last_stage(net: nn.Module):
    """(frozen(x) -> map before the last stage, last stage module) of a timm network, such
    that last(frozen(x)) is its `forward_features(x)`."""
    kind = type(net).__name__
    if kind in ("EfficientNet", "MobileNetV3"):
        def frozen(x):
            x = net.bn1(net.conv_stem(x))
            for stage in net.blocks[:-1]:
                x = stage(x)
            return x
        last = nn.Sequential(net.blocks[-1], net.conv_head, net.bn2) if kind == "EfficientNet" else net.blocks[-1]
        return frozen, last
    if kind == "ResNet":
        def frozen(x):
            x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
            return net.layer3(net.layer2(net.layer1(x)))
        return frozen, net.layer4
    raise ValueError(f"--unfreeze last-stage supports timm EfficientNet, MobileNetV3 and ResNet networks, not {kind}")


class StageAndHead(nn.Module):
    """The tuned last stage, the pooling of the method and the head: image maps -> descriptors."""

    def __init__(self, stage: nn.Module, head: nn.Module, pooling: str):
        super().__init__()
        self.stage, self.head, self.pooling = stage, head, pooling

    def forward(self, fmap_in: torch.Tensor) -> torch.Tensor:
        from .extraction import RMAC_LEVELS
        from .pooling import batch_regional_macs, pool

        fmap = self.stage(fmap_in)
        vectors = batch_regional_macs(fmap, RMAC_LEVELS)[0] if self.pooling == "rmac" else pool(fmap, self.pooling)
        out = nn.functional.normalize(self.head(vectors), dim=1)
        return nn.functional.normalize(out.sum(dim=0), dim=0)

    def describe(self, inputs: list[torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        unique, where = np.unique(idx, return_inverse=True)
        return torch.stack([self(inputs[i]) for i in unique])[torch.from_numpy(where.ravel())]


def _backbone(method: Method, weights_file=None):
    from .backbones import load_backbone

    backbone = load_backbone(method.backbone, method.weights, weights_file)
    frozen, last = split_last_stage(backbone.classifier)
    return backbone, frozen, last


def _image(backbone, path, size: int, bbox=None) -> torch.Tensor:
    from .extraction import image_tensor, load_image

    return image_tensor(load_image(path, size, bbox), backbone.mean, backbone.std)[None]


def train_unfrozen(dataset: Dataset, method: Method, options, *, checkpoint=None, progress=None, epoch_progress=None,
                   cancel=None, weights_file=None) -> tuple[dict, dict]:
    """Train last stage + head on the images of `dataset`; (numpy state with `stage.` and `head.` keys, history)."""
    from .heads import build_net, class_map, fit, learned_whitening, validation_split

    if options.kind == "lw":
        raise ValueError("--unfreeze last-stage trains a linear or mlp head (lw is a closed form)")
    backbone, frozen, last = _backbone(method, weights_file)
    stage = f"{method.backbone} {method.size}px: frozen layers"
    inputs = []
    with torch.no_grad():
        for i in range(len(dataset.images)):
            inputs.append(frozen(_image(backbone, dataset.image_path(i), method.size)))
            if progress:
                progress(i + 1, len(dataset.images), stage)
    labels = np.asarray(dataset.labels)
    val = validation_split(labels, options.val_fraction, options.seed)
    identity = nn.Identity()
    with torch.no_grad():
        start = StageAndHead(last, identity, method.pooling)
        plain = start.describe(inputs, np.arange(len(labels))).numpy()
    lw = None
    if options.init == "lw":
        lw = learned_whitening(plain, labels, ~val, options.shrinkage, rotate_on=plain[~val])
    torch.manual_seed(options.seed)
    model = StageAndHead(last, build_net(options, plain.shape[1], lw), method.pooling)
    model.stage.requires_grad_(True)
    return fit(model, lambda idx: model.describe(inputs, idx), labels, val, class_map(plain, labels, val), options,
               options.epochs, checkpoint, epoch_progress, cancel)


def describe_dataset(dataset: Dataset, method: Method, head, weights_file=None, progress=None):
    """(db, queries) descriptors of `dataset` through the tuned last stage and the head."""
    from .batching import row_items
    from .heads import build_net, TrainOptions

    backbone, frozen, last = _backbone(method.without_head().descriptor_key(), weights_file)
    hp = head.manifest["hyperparameters"]
    net = build_net(TrainOptions(kind=head.kind, dim=head.manifest["dim_out"], hidden=hp["hidden"]),
                    head.manifest["dim_in"], None)
    model = StageAndHead(last, net, method.pooling)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in head.params.items()})
    items = row_items(dataset)
    out = []
    with torch.no_grad():
        for done, (path, bbox) in enumerate(items):
            out.append(model(frozen(_image(backbone, path, method.size, bbox))).numpy())
            if progress:
                progress(done + 1, len(items), f"{method.label()}: tuned last stage")
    out = np.stack(out).astype(np.float32)
    return out[:len(dataset.images)], out[len(dataset.images):]
