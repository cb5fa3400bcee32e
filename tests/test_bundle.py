"""Bundles: complete, checksummed, refused when tampered; the study report from the cache."""
import json
from pathlib import Path

import numpy as np
import pytest

from cbir.bundle import BundleError, build_bundle, thumbnail_path, verify_bundle
from cbir.cache import CacheError, dataset_dir, list_datasets, load_entry
from cbir.evaluation import overview_methods, stored_diffusion_grid, stored_report
from cbir.metrics import evaluation_report
from cbir.method import Method
from cbir.report import study_tables, to_csv, to_markdown
from cbir.rerank import rerank
from cbir.study import ODD_ROWS, SEED_TABLE, published_for, study_row_for

from dashboard_fixture import METHODS, build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(tmp_path):
    data_dir, cache_dir, dataset = build(tmp_path)
    return cache_dir, dataset


@pytest.fixture
def bundle(small, tmp_path):
    cache_dir, dataset = small
    out = tmp_path / "bundle"
    manifest = build_bundle(cache_dir, dataset, list(METHODS), out, layouts=False)
    return out, manifest, dataset


def test_bundle_holds_what_the_dashboard_reads(bundle):
    out, manifest, dataset = bundle
    assert verify_bundle(out)["files"] == manifest["files"]
    [(key, shared)] = list_datasets(out).items()
    assert shared.root == "" and shared.images == dataset.images
    key_dir = dataset_dir(out, shared)
    for name in dataset.images:
        assert thumbnail_path(key_dir, name).stat().st_size > 0
    originals = json.loads((key_dir / "thumbs.json").read_text())["original_size"]
    assert originals[dataset.images[0]] == [64, 48]
    for method in METHODS:
        entry = load_entry(out, shared, method)
        assert entry.db.dtype == np.float16
        grid = json.loads((entry.path / "grid-original.json").read_text())
        assert max(grid["ks"]) < len(dataset.images)
        # FSR's eigenpairs and the neighbour list, checksummed in bundle.json like the rest.
        slug_dir = entry.path.relative_to(out).as_posix()
        stored = {name for name in manifest["files"] if name.startswith(slug_dir + "/")}
        assert {f"{slug_dir}/neighbours-K{len(dataset.images) - 1}.npz",
                f"{slug_dir}/spectrum-k{len(dataset.images) - 1}-g3-r{len(dataset.images)}.npz"} <= stored
    assert manifest["total_bytes"] == sum(f["bytes"] for f in manifest["files"].values())


def test_bundle_stores_the_overview_evaluations(small, bundle):
    """The Overview reads every method's report from the bundle: a cold start ranks nothing."""
    cache_dir, dataset = small
    out, _, _ = bundle
    shared = next(iter(list_datasets(out).values()))

    def must_not_rank():
        raise AssertionError("ranked although the report is stored")
    for method in METHODS:
        half = load_entry(out, shared, method)
        full = load_entry(cache_dir, dataset, method)
        for shown in overview_methods(method, len(shared.images)):
            stored = stored_report(shared, half.path, half.manifest, shown, "original", must_not_rank)
            expected = evaluation_report(rerank(shown, full.db, full.queries), dataset, "original")
            assert stored["mAP"] == pytest.approx(expected["mAP"], abs=1e-3)


def test_bundle_figures_match_the_cache(small, bundle):
    cache_dir, dataset = small
    out, _, _ = bundle
    shared = next(iter(list_datasets(out).values()))
    for method in METHODS:
        full = load_entry(cache_dir, dataset, method)
        half = load_entry(out, shared, method)
        a = evaluation_report(rerank(method, full.db, full.queries), dataset, "original")["mAP"]
        b = evaluation_report(rerank(method, half.db.astype(np.float32), half.queries.astype(np.float32)),
                              shared, "original")["mAP"]
        assert b == pytest.approx(a, abs=1e-3)


@pytest.mark.parametrize("damage", ["bytes", "missing", "format"])
def test_tampered_bundle_is_refused(bundle, damage):
    out, manifest, _ = bundle
    name = next(n for n in manifest["files"] if n.endswith("db.npy"))
    if damage == "bytes":
        data = bytearray((out / name).read_bytes())
        data[-1] ^= 0xFF
        (out / name).write_bytes(bytes(data))
        match = "contents differ"
    elif damage == "missing":
        (out / name).unlink()
        match = "missing"
    else:
        (out / "bundle.json").write_text(json.dumps({**manifest, "format": 99}))
        match = "format 99"
    with pytest.raises(BundleError, match=match):
        verify_bundle(out)


def test_bundle_keeps_the_whitening_an_uploaded_query_needs(small, tmp_path):
    from cbir.cache import dataset_key, save_entry
    from cbir.extraction import entry_whitening, whitening_arrays
    from cbir.whitening import apply_whitening, learn_whitening

    cache_dir, dataset = small
    plain = load_entry(cache_dir, dataset, METHODS[0])
    whitening = learn_whitening(plain.db, power=0.25, learned_on=dataset_key(dataset))
    method = Method(pooling="mac", whitening="pca-partial")
    save_entry(cache_dir, dataset, method, apply_whitening(plain.db, whitening),
               apply_whitening(plain.queries, whitening),
               {"whitening": {"power": 0.25, "learned_on": dataset_key(dataset)},
                "skipped_images": [{"name": "x", "error": "truncated"}]},
               arrays=whitening_arrays(whitening))
    out = tmp_path / "whitened"
    build_bundle(cache_dir, dataset, [method], out, layouts=False, grid_protocols=())
    bundled = load_entry(out, next(iter(list_datasets(out).values())), method)
    assert np.allclose(entry_whitening(bundled).projection, whitening.projection)
    assert bundled.manifest["skipped_images"] == [{"name": "x", "error": "truncated"}]


def test_missing_entry_is_named(small, tmp_path):
    cache_dir, dataset = small
    with pytest.raises(CacheError, match="extract it first"):
        build_bundle(cache_dir, dataset, [Method(pooling="gem")], tmp_path / "never", layouts=False)
    assert not (tmp_path / "never").exists()


def test_build_failing_midway_leaves_nothing(small, tmp_path):
    cache_dir, dataset = small
    dataset.image_path(len(dataset.images) - 1).write_bytes(b"not a jpeg")
    out = tmp_path / "broken"
    with pytest.raises(ValueError, match="unreadable image"):
        build_bundle(cache_dir, dataset, list(METHODS), out, layouts=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".broken")]


def test_existing_output_is_not_overwritten(bundle, small):
    cache_dir, dataset = small
    out, _, _ = bundle
    with pytest.raises(FileExistsError):
        build_bundle(cache_dir, dataset, list(METHODS), out, layouts=False)


def test_pca_reduction(small, tmp_path):
    cache_dir, dataset = small
    out = tmp_path / "pca"
    build_bundle(cache_dir, dataset, [METHODS[0]], out, reduce="pca:8", layouts=False,
                 grid_protocols=())
    entry = load_entry(out, next(iter(list_datasets(out).values())), METHODS[0])
    assert entry.db.shape == (len(dataset.images), 8)
    assert np.allclose(np.linalg.norm(entry.db.astype(np.float32), axis=1), 1.0, atol=1e-2)
    with pytest.raises(ValueError, match="PCA dimension"):
        build_bundle(cache_dir, dataset, [METHODS[0]], tmp_path / "bad", reduce="pca:1000", layouts=False)


def test_study_tables(small):
    cache_dir, dataset = small
    methods = [METHODS[0], METHODS[1], METHODS[1].with_rerank("diffusion", k=5)]
    tables = study_tables(dataset, cache_dir, methods, "original")
    assert list(tables) == ["Table 1: baseline poolings", "Table 2: R-MAC",
                            "Table 3: R-MAC + diffusion (alpha=0.99, k=5)"]
    entry = load_entry(cache_dir, dataset, methods[2])
    expected = evaluation_report(rerank(methods[2], entry.db, entry.queries), dataset, "original")
    row = tables["Table 3: R-MAC + diffusion (alpha=0.99, k=5)"][0]
    assert row["mAP"] == pytest.approx(100 * expected["mAP"], abs=0.01)
    assert row["seed mAP@10"] == pytest.approx(100 * expected["seed_mAP@10"], abs=0.01)
    assert row["published mAP"] is None
    markdown = to_markdown(tables, dataset, "original")
    assert "## Table 2: R-MAC" in markdown and f"{row['mAP']:.2f}" in markdown
    assert to_csv(tables).count("\n") == 4
    assert row["study mAP (all)"] is None and row["study row"] is None  # a dataset other than paris6k


def test_diffusion_table_adds_the_best_stored_grid_point_labelled_as_tuned(small):
    cache_dir, dataset = small
    entry = load_entry(cache_dir, dataset, METHODS[1])
    grid = stored_diffusion_grid(dataset, entry, "original", alphas=(0.5, 0.9), ks=(3, 5, 8))
    best = np.unravel_index(int(np.argmax(grid["map"])), (2, 3))
    alpha, k = (0.5, 0.9)[best[0]], (3, 5, 8)[best[1]]
    worst_k = next(kk for kk in (3, 5, 8) if kk != k)
    used = METHODS[1].with_rerank("diffusion", alpha=alpha, k=worst_k)
    (title, rows), = [t for t in study_tables(dataset, cache_dir, [used], "original").items()]
    assert title == f"Table 3: R-MAC + diffusion (alpha={alpha:g}, k={worst_k})"
    assert len(rows) == 2 and "tuned on the test queries" in rows[1]["method"]
    assert f"k={k})" in rows[1]["method"] and rows[1]["mAP"] == pytest.approx(100 * grid["map"][best[0]][best[1]],
                                                                              abs=0.01)


def test_seed_study_table_sits_beside_the_same_columns():
    row, match = study_row_for(Method(backbone="vgg16", pooling="mac"))
    assert (row.map_at_10, row.map_at_100, row.map_all, row.dim, row.params) == (92.41, 66.37, 60.3, 512,
                                                                                 138_357_544)
    assert match == "same backbone (VGG-16 max)"
    row, match = study_row_for(Method(pooling="spoc"))
    assert row.map_all == 68.74 and match == "Lite0 vs the study's EfficientNet-B1 average"
    row, _ = study_row_for(Method(backbone="resnet50", pooling="rmac", rerank="diffusion"))
    assert (row.map_at_10, row.map_at_100, row.map_all) == (95, 82.43, 82.54)
    assert len(SEED_TABLE) == 12 and ("resnet50", "spoc", "none") in ODD_ROWS
    assert study_row_for(Method(pooling="gem")) is None
    assert study_row_for(Method(pooling="rmac", whitening="pca", whiten_on="oxford5k")) is None
    assert study_row_for(Method(pooling="spoc", weights="random")) is None
    assert study_row_for(Method(backbone="convnext_tiny", pooling="mac")) is None


def test_study_tables_add_fsr_and_kreciprocal_beyond_the_study(small):
    cache_dir, dataset = small
    n = len(dataset.images)
    methods = [METHODS[1].with_rerank("fsr", k=5, fsr_rank=n), METHODS[1].with_rerank("kreciprocal", k1=5, k2=3)]
    tables = study_tables(dataset, cache_dir, methods + [METHODS[1].with_rerank("diffusion", k=5)], "original")
    rows = tables["Beyond the study: R-MAC + FSR, k-reciprocal"]
    assert [row["method"] for row in rows] == [m.label() for m in methods]
    # Full-rank FSR is the exact diffusion solve: the same figures as table 3.
    assert rows[0]["mAP"] == tables["Table 3: R-MAC + diffusion (alpha=0.99, k=5)"][0]["mAP"]
    assert published_for("paris6k", Method(backbone="vgg16", pooling="rmac")).map == 83.5
    assert published_for("paris6k", Method(backbone="vgg16", pooling="rmac", weights="random")) is None


def test_real_bundle_serves_every_page_without_the_originals(paris250_lite0_cache, tmp_path, monkeypatch):
    """Issue: a bundle of Paris6k-250 (tf_efficientnet_lite0) renders every page with the images deleted."""
    import shutil
    from dataclasses import replace

    from PIL import Image
    from streamlit.testing.v1 import AppTest

    from dashboard import gallery
    from dashboard_fixture import assert_every_page_renders

    dataset, cache = paris250_lite0_cache
    copy = tmp_path / "paris6k-250"
    shutil.copytree(dataset.root, copy)
    local = replace(dataset, root=str(copy))
    methods = list_entries_of(cache, dataset)
    out = tmp_path / "bundle"
    manifest = build_bundle(cache, local, methods, out)
    assert manifest["total_bytes"] < 100 * 2**20
    shutil.rmtree(copy)

    monkeypatch.setenv("CBIR_CACHE_DIR", str(out))
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Serving a bundle (float16 descriptors" in c.value for c in at.sidebar.caption)
    table = at.dataframe[0].value
    assert set(table["pooling"]) == {"mac", "spoc", "gem", "rmac"}
    assert table.loc[table["pooling"] == "rmac", "mAP"].max() >= 87.0
    assert_every_page_renders(at, REPO)

    shared = next(iter(list_datasets(out).values()))
    key = next(iter(list_datasets(out)))
    for i in (0, 100, 249):
        thumb = gallery.thumbnail(shared, key, shared.paths[i], shared.images[i])
        assert np.asarray(thumb).std() > 20, "a placeholder instead of the bundled thumbnail"
    assert isinstance(thumb, Image.Image)


def list_entries_of(cache, dataset):
    from cbir.cache import dataset_key, list_entries
    return list_entries(cache, dataset_key(dataset))


def test_bundle_command_carries_the_distractor_evaluations_unless_told_not_to(tmp_path, capsys):
    from cbir.cli import main
    from dashboard_fixture import make_distractor_evaluation

    _, cache_dir, dataset = build(tmp_path)
    distractors, _ = make_distractor_evaluation(tmp_path, cache_dir, dataset)
    distractor_key = dataset_dir(cache_dir, distractors).name
    common = ["bundle", "--dataset", "tiny", "--cache", str(cache_dir), "--no-layouts"]
    assert main([*common, "--out", str(tmp_path / "with")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["distractor_evaluations"] == ["tiny + R1M (12 of 1001001 images)"]
    carried = sorted(p.relative_to(tmp_path / "with" / distractor_key).as_posix()
                     for p in (tmp_path / "with" / distractor_key).rglob("*") if p.is_file())
    assert carried and all(name.endswith(("/manifest.json", "-k10.npz")) for name in carried)  # no arrays, no names
    assert main([*common, "--out", str(tmp_path / "without"), "--no-distractors"]) == 0
    assert json.loads(capsys.readouterr().out)["distractor_evaluations"] == []
    assert not (tmp_path / "without" / distractor_key).exists()
    assert verify_bundle(tmp_path / "without")["distractor_evaluations"] == []
