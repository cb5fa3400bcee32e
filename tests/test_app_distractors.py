"""The dashboard serving a stored distractor evaluation ("tiny + R1M") from its top-K lists alone:
the distractors' db.npy is absent, and each distractor tile is read only when shown."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from cbir.cache import load_entry, read_manifest, save_entry
from cbir.topkstore import checked_topk, stored_evaluations
from dashboard import gallery
from dashboard_fixture import METHODS, build, make_distractor_evaluation
from test_app import REPO, app, captions, no_exception

NAME = "tiny + R1M (12 of 1001001 images)"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(cache, dataset, distractors' root, the evaluation) with the app pointed at them."""
    data_dir, cache, dataset = build(tmp_path)
    _, root = make_distractor_evaluation(tmp_path, cache, dataset)
    monkeypatch.setenv("CBIR_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CBIR_CACHE_DIR", str(cache))
    monkeypatch.setenv("CBIR_DEMO_DIR", "")
    monkeypatch.chdir(REPO)
    (evaluation,) = stored_evaluations(cache).values()
    return cache, dataset, root, evaluation


def reports(cache, dataset, evaluation) -> dict:
    """Per method label, the report of its stored lists computed by the library alone."""
    found = {}
    for (method, protocol), path in evaluation.files.items():
        stored = checked_topk(path, dataset, protocol, load_entry(cache, dataset, method).manifest,
                              read_manifest(path.parent))
        found[method.label()] = stored.report(dataset, protocol)
    return found


def plotted(values) -> list[float]:
    """A plotly trace's values, decoded when plotly sent them as typed binary."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def test_overview_lists_the_evaluation_by_its_name_with_truncation(served):
    cache, dataset, _, evaluation = served
    assert not any((cache / evaluation.distractor_key).glob("*/db.npy"))
    at = app(dataset=evaluation.key)
    no_exception(at)
    assert not at.error
    assert at.selectbox(key="w_dataset").options == ["tiny", NAME]  # not R1M itself: it has no queries
    assert at.subheader[0].value.startswith(f"{NAME}: mAP per method")
    table = at.dataframe[0].value.set_index("method")
    expected = reports(cache, dataset, evaluation)
    assert sorted(table.index) == sorted(expected)
    for label, report in expected.items():
        assert table.loc[label, "mAP"] == pytest.approx(100 * report["mAP"])
        assert table.loc[label, "mP@10"] == pytest.approx(100 * report["mP@10"])
        assert table.loc[label, "seed mAP@10"] == pytest.approx(100 * report["seed_mAP@10"])
        assert table.loc[label, "queries truncated"] == report["n_queries_truncated"]
        assert table.loc[label, "K"] == 10 and table.loc[label, "distractors"] == 12
    truncated = [label for label, r in expected.items() if r["n_queries_truncated"]]
    assert truncated, "the fixture's distractors push positives beyond K"
    assert [w.value for w in at.warning] == [f"{label}: {expected[label]['mAP_label']}" for label in truncated]
    assert "truncated at K=10" in at.warning[0].value


def test_a_stored_diffusion_against_distractors_is_served_with_what_it_approximated(tmp_path, monkeypatch):
    from dataclasses import replace

    data_dir, cache, dataset = build(tmp_path)
    diffusion = replace(METHODS[1], rerank="diffusion", alpha=0.9, k=5, kq=3)
    make_distractor_evaluation(tmp_path, cache, dataset, reranked=(diffusion,))
    for name, value in (("CBIR_DATA_DIR", str(data_dir)), ("CBIR_CACHE_DIR", str(cache)), ("CBIR_DEMO_DIR", "")):
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    (evaluation,) = stored_evaluations(cache).values()
    assert (diffusion, "original") in evaluation.files
    expected = reports(cache, dataset, evaluation)[diffusion.label()]
    assert "truncated to each query's top 20, exact kNN graph (flat index" in expected["method"]
    at = app(dataset=evaluation.key)
    no_exception(at)
    table = at.dataframe[0].value.set_index("method")
    assert table.loc[diffusion.label(), "mAP"] == pytest.approx(100 * expected["mAP"])
    assert f"Approximate: {expected['method']}." in [w.value for w in at.warning]


@pytest.mark.parametrize("query", ["arch_00", "bridge_01", "tower_00"])
def test_explorer_shows_the_stored_list_with_the_reports_ap(served, query, monkeypatch):
    cache, dataset, root, evaluation = served
    for unused in [cache / evaluation.distractor_key / "dataset.json",
                   *(cache / evaluation.distractor_key).glob("*/queries.npy")]:
        unused.unlink()  # serving needs neither the million names nor any distractor array
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    at = app("pages/2_Query_explorer.py", dataset=evaluation.key, query=query,
             methods=[m.slug() for m in METHODS])
    no_exception(at)
    assert not at.error
    q = [x.name for x in dataset.queries].index(query)
    expected = reports(cache, dataset, evaluation)
    shown_aps = [m.value for m in at.metric]
    assert shown_aps == [f"{100 * expected[m.label()]['per_query'][q]['ap']:.2f}" for m in METHODS]
    tiles = [c for c in captions(at) if c.startswith("#")]
    assert len(tiles) == 2 * 10 and any("R1M distractor" in c for c in tiles)
    assert not any(b.label == "use as query" for b in at.button)  # ranking by an image needs its descriptors
    distractor_files = {p for p in opened if p.startswith(str(root))}
    shown = {str(root / c.split()[1]) for c in tiles if "R1M distractor" in c}
    assert distractor_files == shown  # only the shown distractors are read
    assert any(i.value.startswith(f"Not available for {NAME}") for i in at.info)  # no upload either


def test_a_missing_distractor_image_is_a_placeholder_naming_it(served):
    cache, dataset, root, evaluation = served
    path = evaluation.files[(METHODS[1], "original")]
    stored = checked_topk(path, dataset, "original", load_entry(cache, dataset, METHODS[1]).manifest,
                          read_manifest(path.parent))
    first = next(int(i) for i in stored.topk.ids[0, :10] if i >= stored.n_db)  # shown for query arch_00
    relative = stored.distractor_path(first)
    (root / relative).unlink()
    at = app("pages/2_Query_explorer.py", dataset=evaluation.key, query="arch_00", methods=[METHODS[1].slug()])
    no_exception(at)
    assert not at.error and any(c.startswith(f"#") and f" {relative} [" in c for c in captions(at))
    tile = gallery.thumbnail_under(str(root), evaluation.distractor_key, relative, relative)
    name = relative.rsplit("/", 1)[-1]
    assert np.array_equal(np.asarray(tile), np.asarray(gallery.placeholder(f"missing: {name}")))


def test_curves_plot_the_reports_per_query_ap(served):
    cache, dataset, _, evaluation = served
    at = app("pages/4_Curves.py", dataset=evaluation.key, methods=[METHODS[1].slug()])
    no_exception(at)
    assert not at.error
    assert any(NAME in c.value and "K = 10" in c.value for c in at.caption)
    bars = json.loads(at.get("plotly_chart")[2].proto.spec)["data"][0]
    expected = reports(cache, dataset, evaluation)[METHODS[1].label()]["per_query"]
    assert dict(zip(bars["x"], plotted(bars["y"]))) == pytest.approx({r["query"]: 100 * r["ap"] for r in expected})
    links = at.dataframe[0].value["explore"]
    assert all(f"dataset={evaluation.key}" in link for link in links)


def test_data_page_lists_the_stored_lists(served):
    _, _, _, evaluation = served
    at = app("pages/7_Data_and_descriptors.py")
    no_exception(at)
    (listed,) = [d.value for d in at.dataframe if "file" in d.value.columns]
    assert sorted(listed["file"]) == sorted(str(p) for p in evaluation.files.values())
    assert not any(e.label.startswith("R1M") or "revisitop1m" in e.label for e in at.expander)


@pytest.mark.parametrize("page", ["pages/3_Diffusion_lab.py", "pages/5_Manifolds.py"])
def test_pages_that_need_descriptors_say_they_are_not_available(served, page):
    _, _, _, evaluation = served
    at = app(page, dataset=evaluation.key)
    no_exception(at)
    assert not at.error and f"not available for {NAME}" in at.info[0].value


def test_stale_or_damaged_lists_are_refused_naming_the_file(served):
    cache, dataset, _, evaluation = served
    stale, damaged = (evaluation.files[(m, "original")] for m in METHODS)
    entry = load_entry(cache, dataset, METHODS[0])
    save_entry(cache, dataset, METHODS[0], entry.db[::-1].copy(), entry.queries)  # re-extracted database
    damaged.write_bytes(damaged.read_bytes()[:200])
    at = app(dataset=evaluation.key)
    no_exception(at)
    errors = [e.value for e in at.error]
    assert any(str(stale) in e and "other database descriptors" in e for e in errors), errors
    assert any(str(damaged) in e for e in errors), errors
    assert at.warning[0].value.startswith("No usable") or not at.dataframe


def test_distractor_tiles_come_from_the_thumbnail_shard_when_the_cache_holds_one(served, monkeypatch):
    from cbir.distractors import distractor_dataset, evaluate_against
    from cbir.thumbshard import read_thumbnail
    from dashboard import stored_topk

    cache, dataset, root, evaluation = served
    distractors = distractor_dataset(root)
    for method in METHODS:
        evaluate_against(dataset, load_entry(cache, dataset, method), method, distractors, cache, "original", k=10,
                         thumbnails=True)
    for path in (root / "jpg").rglob("*.jpg"):
        path.unlink()  # served where the images are not (Community Cloud)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    at = app("pages/2_Query_explorer.py", dataset=evaluation.key, query="arch_00", methods=[m.slug() for m in METHODS])
    no_exception(at)
    assert not at.error
    shown = [c.split()[1] for c in captions(at) if "R1M distractor" in c]
    assert shown and not [p for p in opened if p.startswith(str(root))]
    folder = cache / evaluation.distractor_key
    tile = stored_topk.shard_tile(evaluation.distractor_key, shown[0])
    with real_open(io.BytesIO(read_thumbnail(folder, shown[0]))) as img:
        assert np.array_equal(np.asarray(tile), np.asarray(img.convert("RGB")))


def test_the_benchmarks_overview_points_to_its_distractor_evaluation(served):
    _, dataset, _, evaluation = served
    at = app()
    no_exception(at)
    assert any(f"Also evaluated against distractors: {NAME}" in c.value for c in at.caption)
    at = app(dataset=evaluation.key)
    assert not any("Also evaluated against" in c.value for c in at.caption)


# --- in a bundle (`python -m cbir bundle`): what Community Cloud serves --------------------------

def bundle_of(served, tmp_path, monkeypatch, reduce="float16"):
    """The served cache's benchmark bundled (the distractors' thumbnails in the cache first), the
    distractor images deleted and the app pointed at the bundle; (bundle, its manifest)."""
    from cbir.bundle import build_bundle
    from cbir.distractors import distractor_dataset, evaluate_against

    cache, dataset, root, _ = served
    for method in METHODS:
        evaluate_against(dataset, load_entry(cache, dataset, method), method, distractor_dataset(root), cache,
                         "original", k=10, thumbnails=True)
    out = tmp_path / "bundle"
    manifest = build_bundle(cache, dataset, list(METHODS), out, reduce=reduce, layouts=False, grid_protocols=())
    for path in (root / "jpg").rglob("*.jpg"):
        path.unlink()
    monkeypatch.setenv("CBIR_CACHE_DIR", str(out))
    return out, manifest


@pytest.mark.parametrize("reduce", ["float16", "pca:8"])
def test_a_bundle_serves_the_evaluation_with_the_caches_figures(served, tmp_path, monkeypatch, reduce):
    from dashboard import stored_topk

    cache, dataset, _, evaluation = served
    expected = reports(cache, dataset, evaluation)
    out, manifest = bundle_of(served, tmp_path, monkeypatch, reduce)
    assert manifest["distractor_evaluations"] == [NAME]
    carried = sorted(n.split("/", 1)[1] for n in manifest["files"] if n.startswith(evaluation.distractor_key))
    assert carried == sorted([f"{p.parent.name}/{p.name}" for p in evaluation.files.values()]
                             + [f"{m.slug()}/manifest.json" for m in METHODS] + ["thumbs.bin", "thumbs.json"])
    at = app(dataset=evaluation.key)
    no_exception(at)
    assert not at.error
    table = at.dataframe[0].value.set_index("method")
    assert sorted(table.index) == sorted(expected)
    for label, report in expected.items():  # the lists' figures, not the reduced descriptors'
        assert table.loc[label, "mAP"] == pytest.approx(100 * report["mAP"])
        assert table.loc[label, "mP@10"] == pytest.approx(100 * report["mP@10"])
        assert table.loc[label, "queries truncated"] == report["n_queries_truncated"]
        assert table.loc[label, "dim"] == 32  # what they were computed with, also under pca:8
    assert any(w.value.startswith("Computed on the full-precision descriptors") and "float32, 32-D" in w.value
               for w in at.warning)
    assert any("computed on the full-precision descriptors" in c.value for c in at.sidebar.caption)

    at = app("pages/2_Query_explorer.py", dataset=evaluation.key, query="arch_00", methods=[METHODS[1].slug()])
    no_exception(at)
    assert not at.error
    tiles = [c for c in captions(at) if c.startswith("#")]
    shown = [c.split()[1] for c in tiles if "R1M distractor" in c]
    assert len(tiles) == 10 and shown
    assert all(stored_topk.shard_tile(evaluation.distractor_key, name) for name in shown)  # the images are gone
    assert at.metric[0].value == f"{100 * expected[METHODS[1].label()]['per_query'][0]['ap']:.2f}"


def test_the_bundle_checks_the_lists_against_the_entry_it_was_reduced_from(served, tmp_path, monkeypatch):
    from cbir.cache import list_datasets

    out, _ = bundle_of(served, tmp_path, monkeypatch)
    (bundled,) = stored_evaluations(out).values()
    (shared,) = list_datasets(out).values()  # the distractors' description is not carried
    path = bundled.files[(METHODS[0], "original")]
    manifest = load_entry(out, shared, METHODS[0]).manifest
    checked = checked_topk(path, shared, "original", manifest, read_manifest(path.parent), in_bundle=True)
    assert checked.report(shared, "original")["computed_on"] == {"dim": 32, "dtype": "float32"}
    with pytest.raises(ValueError, match="other database descriptors than the cache now holds"):
        checked_topk(path, shared, "original", manifest, read_manifest(path.parent))  # float16: other checksums
    other = json.loads(json.dumps(manifest))
    other["reduced_from"]["sources"]["files"]["db.npy"] = "0" * 64
    with pytest.raises(ValueError, match="other database descriptors than the bundle was built from"):
        checked_topk(path, shared, "original", other, read_manifest(path.parent), in_bundle=True)


def test_a_stale_evaluation_is_not_bundled(served, tmp_path):
    from cbir.bundle import BundleError, build_bundle

    cache, dataset, _, evaluation = served
    entry = load_entry(cache, dataset, METHODS[0])
    save_entry(cache, dataset, METHODS[0], entry.db[::-1].copy(), entry.queries)  # re-extracted database
    stale = evaluation.files[(METHODS[0], "original")]
    with pytest.raises(BundleError, match=f"{stale}: computed from other database descriptors.*--no-distractors"):
        build_bundle(cache, dataset, list(METHODS), tmp_path / "bundle", layouts=False, grid_protocols=())
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("damaged", ["topk", "thumbs.bin"])
def test_a_tampered_list_or_shard_in_a_bundle_is_refused_naming_it(served, tmp_path, monkeypatch, damaged):
    from cbir.bundle import BundleError, verify_bundle

    _, _, _, evaluation = served
    out, manifest = bundle_of(served, tmp_path, monkeypatch)
    name = next(n for n in manifest["files"] if n.startswith(evaluation.distractor_key) and damaged in n)
    data = bytearray((out / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{out / name}: contents differ"):
        verify_bundle(out)
    at = app(dataset=evaluation.key)
    no_exception(at)
    assert any(e.value.startswith("Refusing to serve this bundle") and str(out / name) in e.value for e in at.error)
    assert not at.dataframe
