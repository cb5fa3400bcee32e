"""Global descriptors from a CNN feature map: MAC, SPoC, GeM and R-MAC.

Every descriptor is L2-normalised, so a dot product is a cosine similarity.
The R-MAC region grid is Tolias et al.'s, transcribed from the cnnimageretrieval
toolbox (`roipool`/`rmac`), with the full map appended as the last region.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .method import POOLINGS
from .regions import rmac_regions  # the region grid is torch-free (cbir.regions)

if TYPE_CHECKING:
    from .whitening import Whitening

EPS = 1e-6


def l2n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L2-normalise along `dim`; an all-zero vector stays zero instead of becoming NaN."""
    return x / (x.norm(p=2, dim=dim, keepdim=True) + EPS)


def mac(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.amax(dim=(-2, -1))


def spoc(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.mean(dim=(-2, -1))


def gem(fmap: torch.Tensor, p: float = 3.0, eps: float = EPS) -> torch.Tensor:
    """Generalised mean: p = 1 is SPoC, p -> infinity is MAC; clamping keeps the root real."""
    return fmap.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def channels_last_copy(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> contiguous (B, H, W, C); no copy when the map is channels-last already.

    Each map is transposed as a (C, H*W) matrix: torch's 2-D transpose copy takes 0.35 ms for
    a 1280 x 24 x 32 map on one thread, where its 4-D permute copy takes 1.2-1.4 ms."""
    nhwc = fmap.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():
        return nhwc
    b, c, h, w = fmap.shape
    out = fmap.new_empty((b, h, w, c))
    for i in range(b):
        out[i].view(h * w, c).copy_(fmap[i].reshape(c, h * w).t())
    return out


def batch_regional_macs(fmap: torch.Tensor, L: int = 3) -> torch.Tensor:
    """(B, C, H, W) -> (B, R, C): the L2-normalised MAC of every R-MAC region of every map."""
    regions = rmac_regions(*fmap.shape[-2:], L).tolist()
    # Separable max over the ~21 regions: each distinct column band is maxed once, then each
    # region's rows of its band. Channels-last, both reductions run over contiguous channel
    # vectors (20-70x faster than maxing each region slice of an NCHW map).
    nhwc = channels_last_copy(fmap)
    bands = {(x, rw): nhwc[:, :, x:x + rw].amax(dim=2) for x, _, rw, _ in regions}
    vecs = torch.stack([bands[x, rw][:, y:y + rh].amax(dim=1) for x, y, rw, rh in regions], dim=1)
    return l2n(vecs)


def regional_macs(fmap: torch.Tensor, L: int = 3) -> torch.Tensor:
    """(1, C, H, W) or (C, H, W) -> (R, C): the vectors regional whitening is learned on."""
    if fmap.dim() == 3:
        fmap = fmap.unsqueeze(0)
    if fmap.dim() != 4 or fmap.shape[0] != 1:
        raise ValueError(f"expected one (1, C, H, W) feature map, got shape {tuple(fmap.shape)}")
    return batch_regional_macs(fmap, L)[0]


def rmac(fmap: torch.Tensor, L: int = 3, whitening: "Whitening | None" = None,
         regions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, D): per region MAC, L2, optional whitening + L2, sum, L2. `regions`:
    the map's `batch_regional_macs`, when the caller computed them already (extraction keeps a
    sample of them)."""
    if regions is None:
        regions = batch_regional_macs(fmap, L)
    if whitening is not None:
        from .whitening import apply_whitening

        b, r, c = regions.shape
        flat = apply_whitening(regions.reshape(b * r, c).detach().cpu().numpy(), whitening)
        regions = torch.from_numpy(flat).to(fmap.device).reshape(b, r, -1)
    return l2n(regions.sum(dim=1))


def pool(fmap: torch.Tensor, pooling: str, p: float = 3.0) -> torch.Tensor:
    """(B, C, H, W) feature maps -> (B, C) L2-normalised descriptors."""
    if fmap.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(fmap.shape)}")
    if pooling == "mac":
        return l2n(mac(fmap))
    if pooling == "spoc":
        return l2n(spoc(fmap))
    if pooling == "gem":
        return l2n(gem(fmap, p))
    if pooling == "rmac":
        return rmac(fmap)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
