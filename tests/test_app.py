"""The dashboard rendered by Streamlit's AppTest over a small generated dataset and cache."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cbir.cache import load_entry
from cbir.diffusion import DiffusionRanker
from cbir.metrics import evaluation_report
from cbir.rerank import rerank
from dashboard import charts
from dashboard_fixture import METHODS, build

REPO = Path(__file__).resolve().parents[1]
PAGES = ["pages/2_Query_explorer.py", "pages/3_Diffusion_lab.py", "pages/4_Curves.py",
         "pages/5_Manifolds.py", "pages/6_Toy_manifolds.py", "pages/7_Data_and_descriptors.py"]
TITLES = ["Query explorer", "Diffusion lab", "Curves", "Manifolds", "Toy manifolds", "Data and descriptors"]


@pytest.fixture
def site(tmp_path, monkeypatch):
    data_dir, cache_dir, dataset = build(tmp_path)
    monkeypatch.setenv("CBIR_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CBIR_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(REPO)
    return data_dir, cache_dir, dataset


def app(page: str | None = None, **params) -> AppTest:
    """The app as a fresh session arriving on `page` with URL parameters `params`."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    if page is not None:
        at.switch_page(page)
    return at.run()


def captions(at: AppTest) -> list[str]:
    return [img.caption for element in at.get("image") for img in element.proto.imgs if img.caption]


def gallery_captions(at: AppTest) -> list[str]:
    return [c for c in captions(at) if c.startswith("#")]


def url(at: AppTest, key: str) -> list[str]:
    """A URL parameter's values as the browser would send them (AppTest gives str or list)."""
    value = at.query_params.get(key, [])
    return value if isinstance(value, list) else [value]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def ranking(dataset, cache_dir, method, **params):
    entry = load_entry(cache_dir, dataset, method.descriptor_key())
    method = method.with_rerank(method.rerank, **params) if params else method
    return rerank(method, entry.db, entry.queries)


@pytest.mark.parametrize("page,title", zip(PAGES, TITLES))
def test_every_page_renders(site, page, title):
    at = app(page)
    no_exception(at)
    assert at.title[0].value == title
    assert not at.error


def test_overview_table_equals_cbir_evaluation(site):
    _, cache_dir, dataset = site
    at = app()
    no_exception(at)
    table = at.dataframe[0].value
    k = len(dataset.images) - 1  # the sidebar caps diffusion's k below the database size
    assert len(table) == len(METHODS) * 5
    for method in METHODS:
        for rerank_name, params in (("none", {}), ("aqe", {}), ("diffusion", {"k": k}),
                                    ("fsr", {"k": k, "fsr_rank": k + 1}), ("kreciprocal", {"k1": k})):
            variant = method.with_rerank(rerank_name, **params)
            report = evaluation_report(ranking(dataset, cache_dir, variant), dataset, "original")
            row = table[table["id"] == (method.slug() if rerank_name == "none"
                                        else f"{method.slug()}+{rerank_name}")].iloc[0]
            for column, key in (("mAP", "mAP"), ("seed mAP@10", "seed_mAP@10"), ("seed mAP@100", "seed_mAP@100"),
                                ("seed mAP (all)", "seed_mAP"), ("mP@1", "mP@1"), ("mP@5", "mP@5"),
                                ("mP@10", "mP@10")):
                assert row[column] == pytest.approx(100 * report[key]), (variant.label(), column)
            assert row["dim"] == 32
    assert table["mAP"].nunique() > 1  # the methods really differ
    assert at.get("download_button")
    assert list(table.columns[:2]) == ["method", "mAP"]  # the headline is the first figure
    assert list(table["mAP"]) == sorted(table["mAP"], reverse=True)
    (chart,) = [c for c in at.get("plotly_chart")]
    bars = [bar for bar in json.loads(chart.proto.spec)["data"] if "customdata" in bar]
    assert sorted(i for bar in bars for i in bar["customdata"]) == sorted(table["id"])
    for bar in bars:  # colour = pooling, hatching = re-ranking, one offset group per re-ranking
        rows = table.set_index("id").loc[bar["customdata"]]
        assert bar["marker"]["color"] == charts.POOLING_COLOURS[rows["pooling"].iloc[0]]
        assert {bar["offsetgroup"]} == set(rows["re-ranking"]) and len(set(rows["pooling"])) == 1

    clicked = f"{METHODS[0].slug()}+aqe"  # a click on a bar opens that method in the explorer
    at.session_state["overview_chart"] = {"selection": {"points": [{"customdata": clicked}],
                                                        "point_indices": [0], "box": [], "lasso": []}}
    at.run()
    no_exception(at)
    assert at.title[0].value == "Query explorer" and url(at, "methods") == [clicked]


def test_overview_shows_published_numbers_where_the_method_matches(site):
    from cbir.method import Method
    from cbir.study import published_for
    assert published_for("paris6k", Method(backbone="efficientnet_b1", pooling="rmac")).map == 74.4
    assert published_for("paris6k", Method(backbone="tf_efficientnet_b1", pooling="spoc")).map == 68.7
    assert published_for("paris6k", Method(backbone="efficientnet_b1", pooling="rmac",
                                           rerank="diffusion")).map == 86.0
    assert published_for("paris6k", Method(pooling="rmac")) is None
    assert published_for("tiny", Method(backbone="efficientnet_b1", pooling="rmac")) is None
    at = app()
    published = at.dataframe[1].value
    assert set(published["mAP"]) >= {68.7, 74.4, 86.0}


def test_a_damaged_cache_entry_is_reported_not_used(site):
    from cbir.cache import entry_dir, dataset_key
    _, cache_dir, dataset = site
    db = entry_dir(cache_dir, dataset_key(dataset), METHODS[0]) / "db.npy"
    db.write_bytes(db.read_bytes()[:-64])
    at = app()
    no_exception(at)
    assert any(str(db) in e.value and "bytes, the manifest says" in e.value for e in at.error)  # truncated
    assert set(at.dataframe[0].value["pooling"]) == {"rmac"}
    at = app(PAGES[0], methods=[METHODS[0].slug(), METHODS[1].slug()])
    no_exception(at)
    assert any("bytes, the manifest says" in e.value for e in at.error)
    assert len(gallery_captions(at)) == 10  # the intact method's gallery still shows


def test_explorer_gallery_shows_the_ranking_with_relevance_frames(site):
    _, cache_dir, dataset = site
    query = dataset.queries[3]
    at = app(PAGES[0], query=query.name, methods=[METHODS[1].slug()])
    no_exception(at)
    order = ranking(dataset, cache_dir, METHODS[1])[3][:10]
    gnd = dataset.gnd["original"][3]
    kind = {**{int(i): "positive" for i in gnd["ok"]}, **{int(i): "junk" for i in gnd["junk"]}}
    expected = [f"#{r} {dataset.images[i]} [{kind.get(int(i), 'negative')}]" for r, i in enumerate(order, 1)]
    assert gallery_captions(at) == expected
    report = evaluation_report(ranking(dataset, cache_dir, METHODS[1]), dataset, "original")
    assert at.metric[0].value == f"{100 * report['per_query'][3]['ap']:.2f}"
    assert f"query {query.name} (bridge)" in captions(at)
    assert url(at, "query") == [query.name]


def test_explorer_query_picker_button_selects_that_query(site):
    _, _, dataset = site
    at = app(PAGES[0])
    assert url(at, "query") == [dataset.queries[0].name]
    at.button(key="pick_4").click().run()
    no_exception(at)
    assert url(at, "query") == [dataset.queries[4].name]
    assert any(c.startswith(f"query {dataset.queries[4].name}") for c in captions(at))


def test_any_database_image_can_be_the_query(site):
    """"use as query" under a result ranks the database for that image; an image that is no
    benchmark query is unjudged (amber), one that is a query is judged by its ground truth."""
    _, cache_dir, dataset = site
    at = app(PAGES[0], methods=[METHODS[1].slug()])
    first = ranking(dataset, cache_dir, METHODS[1])[0][0]
    at.button(key=f"use0_{first}").click().run()
    no_exception(at)
    assert url(at, "image") == [dataset.images[first]]
    assert f"database image {dataset.images[first]} as the query" in captions(at)

    plain = dataset.images.index("arch_02")  # not one of the benchmark's queries
    at = app(PAGES[0], image="arch_02", methods=[METHODS[1].slug()])
    no_exception(at)
    entry = load_entry(cache_dir, dataset, METHODS[1])
    order = rerank(METHODS[1], entry.db, entry.db[plain:plain + 1])[0][:10]
    assert gallery_captions(at) == [f"#{r} {dataset.images[i]} [unjudged]" for r, i in enumerate(order, 1)]
    assert not at.metric  # no AP without ground truth
    assert any("amber (unjudged)" in m.value for m in at.markdown)

    at.button[[b.label for b in at.button].index("Back to the benchmark queries")].click().run()
    no_exception(at)
    assert "image" not in at.query_params and any(c.startswith("query ") for c in captions(at))

    judged = dataset.queries[3].index  # a benchmark query's own image: its ground truth applies
    at = app(PAGES[0], image=dataset.images[judged], methods=[METHODS[1].slug()])
    assert "[unjudged]" not in " ".join(gallery_captions(at)) and at.metric


def test_image_as_query_truth_by_class_label():
    from cbir.data import Dataset
    ds = Dataset("own", "", ["a0", "a1", "b0"], ["a0", "a1", "b0"], ["a", "a", "b"], [], {"class": []}, 3, 0)
    gnd, judged = ds.image_as_query_truth("class", 0)
    assert gnd["ok"].tolist() == [1] and gnd["junk"].tolist() == [0] and "class label" in judged


def test_diffusion_lab_slider_changes_the_map_shown(site):
    _, cache_dir, dataset = site
    at = app(PAGES[2 - 1])
    no_exception(at)
    shown = at.metric[0].value
    at.slider(key="w_alpha").set_value(0.6).run()
    no_exception(at)
    assert at.metric[0].value != shown
    entry = load_entry(cache_dir, dataset, METHODS[1])  # R-MAC: the default first method
    ranks = DiffusionRanker(entry.db, k=len(dataset.images) - 1, gamma=3.0).rank(entry.queries, alpha=0.6, kq=10)
    assert at.metric[0].value == f"{100 * evaluation_report(ranks, dataset, 'original')['mAP']:.2f}"
    assert url(at, "alpha") == ["0.6"]
    assert any("(was #" in c for c in gallery_captions(at))


def test_lab_offers_fsr_beside_cg_with_its_gap(site):
    _, cache_dir, dataset = site
    at = app(PAGES[1])
    cg = at.metric[0].value
    at.selectbox(key="w_solver").set_value("fsr").run()
    no_exception(at)
    # On this small database the default rank is the full spectrum: FSR is the exact solve.
    assert at.metric[0].label == "FSR mAP gap to CG" and at.metric[0].value == "+0.00"
    assert at.metric[1].label == f"mAP with FSR (r={len(dataset.images)})" and at.metric[1].value == cg
    assert url(at, "solver") == ["fsr"]
    assert list(cache_dir.glob("*/*/spectrum-k*-r*.npz")) and list(cache_dir.glob("*/*/neighbours-K*.npz"))


def test_lab_deep_link_sets_the_sliders(site):
    at = app(PAGES[1], alpha="0.7", k="5", kq="3")
    no_exception(at)
    assert at.slider(key="w_alpha").value == pytest.approx(0.7)
    assert at.slider(key="w_k").value == 5
    assert at.slider(key="w_kq").value == 3


@pytest.mark.parametrize("params,expected", [
    ({"query": "no_such_query"}, "unknown query 'no_such_query'"),
    ({"methods": "no-such-method"}, "unknown method 'no-such-method'"),
    ({"alpha": "abc"}, "not a number"),
    ({"alpha": "1.5"}, "outside"),
    ({"dataset": "nope-123"}, "unknown dataset 'nope-123'"),
    ({"protocol": "hard"}, "unknown protocol 'hard'"),
])
def test_bad_url_parameters_warn_and_fall_back(site, params, expected):
    _, _, dataset = site
    at = app(PAGES[1], **params)
    no_exception(at)
    assert any(expected in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.metric  # the page still rendered with the defaults
    assert url(at, "query") == [dataset.queries[0].name]


def test_curves_hardest_queries_link_to_the_explorer(site):
    _, cache_dir, dataset = site
    methods = [METHODS[0].slug(), f"{METHODS[1].slug()}+diffusion"]
    at = app(PAGES[2], methods=methods)
    no_exception(at)
    hardest = at.dataframe[0].value
    aps = [row["ap"] for row in evaluation_report(ranking(dataset, cache_dir, METHODS[0]), dataset,
                                                   "original")["per_query"]]
    assert hardest["AP %"].tolist() == pytest.approx(sorted(100 * np.array(aps))[:len(hardest)])
    assert hardest["explore"].str.startswith("./Query_explorer?").all()
    for query, link in zip(hardest["query"], hardest["explore"]):
        params = parse_qs(urlsplit(link).query)
        assert params["query"] == [query] and params["methods"] == methods
    assert len(at.get("plotly_chart")) == 4  # P@k, PR, AP bars, AP difference


def test_manifolds_compute_on_request_then_show_selected_images(site, monkeypatch):
    import cbir.manifold

    def fake_layout(data, *args, **kwargs):  # UMAP itself costs a 20 s import here
        return np.random.default_rng(0).normal(size=(data.shape[0], 2)).astype(np.float32)

    monkeypatch.setattr(cbir.manifold, "umap_layout", fake_layout)
    monkeypatch.setattr(cbir.manifold, "diffusion_layout", fake_layout)
    _, _, dataset = site
    at = app(PAGES[3])
    no_exception(at)
    assert any("not computed yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    at.button[0].click().run()
    no_exception(at)
    assert len(at.get("plotly_chart")) == 2
    stored = list((site[1]).glob("*/*/layout-*.npy"))
    assert len(stored) == 2
    fresh = app(PAGES[3])  # a new session finds them in the cache
    assert len(fresh.get("plotly_chart")) == 2
    chosen = [2, 9]
    fresh.session_state["manifold_after"] = {"selection": {
        "points": [{"customdata": [i], "curve_number": 0, "point_index": 0} for i in chosen],
        "point_indices": [], "box": [], "lasso": []}}
    fresh.run()
    no_exception(fresh)
    shown = gallery_captions(fresh)
    assert [c.split()[1] for c in shown] == [dataset.images[i] for i in chosen]
    assert shown[0].endswith("[positive]") and shown[1].endswith("[negative]")  # query 0 is arch_00


def test_toy_page_works_without_any_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CBIR_DEMO_DIR", "")  # no embedded demo either
    at = app()
    no_exception(at)
    assert "No descriptors yet" in at.info[0].value
    at = app(PAGES[4], toy="circles", toy_query="5")
    no_exception(at)
    knn, diffusion = (float(m.value.rstrip(" %")) for m in at.metric)
    assert diffusion > knn  # on concentric circles diffusion follows the ring, kNN does not
    assert "point 5" in at.caption[-1].value
    at.slider(key="w_toy_alpha").set_value(0.5).run()
    assert float(at.metric[1].value.rstrip(" %")) != diffusion
    at.session_state["toy_knn"] = {"selection": {"points": [{"customdata": [17], "curve_number": 0}],
                                                 "point_indices": [17], "box": [], "lasso": []}}
    at.run()
    assert "point 17" in at.caption[-1].value and url(at, "toy_query") == ["17"]
    at = app(PAGES[4], toy_query="100000")
    assert any("does not exist" in w.value for w in at.warning)


def test_data_page_refuses_a_folder_outside_the_data_root(site):
    at = app(PAGES[5])
    no_exception(at)
    at.text_input[1].set_value("../../etc")
    next(b for b in at.button if b.label == "Extract").click().run()
    no_exception(at)
    assert any("outside the data root" in e.value for e in at.error)


def test_gallery_refuses_paths_leaving_the_dataset_root(site):
    from dashboard import gallery
    data_dir, _, dataset = site
    with pytest.raises(ValueError, match="leaves the dataset root"):
        gallery.safe_path(dataset, "../../secret.jpg")
    with pytest.raises(ValueError, match="leaves the dataset root"):
        gallery.safe_path(dataset, "/etc/passwd")
    assert gallery.safe_path(dataset, dataset.paths[0]) == Path(dataset.root) / dataset.paths[0]


def test_gallery_prefers_the_cache_thumbnail(site):
    from cbir.cache import dataset_key
    from dashboard import gallery
    _, cache_dir, dataset = site
    key = dataset_key(dataset)
    original = gallery.thumbnail(dataset, key, dataset.paths[0], dataset.images[0])
    assert original.getpixel((5, 5))[0] > 150  # the red "arch" image
    thumbs = cache_dir / key / "thumbs"
    thumbs.mkdir()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(thumbs / f"{dataset.images[0]}.jpg")
    stored = gallery.thumbnail(dataset, key, dataset.paths[0], dataset.images[0])
    assert stored.getpixel((5, 5))[2] > 200 and stored.getpixel((5, 5))[0] < 50
    missing = gallery.thumbnail(dataset, key, "arch/gone.jpg", "gone")
    assert missing.getpixel((1, 1)) == (235, 235, 235)


def test_bundle_thumbnails_get_the_query_box_scaled_and_need_no_originals(site):
    import dataclasses
    import json

    from cbir.cache import dataset_key
    from dashboard import gallery
    _, cache_dir, dataset = site
    key = dataset_key(dataset)
    bundle = dataclasses.replace(dataset, root="")  # bundles ship no originals
    thumbs = cache_dir / key / "thumbs"
    thumbs.mkdir()
    Image.new("RGB", (50, 25), (255, 255, 255)).save(thumbs / "q.jpg", quality=95)
    (cache_dir / key / "thumbs.json").write_text(json.dumps({"max_side": 50, "original_size": {"q": [200, 100]}}))
    boxed = gallery.thumbnail(bundle, key, "x/q.jpg", "q", size=50, box=(40, 20, 160, 80))
    r, g, b = boxed.getpixel((10, 12))  # the box's left edge, x = 40 / 4
    assert b > 150 and r < 120
    assert boxed.getpixel((25, 12))[0] > 200  # inside the box: still the white image
    missing = gallery.thumbnail(bundle, key, "x/other.jpg", "other")
    assert missing.getpixel((1, 1)) == (235, 235, 235)
    with pytest.raises(ValueError, match="no original images"):
        gallery.safe_path(bundle, "x/other.jpg")


def test_frames_are_coloured_by_relevance():
    from dashboard import gallery
    img = Image.new("RGB", (20, 20), (255, 255, 255))
    for kind, colour in (("positive", (34, 160, 60)), ("negative", (210, 40, 40)), ("junk", (150, 150, 150))):
        framed = gallery.framed(img, kind)
        assert framed.size == (32, 32)
        assert framed.getpixel((0, 0)) == colour and framed.getpixel((16, 16)) == (255, 255, 255)


def test_upload_rejects_non_images_and_huge_images():
    from dashboard import upload
    with pytest.raises(ValueError, match="notes.txt: not a readable image"):
        upload.read_upload(b"hello, not an image", "notes.txt")
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="big.png: 8000x6000 pixels is too large"):
        upload.read_upload(buffer.getvalue(), "big.png")
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(buffer, format="PNG")
    assert upload.read_upload(buffer.getvalue(), "ok.png").size == (30, 20)


def test_url_state_survives_a_page_switch(site):
    _, _, dataset = site
    at = app(PAGES[0], query=dataset.queries[2].name)
    at.switch_page(PAGES[1]).run()
    no_exception(at)
    assert url(at, "query") == [dataset.queries[2].name]


def test_pages_never_import_torch_timm_or_umap(site):
    """In a fresh interpreter (other tests import torch): render every page, then look."""
    script = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=60).run()
assert not at.exception, at.exception
for page in {PAGES!r}:
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
heavy = sorted(m for m in ("torch", "timm", "umap") if m in sys.modules)
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


def test_uploaded_image_gets_the_descriptor_the_cache_has_for_it(tmp_path):
    """An upload of a query's own file, cropped to its box, is described as extraction described it,
    whitening included (per region for R-MAC, after pooling for GeM)."""
    from cbir.extraction import extract
    from cbir.method import Method
    from dashboard import upload
    from dashboard_fixture import make_dataset

    dataset = make_dataset(tmp_path / "data")
    methods = [Method(pooling="rmac", size=64), Method(pooling="gem", size=64)]
    cached = extract(dataset, methods, tmp_path / "cache", workers=0)
    whitened = [replace(m, whitening="pca-partial") for m in methods]
    cached.update(extract(dataset, whitened, tmp_path / "cache", workers=0))
    for plain, white in zip(methods, whitened):
        a, b = cached[plain].queries, cached[white].queries
        assert a.shape != b.shape or not np.allclose(a, b, atol=1e-3)
    query = dataset.queries[2]
    data = (Path(dataset.root) / query.path).read_bytes()
    box = tuple(int(round(v)) for v in query.bbox)
    for method in methods + whitened:
        described = upload.describe(data, query.path, box, method, cached[method])
        np.testing.assert_allclose(described[0], cached[method].queries[2], atol=1e-5)


def test_a_folder_where_every_image_is_a_query_renders_every_page(tmp_path, monkeypatch):
    """600 images in 15 classes, each a query (self junk): every page renders, the Overview
    evaluates with progress and stores its results, the picker pages, Curves aggregate by class."""
    import time

    from cbir.cache import save_entry
    from cbir.data import Dataset, Query
    from cbir.evaluation import overview_methods
    from cbir.method import Method
    from dashboard_fixture import assert_every_page_renders
    from synthetic import clustered_unit_vectors

    n = 600
    db, labels = clustered_unit_vectors(n, 32, 15, noise=1.0, seed=1)
    names = [f"obj{c:02d}__{i:04d}" for i, c in enumerate(labels)]
    gnd = [{"ok": np.flatnonzero((labels == labels[i]) & (np.arange(n) != i)), "junk": np.array([i])}
           for i in range(n)]
    dataset = Dataset("own", str(tmp_path / "data" / "own"), names, [f"{x}.png" for x in names],
                      [f"obj{c:02d}" for c in labels], [Query(x, i, f"{x}.png") for i, x in enumerate(names)],
                      {"class": gnd}, n, n)
    method = Method(pooling="gem", size=128)
    save_entry(tmp_path / "cache", dataset, method, db, db)
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CBIR_DEMO_DIR", "")
    monkeypatch.chdir(REPO)
    start = time.perf_counter()
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run()
    no_exception(at)
    shown = len(overview_methods(method, n))
    assert len(at.dataframe[0].value) == shown and at.get("status")  # progress was shown
    assert len(list((tmp_path / "cache").glob("*/*/report-class-*.json"))) == shown  # stored for next time
    at.switch_page(PAGES[0]).run()
    no_exception(at)
    assert sum(b.label.startswith("obj") for b in at.button) == 48  # one page of the picker, not 600
    at.text_input(key="query_search").set_value("obj03").run()
    assert all(b.label.startswith("obj03") for b in at.button if b.label.startswith("obj"))
    at.switch_page(PAGES[2]).run()
    no_exception(at)
    per_class = json.loads(at.get("plotly_chart")[2].proto.spec)["data"]
    assert len(per_class) == 15 and per_class[0]["type"] == "box"
    assert_every_page_renders(at, REPO, layouts=False)
    assert time.perf_counter() - start < 600


def test_data_page_trains_a_head_with_a_progress_bar_and_loss_curve(site):
    pytest.importorskip("timm")
    from cbir.headstore import load_head
    from synthetic import make_class_folder

    data_dir, cache_dir, _ = site
    make_class_folder(data_dir / "train", per_class=5)
    at = app(PAGES[5])
    form = {t.label: t for t in at.text_input}
    form["Training dataset (folder, or the csv file, under the data root)"].set_value("train")
    form["Head name"].set_value("page-head")
    next(n for n in at.number_input if n.label == "Max image side (px)").set_value(64)
    next(n for n in at.number_input if n.label == "Epochs").set_value(2)
    next(b for b in at.button if b.label == "Train").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    head = load_head(cache_dir, "page-head")
    assert head.kind == "linear" and len(head.manifest["history"]["loss"]) == 2
    assert any(s.label.startswith("Head 'page-head' stored") for s in at.status)
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")


def test_a_head_method_is_listed_and_evaluated_like_any_method(site):
    pytest.importorskip("torch")
    from cbir.headstore import head_entry
    from cbir.heads import TrainOptions, finetune
    from cbir.method import Method

    _, cache_dir, dataset = site
    finetune(dataset, Method(pooling="mac"), cache_dir, "lw-tiny", TrainOptions(kind="lw", shrinkage=0.1))
    with pytest.raises(ValueError, match="--transductive"):
        head_entry(dataset, Method(pooling="mac", head="lw-tiny"), cache_dir)
    method = Method(pooling="mac", head="lw-tiny", head_transductive=True)
    head_entry(dataset, method, cache_dir)
    at = app()
    no_exception(at)
    table = at.dataframe[0].value
    row = table[table["id"] == method.slug()].iloc[0]
    assert "head lw-tiny (transductive)" in row["method"]
    report = evaluation_report(ranking(dataset, cache_dir, method), dataset, "original")
    assert row["mAP"] == pytest.approx(100 * report["mAP"])
    for page in PAGES[:4]:
        no_exception(app(page))


def test_uploaded_image_through_a_head_gets_the_descriptor_the_cache_has_for_it(tmp_path):
    from cbir.extraction import ensure_descriptors
    from cbir.heads import TrainOptions, finetune
    from cbir.method import Method
    from dashboard import upload
    from dashboard_fixture import make_dataset

    dataset = make_dataset(tmp_path / "data")
    query = dataset.queries[2]
    data = (Path(dataset.root) / query.path).read_bytes()
    box = tuple(int(round(v)) for v in query.bbox)
    for pooling in ("gem", "rmac"):
        base = Method(pooling=pooling, size=64)
        finetune(dataset, base, tmp_path / "cache", f"lw-{pooling}", TrainOptions(kind="lw"), workers=0)
        method = Method(pooling=pooling, size=64, head=f"lw-{pooling}", head_transductive=True)
        entry = ensure_descriptors(dataset, method, tmp_path / "cache", workers=0)
        described = upload.describe(data, query.path, box, method, entry)
        np.testing.assert_allclose(described[0], entry.queries[2], atol=1e-5)
        assert not np.allclose(entry.queries[2], ensure_descriptors(dataset, base, tmp_path / "cache").queries[2])


def test_explorer_ap_of_a_kreciprocal_query_is_its_ap_in_the_report(site):
    """k-reciprocal re-ranks all queries together: the explorer shows the query's row of that
    ranking, so its AP is the one the Overview and Curves average."""
    from cbir.evaluation import overview_methods

    _, cache_dir, dataset = site
    method = next(m for m in overview_methods(METHODS[1], len(dataset.images)) if m.rerank == "kreciprocal")
    at = app(PAGES[0], query=dataset.queries[3].name, methods=[f"{METHODS[1].slug()}+kreciprocal"])
    no_exception(at)
    report = evaluation_report(ranking(dataset, cache_dir, method), dataset, "original")
    assert at.metric[0].value == f"{100 * report['per_query'][3]['ap']:.2f}"


def test_an_upload_that_needs_torch_where_it_is_missing_is_a_message(site, monkeypatch):
    from cbir.cache import load_entry
    from dashboard import upload

    _, cache_dir, dataset = site
    entry = load_entry(cache_dir, dataset, METHODS[1])  # no converted model: only torch can describe it
    monkeypatch.setattr(upload, "torch_available", lambda: False)
    image = (Path(dataset.root) / dataset.paths[0]).read_bytes()
    with pytest.raises(ValueError, match="needs torch and timm here"):
        upload.describe(image, "holiday.jpg", (0, 0, 40, 30), METHODS[1], entry)
