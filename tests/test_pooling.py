import math

import numpy as np
import pytest
import torch

from cbir.pooling import channels_last_copy, pool, regional_macs, rmac, rmac_regions
from cbir.whitening import Whitening


def reference_regions(H, W, L=3):
    """A literal transcription of cnnimageretrieval's `roipool` region loop, float32 torch
    arithmetic included (full map first there, last here)."""
    ovr = 0.4
    steps = torch.Tensor([2, 3, 4, 5, 6, 7])
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    _, idx = torch.min(torch.abs(((w ** 2 - w * b) / w ** 2) - ovr), 0)
    Wd = Hd = 0
    if H < W:
        Wd = idx.item() + 1
    elif H > W:
        Hd = idx.item() + 1
    regions = [[0, 0, W, H]]
    for l in range(1, L + 1):
        wl = math.floor(2 * w / (l + 1))
        wl2 = math.floor(wl / 2 - 1)
        b = 0 if l + Wd == 1 else (W - wl) / (l + Wd - 1)
        cenW = torch.floor(wl2 + torch.Tensor(range(l - 1 + Wd + 1)) * b).int() - wl2
        b = 0 if l + Hd == 1 else (H - wl) / (l + Hd - 1)
        cenH = torch.floor(wl2 + torch.Tensor(range(l - 1 + Hd + 1)) * b).int() - wl2
        for i_ in cenH.tolist():
            for j_ in cenW.tolist():
                if wl == 0:
                    continue
                regions.append([j_, i_, wl, wl])
    return regions[1:] + regions[:1]


@pytest.mark.parametrize("h,w", [(24, 32), (32, 24), (10, 10), (1, 1), (2, 3), (3, 100),
                                 (7, 9), (48, 64), (17, 31), (64, 5), (10, 30), (40, 12)])
def test_regions_match_reference_transcription(h, w):
    assert rmac_regions(h, w).tolist() == reference_regions(h, w)


def test_regions_match_reference_on_every_small_map():
    mismatches = [(h, w) for h in range(1, 49) for w in range(1, 49)
                  if rmac_regions(h, w).tolist() != reference_regions(h, w)]
    assert mismatches == []


def test_nine_to_five_tie_resolved_as_the_reference():
    # 10x18: 2 or 3 positions on the long side overlap by 0.6 or 0.2, both 0.2 from 0.4;
    # the reference's float32 arithmetic takes 2 (Tolias' float64 MATLAB would take 3).
    level1 = [r for r in rmac_regions(10, 18).tolist() if r[2] == 10]
    assert level1 == [[0, 0, 10, 10], [8, 0, 10, 10]]


def test_four_by_three_map_has_twenty_regions_plus_full():
    regions = rmac_regions(24, 32)
    assert len(regions) == 21
    sides = [int(r[2]) for r in regions[:-1]]
    assert sides == [24] * 2 + [16] * 6 + [12] * 12
    assert regions[:2].tolist() == [[0, 0, 24, 24], [8, 0, 24, 24]]
    assert regions[-1].tolist() == [0, 0, 32, 24]


def test_square_map_regions_by_hand():
    # 3x3: level 1 = the whole map, level 2 = four 2x2 corners, level 3 = the nine pixels.
    expected = [[0, 0, 3, 3],
                [0, 0, 2, 2], [1, 0, 2, 2], [0, 1, 2, 2], [1, 1, 2, 2],
                *[[x, y, 1, 1] for y in range(3) for x in range(3)],
                [0, 0, 3, 3]]
    assert rmac_regions(3, 3).tolist() == expected


def test_regions_stay_inside_the_map():
    for h, w in [(5, 80), (80, 5), (13, 13), (31, 47)]:
        r = rmac_regions(h, w)
        assert (r[:, :2] >= 0).all()
        assert (r[:, 0] + r[:, 2] <= w).all() and (r[:, 1] + r[:, 3] <= h).all()


def test_invalid_map_size():
    with pytest.raises(ValueError, match="at least 1x1"):
        rmac_regions(0, 5)


def two_by_two():
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])


def unit(*values):
    v = np.array(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_mac_spoc_gem_by_hand():
    fmap = two_by_two()
    np.testing.assert_allclose(pool(fmap, "mac")[0].numpy(), unit(4, 8), rtol=1e-5)
    np.testing.assert_allclose(pool(fmap, "spoc")[0].numpy(), unit(2.5, 2), rtol=1e-5)
    # GeM p=3: ((1 + 8 + 27 + 64) / 4)^(1/3) and ((3 * eps^3 + 512) / 4)^(1/3)
    np.testing.assert_allclose(pool(fmap, "gem")[0].numpy(), unit(25 ** (1 / 3), 128 ** (1 / 3)),
                               rtol=1e-5)


def test_gem_limits():
    fmap = torch.rand(2, 6, 5, 7) + 0.1
    np.testing.assert_allclose(pool(fmap, "gem", p=1.0), pool(fmap, "spoc"), rtol=1e-5)
    np.testing.assert_allclose(pool(fmap, "gem", p=200.0), pool(fmap, "mac"), rtol=2e-2)


def known_region_map():
    """3x3 map: channel 0 fires at (row 0, col 0) and (0, 1); channel 1 at (2, 2)."""
    fmap = torch.zeros(1, 2, 3, 3)
    fmap[0, 0, 0, 0] = fmap[0, 0, 0, 1] = 1.0
    fmap[0, 1, 2, 2] = 1.0
    return fmap


def test_rmac_by_hand():
    # Regions (see test_square_map_regions_by_hand): the whole map twice -> (1, 1)/sqrt2 each;
    # corners: top-left (1, 0), top-right (1, 0), bottom-left 0, bottom-right (0, 1);
    # pixels: (1, 0) twice, (0, 1) once.
    s = 2 / math.sqrt(2)
    np.testing.assert_allclose(pool(known_region_map(), "rmac")[0].numpy(), unit(s + 4, s + 2),
                               rtol=1e-5)


def test_rmac_whitens_each_region_before_summing():
    W = Whitening(mean=np.zeros(2), projection=np.diag([1.0, 2.0]), power=0.5, learned_on="by hand")
    # (1, 1)/sqrt2 -> (1, 2)/sqrt5 twice; (1, 0) four times; (0, 1) twice; zero regions stay 0.
    expected = unit(2 / math.sqrt(5) + 4, 4 / math.sqrt(5) + 2)
    np.testing.assert_allclose(rmac(known_region_map(), whitening=W)[0].numpy(), expected, rtol=1e-5)


def test_regional_macs_rows():
    regions = regional_macs(known_region_map())
    assert regions.shape == (15, 2)
    np.testing.assert_allclose(regions[0].numpy(), unit(1, 1), rtol=1e-5)
    np.testing.assert_allclose(regions[1].numpy(), [1, 0], atol=1e-6)
    assert regions[3].abs().sum() == 0
    with pytest.raises(ValueError, match="one"):
        regional_macs(torch.rand(2, 2, 3, 3))


def test_channels_last_copy_is_the_permuted_map_in_every_input_layout():
    fmap = torch.rand(3, 16, 7, 5)
    expected = fmap.permute(0, 2, 3, 1).contiguous()
    for layout in (fmap, fmap.contiguous(memory_format=torch.channels_last), torch.rand(3, 16, 7, 10)[..., ::2]):
        got = channels_last_copy(layout)
        assert got.is_contiguous() and torch.equal(got, layout.permute(0, 2, 3, 1))
    assert torch.equal(channels_last_copy(fmap), expected)
    nhwc = fmap.contiguous(memory_format=torch.channels_last)
    assert channels_last_copy(nhwc).data_ptr() == nhwc.data_ptr()  # already channels-last: no copy


@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem", "rmac"])
def test_batch_equals_single_and_unit_norm(pooling):
    fmap = torch.rand(3, 16, 24, 32)
    batch = pool(fmap, pooling)
    assert batch.shape == (3, 16)
    np.testing.assert_allclose(batch.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    for i in range(3):
        np.testing.assert_allclose(pool(fmap[i:i + 1], pooling)[0], batch[i], rtol=1e-5, atol=1e-6)


def test_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.rand(1, 2, 3, 3), "max")
    with pytest.raises(ValueError, match="feature map"):
        pool(torch.rand(2, 3, 3), "mac")
