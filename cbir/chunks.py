"""One extraction chunk from decoded images: batches, forward, poolings, the chunk's arrays.

The in-process extractor (`cbir.extraction`) and the Ray actors (`cbir.distributed`) feed
it the same images in the same order, so they form the same batches and write the same
chunk files: a run can be resumed by either engine and ends with identical descriptors.
"""
from __future__ import annotations

import numpy as np


class SharedRegions:
    """The regional MACs of the last feature map, computed once for the R-MAC heads and the
    whitening sample (the poolers hold this, not the describer: no reference cycle)."""

    def __init__(self):
        self.fmap = self.regions = None

    def of(self, fmap):
        from .extraction import RMAC_LEVELS
        from .pooling import batch_regional_macs

        if self.fmap is not fmap:
            self.fmap, self.regions = fmap, batch_regional_macs(fmap, RMAC_LEVELS)
        return self.regions

    def forget(self) -> None:
        self.fmap = self.regions = None


class ChunkDescriber:
    """Describes decoded (3, h, w) uint8 images with every head; images of equal size share a
    batch (`cbir.batching.SizeBatcher`), flushed at the end of each chunk."""

    def __init__(self, heads, backbone, forward, device, *, batch_pixels: int, region_quota: int,
                 n_db: int):
        from .batching import SizeBatcher
        from .extraction import _pool_head

        self.heads, self.backbone, self.forward, self.device = heads, backbone, forward, device
        self.batcher = SizeBatcher(batch_pixels)
        self.region_quota, self.n_db = region_quota, n_db
        self.stores_regions = any(h.store_regions for h in heads)
        self.regions = SharedRegions()
        self.poolers = [(h.method.pooling, lambda fmap, h=h, shared=self.regions: _pool_head(
            fmap, h, shared.of(fmap) if h.method.pooling == "rmac" else None)) for h in heads]
        self.current: dict[int, tuple] = {}

    def add(self, index: int, tensor, last_of_chunk: bool) -> int:
        """Queue image `index`; returns how many images were described by this call."""
        from .extraction import _region_sample, normalise
        from .multiscale import describe_scales

        described = 0
        for indices, batch in self.batcher.add(index, tensor) + (self.batcher.flush() if last_of_chunk else []):
            x = normalise(batch.to(self.device, non_blocking=True), self.backbone.mean, self.backbone.std,
                          self.forward.input_format)
            descs, fmap = describe_scales(x, self.heads[0].method.scales, self.forward, self.poolers)
            descs = [d.float().cpu().numpy() for d in descs]
            regions = self.regions.of(fmap) if self.stores_regions else None
            for b, i in enumerate(indices):
                self.current[i] = ([d[b] for d in descs], _region_sample(regions[b], i, self.region_quota)
                                   if self.stores_regions and i < self.n_db else None)
            self.regions.forget()
            described += len(indices)
        return described

    def chunk_arrays(self, chunk: range) -> dict[str, np.ndarray]:
        """The arrays of a completed chunk (`d<head>` and, when sampled, `regions`)."""
        arrays = {f"d{j}": np.stack([self.current[i][0][j] for i in chunk]) for j in range(len(self.heads))}
        if self.stores_regions:
            found = [self.current[i][1] for i in chunk if self.current[i][1] is not None]
            arrays["regions"] = (np.concatenate(found) if found
                                 else np.zeros((0, self.backbone.channels), np.float32))
        self.current = {}
        return arrays
