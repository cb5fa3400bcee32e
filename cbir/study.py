"""Published figures: the seed study's whole table, and a few well-known references.

`SEED_TABLE` is the seed study's published table exactly as printed (percent): its
mAP@10, mAP@100 and "mAP (at all dataset)" columns are the study's own AP@k variant
(`cbir.metrics.seed_map_at_k`), so they sit beside our *seed* columns. `PUBLISHED` holds the
figures REFERENCE.md lists as full-list reference mAP; it lists the seed study's EfficientNet-B1
SPoC / R-MAC / R-MAC + diffusion among them (68.7 / 74.4 / 86.0, its "mAP (at all dataset)"
rounded), so those three also stand beside the reference mAP, as REFERENCE.md has them. All are
full-Paris6k figures (55 queries, 6392 images): figures measured on a partial copy such
as Paris6k-250 are not comparable with them, and every view that shows both says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from .method import STUDY_BACKBONES, Method, short_backbone


@dataclass(frozen=True)
class Published:
    dataset: str
    backbone: str
    pooling: str
    rerank: str
    map: float
    source: str
    note: str = ""


PUBLISHED = (
    Published("paris6k", "efficientnet_b1", "spoc", "none", 68.7, "seed study"),
    Published("paris6k", "efficientnet_b1", "rmac", "none", 74.4, "seed study"),
    Published("paris6k", "efficientnet_b1", "rmac", "diffusion", 86.0, "seed study"),
    Published("paris6k", "vgg16", "rmac", "none", 83.5, "Tolias et al. 2016",
              "off-the-shelf, no query box"),
)

NOT_COMPARABLE = ("Published figures are for the full benchmark (all queries, all images); "
                  "figures on a partial copy such as Paris6k-250 are not comparable with them.")


@dataclass(frozen=True)
class SeedRow:
    """One row of the seed study's table (Paris6k, percent, as published)."""
    backbone: str
    pooling: str
    rerank: str
    map_at_10: float
    map_at_100: float
    map_all: float
    dim: int
    params: int | None

    @property
    def name(self) -> str:
        return f"{STUDY_BACKBONES[self.backbone]} {STUDY_POOLINGS[(self.pooling, self.rerank)]}"


STUDY_POOLINGS = {("mac", "none"): "max", ("spoc", "none"): "average", ("rmac", "none"): "R-MAC",
                  ("rmac", "diffusion"): "R-MAC + diffusion"}

SEED_TABLE = (
    SeedRow("vgg16", "mac", "none", 92.41, 66.37, 60.3, 512, 138_357_544),
    SeedRow("vgg16", "spoc", "none", 84.26, 45.89, 40.83, 512, 138_357_544),
    SeedRow("resnet50", "mac", "none", 81.67, 45.94, 42.53, 2048, 25_636_712),
    SeedRow("resnet50", "spoc", "none", 52.06, 56.3, 52.06, 2048, 25_636_712),
    SeedRow("efficientnet_b1", "mac", "none", 89.44, 59.94, 54.18, 1280, 7_856_239),
    SeedRow("efficientnet_b1", "spoc", "none", 93.15, 71.3, 68.74, 1280, 7_856_239),
    SeedRow("vgg16", "rmac", "none", 80.19, 71.06, 63.69, 512, None),
    SeedRow("resnet50", "rmac", "none", 95, 71.52, 67.74, 2048, None),
    SeedRow("efficientnet_b1", "rmac", "none", 94.81, 75.17, 74.43, 1280, None),
    SeedRow("vgg16", "rmac", "diffusion", 80, 80.07, 78.11, 512, None),
    SeedRow("resnet50", "rmac", "diffusion", 95, 82.43, 82.54, 2048, None),
    SeedRow("efficientnet_b1", "rmac", "diffusion", 94.81, 83.65, 86.03, 1280, None),
)
ODD_ROWS = {("resnet50", "spoc", "none"): "as published: mAP@10 below mAP@100, which the study's "
            "definition does not allow for one ranking; kept unchanged"}

# Backbones the study did not use, and the study row we put them beside (same family).
STUDY_STAND_IN = {"tf_efficientnet_lite0": "efficientnet_b1", "tf_efficientnet_lite1": "efficientnet_b1",
                  "tf_efficientnet_lite2": "efficientnet_b1", "tf_efficientnet_b1": "efficientnet_b1"}



def comparable_method(method: Method) -> bool:
    """Published figures are for ImageNet weights without whitening."""
    return method.whitening == "none" and method.weights == "imagenet"


def published_for(dataset: str, method: Method) -> Published | None:
    """The published result for this dataset and method (backbone, pooling, re-ranking), if any.

    timm's `tf_` ports carry the same architecture and weights as the papers' models.
    """
    for row in PUBLISHED:
        if (row.dataset == dataset and row.backbone == method.backbone.removeprefix("tf_")
                and row.pooling == method.pooling and row.rerank == method.rerank
                and comparable_method(method)):
            return row
    return None


def study_row_for(method: Method) -> tuple[SeedRow, str] | None:
    """The seed study's table row for this method, and how it was matched.

    The match is the same backbone, or for a backbone the study did not use, its stand-in
    (said explicitly, e.g. "Lite0 vs the study's EfficientNet-B1"); same pooling and
    re-ranking; ImageNet weights, no whitening. GeM and other re-rankings have no row.
    """
    if not comparable_method(method):
        return None
    own = method.backbone.removeprefix("tf_") if method.backbone.removeprefix("tf_") in STUDY_BACKBONES else None
    backbone = own or STUDY_STAND_IN.get(method.backbone)
    for row in SEED_TABLE:
        if (row.backbone, row.pooling, row.rerank) == (backbone, method.pooling, method.rerank):
            if own:
                return row, f"same backbone ({row.name})"
            return row, f"{short_backbone(method.backbone)} vs the study's {row.name}"
    return None


def study_columns(dataset: str, method: Method) -> dict:
    """The seed study's figures for the same columns (Paris6k only), and which row they are."""
    found = study_row_for(method) if dataset == "paris6k" else None
    if found is None:
        return {"study mAP@10": None, "study mAP@100": None, "study mAP (all)": None, "study row": None,
                "study dim": None}
    row, match = found
    note = ODD_ROWS.get((row.backbone, row.pooling, row.rerank))
    return {"study mAP@10": row.map_at_10, "study mAP@100": row.map_at_100, "study mAP (all)": row.map_all,
            "study row": f"{match}; {note}" if note else match, "study dim": row.dim}
