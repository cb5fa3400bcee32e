"""Published full-list mAP figures, shown beside ours where the method matches.

Numbers from REFERENCE.md ("Published numbers"): the seed study's EfficientNet-B1
rows and a few well-known references. They are full-Paris6k / full-Oxford figures
(all 55 queries, 6392 images): figures measured on a partial copy such as
Paris6k-250 are not comparable with them, and every view that shows both says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from .method import Method


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


def published_for(dataset: str, method: Method) -> Published | None:
    """The published result for this dataset and method (backbone, pooling, re-ranking), if any.

    timm's `tf_` ports carry the same architecture and weights as the papers' models.
    """
    for row in PUBLISHED:
        if (row.dataset == dataset and row.backbone == method.backbone.removeprefix("tf_")
                and row.pooling == method.pooling and row.rerank == method.rerank
                and method.whitening == "none" and method.weights == "imagenet"):
            return row
    return None


def seed_study_for(method: Method) -> Published | None:
    """The seed study's figure for the same pooling and re-ranking, whatever the backbone
    (it reports EfficientNet-B1 only): the column the study's tables put beside ours."""
    for row in PUBLISHED:
        if (row.source == "seed study" and row.pooling == method.pooling and row.rerank == method.rerank
                and method.whitening == "none" and method.weights == "imagenet"):
            return row
    return None
