"""The name of a retrieval method, and the cache key of its descriptors.

A method is backbone x weights x image size x pooling x whitening x trained head
(cbir.heads) x re-ranking, plus the forward precision and image scales (appended last; at
their defaults, fp32 and the single scale 1, names and cache keys are those of before).
Descriptors depend on all but the re-ranking, so `descriptor_key()` drops it: every
re-ranking of the same descriptors shares one cache entry.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace

POOLINGS = ("mac", "spoc", "gem", "rmac")
POOLING_NAMES = {"mac": "MAC", "spoc": "SPoC", "gem": "GeM", "rmac": "R-MAC"}
REFERENCE_SIZE = 1024  # max image side of the references' protocol
WHITENINGS = ("none", "pca", "pca-partial")
RERANKINGS = ("none", "diffusion", "aqe", "qe", "kreciprocal", "fsr")
GRAPH_RERANKINGS = ("diffusion", "fsr")  # ranked on the mutual kNN graph with alpha, k, kq, gamma
STUDY_BACKBONES = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "efficientnet_b1": "EfficientNet-B1"}
SHORT_BACKBONES = {"tf_efficientnet_lite0": "Lite0", "tf_efficientnet_lite1": "Lite1",
                   "tf_efficientnet_lite2": "Lite2", "tf_efficientnet_b1": "EfficientNet-B1", **STUDY_BACKBONES}


def short_backbone(name: str) -> str:
    """What users call a backbone ("Lite0" for timm's tf_efficientnet_lite0); other timm names as they are."""
    return SHORT_BACKBONES.get(name, name)
PRECISIONS = ("fp32", "bf16")
SINGLE_SCALE = (1.0,)


@dataclass(frozen=True)
class Method:
    backbone: str = "tf_efficientnet_lite0"
    pooling: str = "rmac"
    size: int = 1024
    weights: str = "imagenet"
    whitening: str = "none"
    whiten_on: str = ""
    rerank: str = "none"
    alpha: float = 0.99
    k: int = 50
    kq: int = 10
    gamma: float = 3.0
    qe_n: int = 10
    k1: int = 20
    k2: int = 6
    kr_lambda: float = 0.3
    fsr_rank: int = 256
    head: str = ""
    head_transductive: bool = False
    precision: str = "fp32"
    scales: tuple[float, ...] = SINGLE_SCALE

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {POOLINGS}")
        if self.whitening not in WHITENINGS:
            raise ValueError(f"unknown whitening {self.whitening!r}; choose one of {WHITENINGS}")
        if self.rerank not in RERANKINGS:
            raise ValueError(f"unknown re-ranking {self.rerank!r}; choose one of {RERANKINGS}")
        if self.size <= 0:
            raise ValueError(f"image size must be positive, got {self.size}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {self.alpha}")
        if self.k < 1 or self.kq < 1 or self.qe_n < 1:
            raise ValueError("k, kq and qe_n must be at least 1")
        if self.k1 < 1 or self.k2 < 1 or self.fsr_rank < 1:
            raise ValueError("k1, k2 and fsr_rank must be at least 1")
        if not 0.0 <= self.kr_lambda <= 1.0:
            raise ValueError(f"k-reciprocal lambda must lie in [0, 1], got {self.kr_lambda}")
        if self.head_transductive and not self.head:
            raise ValueError("head_transductive needs a head")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive factors, got {self.scales}")
        if self.head:
            self.check_head_base()

    def check_head_base(self) -> None:
        """Heads (cbir.heads) run the backbone themselves, at one scale in float32 (regional MACs,
        unfrozen training, an upload): on a multi-scale or bf16 method they would silently
        describe something else than its cached descriptors, so such a base is refused."""
        if self.scales != SINGLE_SCALE or self.precision != "fp32":
            raise ValueError("heads are trained and applied on single-scale float32 descriptors; "
                             f"not on scales {self.scales} / precision {self.precision}")

    def descriptor_key(self) -> "Method":
        """The part of the method that determines the descriptors (the cache key)."""
        return Method(self.backbone, self.pooling, self.size, self.weights,
                      self.whitening, self.whiten_on, head=self.head,
                      head_transductive=self.head_transductive, precision=self.precision, scales=self.scales)

    def without_head(self) -> "Method":
        """The method whose descriptors a trained head (cbir.heads) is applied to."""
        return replace(self, head="", head_transductive=False)

    def slug(self) -> str:
        """File-system-safe id of the descriptor part, e.g. `tf_efficientnet_lite0-rmac-1024-imagenet-none`
        (a trained head adds `-head_NAME`)."""
        parts = [self.backbone, self.pooling, str(self.size), self.weights, self.whitening]
        if self.whitening != "none":
            parts.append(self.whiten_on or "transductive")
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.scales != SINGLE_SCALE:
            parts.append("ms" + "_".join(f"{s:g}" for s in self.scales))
        if self.head:
            parts.append(f"head_{self.head}" + ("_transductive" if self.head_transductive else ""))
        return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p) for p in parts)

    def label(self) -> str:
        """Short and distinguishable: "Lite0 R-MAC +diffusion(a=0.99, k=50)"; the image size only
        where it is not the reference protocol's 1024 px."""
        text = f"{short_backbone(self.backbone)} {POOLING_NAMES[self.pooling]}"
        if self.size != REFERENCE_SIZE:
            text += f" {self.size}px"
        if self.weights != "imagenet":
            text += f" [{self.weights} weights]"
        if self.scales != SINGLE_SCALE:
            text += f" ms({','.join(f'{s:g}' for s in self.scales)})"
        if self.precision != "fp32":
            text += f" [{self.precision}]"
        if self.whitening != "none":
            text += f" +{self.whitening}({self.whiten_on or 'transductive'})"
        if self.head:
            text += f" + head {self.head}" + (" (transductive)" if self.head_transductive else "")
        if self.rerank == "diffusion":
            text += f" +diffusion(a={self.alpha:g}, k={self.k})"
        elif self.rerank == "fsr":
            text += f" +FSR(a={self.alpha:g}, k={self.k}, r={self.fsr_rank})"
        elif self.rerank == "kreciprocal":
            text += f" +k-reciprocal(k1={self.k1}, k2={self.k2}, lambda={self.kr_lambda:g})"
        elif self.rerank != "none":
            text += f" +{self.rerank.upper()}(n={self.qe_n})"
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Method":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown method fields: {sorted(unknown)}")
        return cls(**data)

    def with_rerank(self, rerank: str, **params) -> "Method":
        return replace(self, rerank=rerank, **params)
