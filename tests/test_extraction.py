"""Extraction: what the model sees, one pass for many poolings, resume after a kill, rebuilds."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import cbir.backbones  # noqa: E402
from cbir.cache import CacheError, load_entry, load_entry_array, partial_dir  # noqa: E402
from cbir.data import Dataset, Query, load_dataset  # noqa: E402
from cbir.extraction import (REGIONS_FILE, ExtractionCancelled, ensure_descriptors, entry_whitening,  # noqa: E402
                             extract, image_tensor, load_image)
from cbir.method import Method  # noqa: E402
from synthetic import make_paris_like, record_model_inputs, truncate_file, write_jpeg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def run(dataset, methods, cache, **options):
    """`extract` with one torch thread, no worker process and the torch runtime (no conversion):
    fast and steady on a busy machine. tests/test_runtime.py covers the other runtime."""
    return extract(dataset, methods, cache, **({"workers": 0, "threads": 1, "runtime": "torch"} | options))


def lite(pooling: str, **kw) -> Method:
    return Method(backbone="tf_efficientnet_lite0", pooling=pooling, size=SIZE, weights="random", **kw)


@pytest.fixture(scope="module")
def paris_like(tmp_path_factory) -> Dataset:
    """18 database images (96x72) and 3 cropped queries in the Paris6k layout."""
    return load_dataset("paris6k", make_paris_like(tmp_path_factory.mktemp("paris-like")))


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.broadcast_to((x + y) / 2, (height, width, 3)).astype(np.uint8))


# --- what the model sees --------------------------------------------------------------

def test_load_image_downscales_longer_side_keeping_aspect(tmp_path):
    path = write_jpeg(tmp_path / "wide.jpg", gradient_image(300, 200))
    assert load_image(path, 128).size == (128, 85)
    assert load_image(path, 300).size == (300, 200)


def test_load_image_never_upscales_nor_changes_pixels_that_fit(tmp_path):
    path = tmp_path / "small.png"
    gradient_image(100, 50).save(path)
    image = load_image(path, 1024)
    assert image.size == (100, 50)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))


def test_query_crop_is_scaled_by_the_full_image_factor(tmp_path):
    path = tmp_path / "scene.png"
    gradient_image(400, 300).save(path)
    # Full image 400x300 at max side 200: factor 0.5. The 200x200 box becomes 100x100,
    # not 200x200 (which resizing the crop to max side 200 would give).
    assert load_image(path, 200, (100, 50, 300, 250)).size == (100, 100)
    assert load_image(path, 200).size == (200, 150)
    # No downscaling needed: the crop is the box's pixels, untouched.
    crop = load_image(path, 1024, (100, 50, 300, 250))
    assert np.array_equal(np.asarray(crop), np.asarray(Image.open(path).convert("RGB"))[50:250, 100:300])


def test_empty_query_box_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "scene.png"
    gradient_image(40, 30).save(path)
    with pytest.raises(ValueError, match="scene.png: query box .* is empty"):
        load_image(path, 64, (50, 10, 60, 20))


def test_image_tensor_uses_the_backbone_normalisation():
    image = Image.fromarray(np.full((2, 3, 3), 255, np.uint8))
    x = image_tensor(image, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert x.shape == (3, 2, 3)
    assert torch.allclose(x[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_model_receives_whole_images_and_scaled_query_crops(tmp_path, monkeypatch):
    """Through extract: no centre crop, no square, no upscaling; the query crop keeps its image's factor."""
    root = tmp_path / "imgs"
    sizes = [(160, 120), (90, 200), (40, 30)]
    for i, (w, h) in enumerate(sizes):
        write_jpeg(root / f"im{i}.jpg", gradient_image(w, h))
    dataset = Dataset(name="folder", root=str(root), images=["im0", "im1", "im2"],
                      paths=["im0.jpg", "im1.jpg", "im2.jpg"], labels=["a", "b", "c"],
                      queries=[Query("im0", 0, "im0.jpg", (20.0, 10.0, 100.0, 90.0)), Query("im2", 2, "im2.jpg")],
                      gnd={"class": [{"ok": np.array([0]), "junk": np.array([], np.int64)}] * 2},
                      n_images_total=3, n_queries_total=2)
    shapes = record_model_inputs(monkeypatch)
    run(dataset, [lite("mac")], tmp_path / "cache")
    # 160x120 at 64: factor 0.4 -> 64x48; 90x200 -> 29x64; 40x30 fits (kept);
    # query box 80x80 of the 160x120 image, factor 0.4 -> 32x32; the second query is the whole
    # database image im2, described once and its row reused.
    assert shapes == [(1, 3, 48, 64), (1, 3, 64, 29), (1, 3, 30, 40), (1, 3, 32, 32)]


# --- one pass, several poolings -------------------------------------------------------

def test_several_poolings_from_one_pass_equal_separate_runs(paris_like, tmp_path, monkeypatch):
    shapes = record_model_inputs(monkeypatch)
    together = run(paris_like, [lite("mac"), lite("gem"), lite("rmac")], tmp_path / "a")
    n_items = len(paris_like.images) + len(paris_like.queries)
    assert sum(s[0] for s in shapes) == n_items  # one forward pass (batched) for the three poolings
    for pooling in ("gem", "rmac"):
        alone = run(paris_like, [lite(pooling)], tmp_path / pooling)[lite(pooling)]
        assert np.array_equal(together[lite(pooling)].db, alone.db)
        assert np.array_equal(together[lite(pooling)].queries, alone.queries)
    mac = together[lite("mac")]
    assert mac.db.shape == (len(paris_like.images), 1280) and mac.db.dtype == np.float32
    assert np.allclose(np.linalg.norm(mac.db, axis=1), 1, atol=1e-5)
    assert not np.array_equal(mac.db, together[lite("gem")].db)


def test_manifest_records_provenance_and_rmac_keeps_a_regional_sample(paris_like, tmp_path):
    entry = run(paris_like, [lite("rmac")], tmp_path)[lite("rmac")]
    m = entry.manifest
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["cbir"]
    assert m["image_size"] == SIZE and m["n_images"] == len(paris_like.images)
    assert m["weights_source"].startswith("random") and m["extraction_seconds"] > 0
    assert m["skipped_images"] == [] and m["missing_images"] == len(paris_like.missing)
    regions = load_entry_array(entry, REGIONS_FILE)
    assert regions.shape[1] == 1280 and len(regions) == m["regions_sample"] >= len(paris_like.images)
    assert np.allclose(np.linalg.norm(regions, axis=1), 1, atol=1e-4)
    assert not partial_dir(tmp_path, paris_like, "x").parent.exists()  # partial chunks cleaned up


def test_float16_storage(paris_like, tmp_path):
    full = run(paris_like, [lite("gem")], tmp_path / "f32")[lite("gem")]
    half = run(paris_like, [lite("gem")], tmp_path / "f16", dtype="float16")[lite("gem")]
    assert half.db.dtype == np.float16 and half.queries.dtype == np.float16
    assert half.manifest["dtype"] == "float16"
    assert np.allclose(half.db.astype(np.float32), full.db, atol=2e-3)
    assert load_entry(tmp_path / "f16", paris_like, lite("gem")).db.dtype == np.float16


# --- resume ------------------------------------------------------------------------------

KILLABLE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from cbir.data import Dataset
from cbir.extraction import extract
from cbir.method import Method
ds = Dataset.load(Path({dataset!r}))
methods = [Method(backbone="tf_efficientnet_lite0", pooling=p, size={size}, weights="random")
           for p in ("gem", "rmac")]
extract(ds, methods, Path({cache!r}), progress=lambda done, total, stage: time.sleep(0.3),
        workers=1, chunk_size=3, threads=1, runtime="torch")
"""


def test_killed_extraction_resumes_to_identical_descriptors(paris_like, tmp_path):
    methods = [lite("gem"), lite("rmac")]
    paris_like.save(tmp_path / "dataset.json")
    cache = tmp_path / "killed"
    script = KILLABLE.format(root=str(ROOT), dataset=str(tmp_path / "dataset.json"), size=SIZE, cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    chunks = []
    while time.time() < deadline and proc.poll() is None:
        chunks = list(cache.glob("*/.partial/*/chunk-*.npz"))
        if len(chunks) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"extraction ended before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(chunks) >= 2 and not list(cache.glob("*/*/manifest.json"))

    seen = []
    resumed = run(paris_like, methods, cache, progress=lambda d, t, s: seen.append(d), workers=1,
                      chunk_size=3)
    fresh = run(paris_like, methods, tmp_path / "fresh", workers=1, chunk_size=3)
    assert seen[0] >= 6  # started from the chunks the killed run had written
    assert resumed[lite("gem")].manifest["resumed_items"] >= 6
    for m in methods:
        assert np.array_equal(resumed[m].db, fresh[m].db)
        assert np.array_equal(resumed[m].queries, fresh[m].queries)
    assert np.array_equal(load_entry_array(resumed[lite("rmac")], REGIONS_FILE),
                          load_entry_array(fresh[lite("rmac")], REGIONS_FILE))
    assert not list(cache.glob("*/.partial/*"))


def test_cancelled_extraction_keeps_chunks_and_resumes(paris_like, tmp_path):
    cancel = threading.Event()

    def stop_in_first_chunk(done, total, stage):
        if done >= 3:  # the first chunk's 4 equal-size images come as one batch
            cancel.set()

    with pytest.raises(ExtractionCancelled, match="next run resumes"):
        run(paris_like, [lite("spoc")], tmp_path / "c", progress=stop_in_first_chunk, cancel=cancel,
                workers=0, chunk_size=4)
    assert len(list((tmp_path / "c").glob("*/.partial/*/chunk-*.npz"))) == 1
    assert not is_cached(tmp_path / "c", paris_like, lite("spoc"))
    resumed = run(paris_like, [lite("spoc")], tmp_path / "c", chunk_size=4)[lite("spoc")]
    fresh = run(paris_like, [lite("spoc")], tmp_path / "f", chunk_size=4)[lite("spoc")]
    assert resumed.manifest["resumed_items"] == 4
    assert np.array_equal(resumed.db, fresh.db) and np.array_equal(resumed.queries, fresh.queries)


def test_chunks_of_another_run_are_not_mixed_in(paris_like, tmp_path):
    """A partial run with another chunking (another fingerprint) is discarded, not reused."""
    cancel = threading.Event()
    with pytest.raises(ExtractionCancelled):
        run(paris_like, [lite("mac")], tmp_path, progress=lambda d, t, s: d >= 5 and cancel.set(),
                cancel=cancel, chunk_size=5)
    entry = run(paris_like, [lite("mac")], tmp_path, chunk_size=4)[lite("mac")]
    assert entry.manifest["resumed_items"] == 0


# --- rebuilds and failures ------------------------------------------------------------------

def test_truncated_cache_file_is_detected_and_rebuilt(paris_like, tmp_path, caplog):
    original = run(paris_like, [lite("mac")], tmp_path)[lite("mac")]
    truncate_file(original.path / "db.npy")
    with caplog.at_level(logging.WARNING, logger="cbir.extraction"):
        rebuilt = ensure_descriptors(paris_like, lite("mac"), tmp_path, threads=1, runtime="torch")
    assert "rebuilding defective cache entry" in caplog.text and "db.npy" in caplog.text
    assert np.array_equal(rebuilt.db, original.db)
    assert np.array_equal(load_entry(tmp_path, paris_like, lite("mac")).db, original.db)


def test_ensure_descriptors_loads_a_valid_entry_without_extracting(paris_like, tmp_path, monkeypatch):
    run(paris_like, [lite("spoc")], tmp_path)
    monkeypatch.setattr(cbir.backbones, "load_backbone", lambda *a, **k: pytest.fail("re-extracted"))
    entry = ensure_descriptors(paris_like, lite("spoc").with_rerank("diffusion"), tmp_path)
    assert entry.db.shape == (len(paris_like.images), 1280)


def test_missing_weights_fail_with_how_to_get_them(paris_like, tmp_path, monkeypatch):
    monkeypatch.setattr(cbir.backbones, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-cache"))
    method = Method(backbone="resnet50", pooling="gem", size=SIZE, weights="imagenet")
    with pytest.raises(cbir.backbones.WeightsUnavailable, match="--weights-file"):
        run(paris_like, [method], tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/*/manifest.json"))


def test_image_unreadable_at_extraction_time_fails_loudly(tmp_path):
    root = make_paris_like(tmp_path / "data")
    dataset = load_dataset("paris6k", root)
    truncate_file(dataset.image_path(4), keep=0.3)
    with pytest.raises(RuntimeError, match=f"{dataset.images[4]}.jpg: unreadable image.*reload"):
        run(dataset, [lite("mac")], tmp_path / "cache", workers=1, chunk_size=2)
    assert len(list((tmp_path / "cache").glob("*/.partial/*/chunk-*.npz"))) == 2  # the work before it is kept


# --- whitening ------------------------------------------------------------------------------

def test_transductive_post_hoc_whitening_is_labelled_and_reproducible(paris_like, tmp_path):
    from cbir.whitening import apply_whitening, learn_whitening

    method = lite("gem", whitening="pca-partial")
    entry = run(paris_like, [method], tmp_path)[method]
    base = load_entry(tmp_path, paris_like, lite("gem"))  # computed on the way, and cached
    info = entry.manifest["whitening"]
    assert info["transductive"] and info["power"] == 0.25 and info["learned_on"] == entry.manifest["dataset_key"]
    expected = learn_whitening(base.db, power=0.25)
    assert np.allclose(entry.db, apply_whitening(base.db, expected), atol=1e-5)
    assert np.allclose(entry.queries, apply_whitening(base.queries, entry_whitening(entry)), atol=1e-6)
    assert "transductive" in method.label()
    for own in (paris_like.name, entry.manifest["dataset_key"]):
        with pytest.raises(ValueError, match="leave --whiten-on empty"):
            run(paris_like, [lite("gem", whitening="pca-partial", whiten_on=own)], tmp_path)


def test_rmac_whitening_learned_on_another_dataset_applies_per_region(paris_like, tmp_path):
    other = load_dataset("paris6k", make_paris_like(tmp_path / "other", landmarks=("eiffel", "pompidou"),
                                                    per_landmark=5, seed=3))
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="extract"):
        run(paris_like, [lite("rmac", whitening="pca", whiten_on="paris6k-00000000")], cache)
    source = run(other, [lite("rmac")], cache)[lite("rmac")]
    key = source.manifest["dataset_key"]
    method = lite("rmac", whitening="pca", whiten_on=key)
    entry = run(paris_like, [method], cache)[method]
    info = entry.manifest["whitening"]
    assert not info["transductive"] and info["learned_on"] == key and "regional MACs" in info["learned_from"]
    whitening = entry_whitening(entry)
    # Learned on 10 images x 21 regions: only the non-degenerate components are kept.
    assert whitening.mean.shape == (1280,) and entry.db.shape == (len(paris_like.images), whitening.dim)
    assert np.allclose(np.linalg.norm(entry.db, axis=1), 1, atol=1e-5)


# --- CLI --------------------------------------------------------------------------------------

def test_cli_extract_then_warm_evaluate_without_torch(tmp_path):
    root = make_paris_like(tmp_path / "data")
    cache = tmp_path / "cache"
    common = ["--dataset", "paris6k", "--root", str(root), "--size", str(SIZE), "--weights", "random",
              "--cache", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "cbir", "extract", *common, "--pooling", "mac", "rmac",
                          "--workers", "0", "--threads", "1", "--runtime", "torch"], capture_output=True, text=True, env=env, check=True)
    entries = json.loads(out.stdout)["entries"]
    assert [e["n_images"] for e in entries] == [18, 18]
    probe = ("import runpy, sys; sys.argv = ['cbir', 'evaluate'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('cbir', run_name='__main__')\n"
             "except SystemExit as e:\n    assert e.code == 0, e.code\n"
             "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'warm evaluate imported torch'\n")
    out = subprocess.run([sys.executable, "-c", probe, *common, "--pooling", "rmac"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["protocol"] == "original" and report["n_queries"] == 3
    assert report["mAP"] > 0.8  # the synthetic landmarks are easy even for random weights
    assert report["cache_entry"].endswith("tf_efficientnet_lite0-rmac-64-random-none")


def test_python_m_cbir_exits_with_the_commands_status_and_one_error_line(tmp_path):
    """`cbir/__main__.py` freezes the collector before exiting: the status and message still pass."""
    out = subprocess.run([sys.executable, "-m", "cbir", "evaluate", "--dataset", "paris6k", "--root",
                          str(tmp_path / "nope"), "--cache", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr


def test_cli_reports_missing_root_as_error(tmp_path, capsys):
    from cbir.cli import main

    assert main(["evaluate", "--dataset", "paris6k", "--root", str(tmp_path / "nope"), "--cache",
                 str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


# --- real data ----------------------------------------------------------------------------------

REFERENCE_MAP = {"mac": 0.75, "spoc": 0.77, "gem": 0.83, "rmac": 0.87}


def test_paris250_lite0_reaches_reference_map(paris250_lite0_cache):
    """EfficientNet-Lite0, max side 1024, cropped queries, no whitening, original protocol:
    an independent reference implementation gets MAC 0.762, SPoC 0.782, GeM 0.836, R-MAC 0.874."""
    from cbir.metrics import evaluation_report
    from cbir.rerank import rerank

    dataset, cache = paris250_lite0_cache
    for pooling, minimum in REFERENCE_MAP.items():
        method = Method(backbone="tf_efficientnet_lite0", pooling=pooling, size=1024)
        entry = load_entry(cache, dataset, method)
        report = evaluation_report(rerank(method, entry.db, entry.queries), dataset, "original")
        assert report["n_queries"] == 12 and report["n_images"] == 250
        assert report["mAP"] >= minimum, (pooling, report["mAP"])


def is_cached(cache, dataset, method) -> bool:
    try:
        load_entry(cache, dataset, method)
    except CacheError:
        return False
    return True


def test_prefetched_decoding_keeps_order_and_raises_at_the_failing_item():
    from cbir.batching import prefetched

    class Decoded:
        def __init__(self, fail_at=None):
            self.fail_at = fail_at

        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == self.fail_at:
                raise OSError(f"disk error at {i}")
            return i * i

    assert list(prefetched(Decoded(), depth=2)) == [i * i for i in range(10)]
    seen = []
    with pytest.raises(OSError, match="disk error at 6"):
        for value in prefetched(Decoded(fail_at=6), depth=3):
            seen.append(value)
    assert seen == [i * i for i in range(6)]
    early = prefetched(Decoded(), depth=2)
    assert next(early) == 0
    early.close()  # leaving early stops the decoding thread
    assert not any(t.name == "cbir-decode" for t in threading.enumerate())
