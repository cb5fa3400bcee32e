"""Issue 10: no wrong number, no traceback, no trusted tampering, on any cache, bundle or input."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cbir.cache import CacheError, dataset_key, entry_dir, list_entries, load_entry, save_entry
from cbir.data import load_dataset, open_image
from cbir.extraction import load_image
from cbir.method import Method

from dashboard_fixture import build
from synthetic import make_paris_like

RMAC, GEM = Method(pooling="rmac"), Method(pooling="gem")


@pytest.fixture
def cache(tmp_path):
    _, cache_dir, dataset = build(tmp_path)
    return cache_dir, dataset


def rewrite_manifest(entry_path, change) -> None:
    """Apply `change` to the manifest and write it back (a tampering that keeps JSON valid)."""
    path = entry_path / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


# --- silently wrong numbers ---------------------------------------------------------------

def grey_ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    ramp = grey_ramp()
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "wide.png")
    Image.fromarray(ramp).save(tmp_path / "narrow.png")
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    for read in (open_image, lambda p: load_image(p, 1024)):
        wide = np.asarray(read(tmp_path / "wide.png"), np.int16)
        assert np.abs(wide - np.asarray(read(tmp_path / "narrow.png"), np.int16)).max() <= 1
        assert (wide == 255).mean() < 0.05


def test_floating_point_pixels_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((40, 40), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif: floating-point pixels"):
        open_image(tmp_path / "float.tif")


def test_tiny_image_is_skipped_with_its_reason(tmp_path):
    root = make_paris_like(tmp_path / "paris")
    tiny = root / "paris" / "eiffel" / "paris_eiffel_000004.jpg"
    Image.new("RGB", (1, 1), (90, 90, 90)).save(tiny)
    dataset = load_dataset("paris6k", root)
    assert "paris_eiffel_000004" not in dataset.images
    [skipped] = dataset.unreadable
    assert skipped["name"] == "paris_eiffel_000004" and "too small: 1x1 px" in skipped["error"]


@pytest.mark.parametrize("row", [np.zeros(32), np.full(32, 0.97 / np.sqrt(32)), np.full(32, np.nan)])
def test_a_descriptor_that_is_not_unit_is_refused_when_stored(cache, row):
    cache_dir, dataset = cache
    entry = load_entry(cache_dir, dataset, RMAC)
    db = entry.db.copy()
    db[3] = row
    with pytest.raises(ValueError, match=f"descriptor of image {dataset.images[3]} (has norm|is not finite)"):
        save_entry(cache_dir, dataset, GEM, db, entry.queries)
    assert not entry_dir(cache_dir, dataset_key(dataset), GEM).exists()


def test_an_entry_in_another_methods_folder_is_not_used_under_that_name(cache):
    cache_dir, dataset = cache
    key = dataset_key(dataset)
    shutil.copytree(entry_dir(cache_dir, key, RMAC), entry_dir(cache_dir, key, GEM))
    with pytest.raises(CacheError, match="holds tf_efficientnet_lite0 R-MAC 1024px, not tf_efficientnet_lite0 GEM"):
        load_entry(cache_dir, dataset, GEM)
    assert GEM not in list_entries(cache_dir, key)


def test_a_nan_row_with_a_recomputed_checksum_is_refused_naming_the_file(cache):
    cache_dir, dataset = cache
    path = entry_dir(cache_dir, dataset_key(dataset), RMAC)
    db = np.load(path / "db.npy")
    db[5] = np.nan
    np.save(path / "db.npy", db)
    digest = hashlib.sha256((path / "db.npy").read_bytes()).hexdigest()
    rewrite_manifest(path, lambda m: {**m, "files": {**m["files"], "db.npy": digest}})
    with pytest.raises(CacheError, match=r"db.npy: row 5 is not finite"):
        load_entry(cache_dir, dataset, RMAC)
