"""The embedded demo: committed, complete, served to a fresh clone, refused when damaged,
and pinned to a fresh extraction of the real Paris6k-250 subset."""
from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cbir.bundle import verify_bundle
from cbir.cache import list_datasets, load_entry
from cbir.demo import BACKBONES, DEMO_DIR, MAX_BYTES, demo_methods
from cbir.evaluation import overview_methods
from cbir.method import POOLINGS
from dashboard_fixture import assert_every_page_renders

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """A user's clone: an empty `cache/`, no data, the committed demo."""
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CBIR_DEMO_DIR", raising=False)
    monkeypatch.chdir(REPO)


def demo_dataset():
    (key, dataset), = list_datasets(DEMO_DIR).items()
    return key, dataset


def test_demo_is_committed_complete_and_small():
    manifest = verify_bundle(DEMO_DIR)
    assert manifest["total_bytes"] <= MAX_BYTES
    assert manifest["reduce"] == "float16" and manifest["thumb_size"] == 256
    assert sorted((m["backbone"], m["pooling"], m["size"]) for m in manifest["methods"]) == sorted(
        (b, p, 1024) for b in BACKBONES for p in POOLINGS)
    key, dataset = demo_dataset()
    assert (len(dataset.images), dataset.n_images_total, len(dataset.queries), dataset.n_queries_total) == (
        250, 6392, 12, 55)
    thumbs = sorted((DEMO_DIR / key / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 250 and all(t.stat().st_size < 64_000 for t in thumbs)
    for method in demo_methods():
        folder = DEMO_DIR / key / method.slug()
        assert (folder / "grid-original.json").is_file()
        assert len(list(folder.glob("layout-*.npy"))) >= 2, f"{folder}: no UMAP layouts"
        assert len(list(folder.glob("report-original-*.json"))) == len(overview_methods(method, 250))


def test_a_fresh_clone_serving_the_demo_may_extract_into_its_own_cache(fresh_clone):
    from test_app import app, no_exception

    at = app("pages/7_Data_and_descriptors.py")
    no_exception(at)
    next(b for b in at.button if b.label == "Extract").click().run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert not any("is a bundle" in e for e in errors), errors  # the served demo is not where it writes
    assert any("no such folder" in e for e in errors), errors


def test_fresh_clone_opens_on_the_demo_on_every_page(fresh_clone):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    notice = " ".join(i.value for i in at.info)
    assert "250 of the 6392 Paris6k images" in notice and "12 of its 55 queries" in notice
    assert "float16" in notice and "not comparable" in notice and "Data and descriptors" in notice
    table = at.dataframe[0].value
    base = table[table["re-ranking"] == "none"]
    assert len(base) == 12 and base["mAP"].notna().all()
    assert set(zip(base["backbone"], base["pooling"])) == {(b, p) for b in BACKBONES for p in POOLINGS}
    assert base.loc[(base["backbone"] == BACKBONES[0]) & (base["pooling"] == "rmac"), "mAP"].item() >= 86.5
    assert table.loc[table["method"] == "Lite0 R-MAC", "study row"].item() == (
        "Lite0 vs the study's EfficientNet-B1 R-MAC")
    assert "Paris6k (250 of 6392 images)" in at.sidebar.selectbox(key="w_dataset").options
    assert_every_page_renders(at, REPO)


def test_users_cache_comes_first_and_the_demo_stays_selectable(tmp_path, monkeypatch):
    from dashboard_fixture import build

    data_dir, cache_dir, _ = build(tmp_path)
    monkeypatch.setenv("CBIR_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("CBIR_DATA_DIR", str(data_dir))
    monkeypatch.delenv("CBIR_DEMO_DIR", raising=False)
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    source = at.sidebar.selectbox(key="w_source")
    assert source.value == "cache" and source.options == ["Your cache", "Embedded demo (Paris6k-250)"]
    assert at.sidebar.selectbox(key="w_dataset").value != demo_dataset()[0]
    source.set_value("demo").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox(key="w_dataset").value == demo_dataset()[0]
    assert at.query_params["source"] in ("demo", ["demo"])


def test_a_damaged_demo_is_refused_never_served(tmp_path, monkeypatch):
    copy = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, copy)
    key, _ = demo_dataset()
    target = copy / key / demo_methods()[3].slug() / "db.npy"
    data = bytearray(target.read_bytes())
    data[-7] ^= 0x40  # one bit of one descriptor value
    target.write_bytes(bytes(data))
    monkeypatch.setenv("CBIR_DEMO_DIR", str(copy))
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Refusing to serve the embedded demo" in e.value and "db.npy" in e.value for e in at.error)
    assert any("No descriptors yet" in i.value for i in at.info)
    assert not at.dataframe


def test_report_on_the_demo_prints_the_seed_study_beside_ours():
    from cbir.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", "--dataset", "paris6k", "--cache", str(DEMO_DIR)]) == 0
    text = out.getvalue()
    assert "| method | seed mAP@10 | study mAP@10 | seed mAP@100 | study mAP@100 |" in text
    rmac = next(line for line in text.splitlines() if line.startswith("| Lite0 R-MAC |"))
    assert "| 94.81 |" in rmac and "| 75.17 |" in rmac and "Lite0 vs the study's EfficientNet-B1 R-MAC" in rmac
    assert "Table 3: R-MAC + diffusion (alpha=0.99, k=50)" in text
    assert "tuned on the test queries" in text  # k = 50 is too large for 250 images: the grid's best follows


@pytest.fixture(scope="module")
def fresh_demo_cache(paris250_lite0_cache, tmp_path_factory):
    """The demo's methods freshly extracted from ../shared/data/paris6k-250 (Lite0 from the session
    fixture; Lite1 and Lite2 here, about two minutes on 2 quiet cores)."""
    from cbir.extraction import extract

    dataset, cache = paris250_lite0_cache
    extract(dataset, [m for m in demo_methods() if m.backbone != BACKBONES[0]], cache)
    return dataset, cache


def test_demo_figures_equal_a_fresh_extraction(fresh_demo_cache):
    from cbir.metrics import evaluation_report
    from cbir.rerank import rerank

    dataset, cache = fresh_demo_cache
    key, shared = demo_dataset()
    assert shared.images == dataset.images
    for method in demo_methods():
        fresh = load_entry(cache, dataset, method)
        bundled = load_entry(DEMO_DIR, shared, method)
        cosines = np.sum(fresh.db * bundled.db.astype(np.float32), axis=1)
        assert cosines.min() > 0.9995, method.label()
        stored = json.loads((DEMO_DIR / key / method.slug() / "report-original-none.json").read_text())
        ours = evaluation_report(rerank(method, fresh.db, fresh.queries), dataset, "original")
        assert stored["report"]["mAP"] == pytest.approx(ours["mAP"], abs=0.005), method.label()


def test_an_uploaded_photo_is_ranked_against_the_demo_with_diffusion(paris250):
    """What the explorer does for an upload on the demo: the demo's backbone describes the photo,
    and it is ranked against the demo's float16 descriptors, diffusion included."""
    from cbir.data import load_dataset
    from cbir.rerank import rerank
    from dashboard import upload

    dataset = load_dataset("paris6k", paris250, verify_images=False)
    key, shared = demo_dataset()
    method = demo_methods()[3]  # Lite0 R-MAC
    entry = load_entry(DEMO_DIR, shared, method)
    entry = type(entry)(entry.db.astype(np.float32), entry.queries.astype(np.float32), entry.manifest, entry.path)
    q = 0
    query = dataset.queries[q]
    data = dataset.query_path(q).read_bytes()
    box = tuple(int(round(v)) for v in query.bbox)
    described = upload.describe(data, query.path, box, method, entry)
    assert float(described[0] @ entry.queries[q]) > 0.999
    diffused = rerank(method.with_rerank("diffusion", k=20), entry.db, described)[0]
    assert int(diffused[0]) in set(shared.gnd["original"][q]["ok"].tolist())


def test_graph_data_computed_while_serving_the_demo_never_enter_it(tmp_path):
    """A new FSR rank or neighbour list on a served bundle stays in memory: the bundle stays valid."""
    from cbir.spectral import stored_spectral_ranker

    copy = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, copy)
    _, shared = demo_dataset()
    entry = load_entry(copy, shared, demo_methods()[3])
    before = sorted(p.name for p in entry.path.iterdir())
    ranker = stored_spectral_ranker(entry, k=7, gamma=3.0, rank=30)
    assert ranker.rank_used == 30
    assert sorted(p.name for p in entry.path.iterdir()) == before
    verify_bundle(copy)
