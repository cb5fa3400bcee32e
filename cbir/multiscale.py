"""Descriptors at several image scales, combined as the cnnimageretrieval toolbox does.

`extract_ms` there resizes the normalised input bilinearly (align_corners False) by
each factor, pools each scale's map into an L2-normalised vector v_s, and returns
L2(mean_s v_s^p)^(1/p), with p the GeM exponent for GeM and 1 (a plain sum) for
every other pooling, R-MAC included. One forward per scale feeds every pooling.
The single scale 1 is today's descriptor, bit for bit (no combination step).
"""
from __future__ import annotations

from .method import SINGLE_SCALE

GEM_P = 3.0


def scaled(x, factor: float):
    """The normalised (B, 3, H, W) input at `factor` of its size, as cnnimageretrieval resizes it."""
    if factor == 1.0:
        return x
    import torch.nn.functional as F

    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def combine_exponent(pooling: str) -> float:
    return GEM_P if pooling == "gem" else 1.0


def describe_scales(x, scales: tuple[float, ...], forward, poolers: list[tuple[str, object]]):
    """([(B, D) descriptor per pooler], the feature map at scale 1 or the first scale).

    `poolers` are (pooling name, fmap -> (B, D) L2-normalised descriptor) pairs.
    """
    from .pooling import l2n

    if tuple(scales) == SINGLE_SCALE:
        fmap = forward(x)
        return [pool(fmap) for _, pool in poolers], fmap
    sums, kept = [None] * len(poolers), None
    for factor in scales:
        fmap = forward(scaled(x, factor))
        if kept is None or factor == 1.0:
            kept = fmap
        for j, (name, pool) in enumerate(poolers):
            v = pool(fmap).pow(combine_exponent(name))
            sums[j] = v if sums[j] is None else sums[j] + v
    return [l2n((s / len(scales)).pow(1.0 / combine_exponent(name)))
            for s, (name, _) in zip(sums, poolers)], kept
