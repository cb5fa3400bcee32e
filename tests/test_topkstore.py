"""Stored top-K evaluations carry their provenance and are refused when stale or damaged;
evaluate reuses a valid one without loading the distractors' descriptors."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cache import load_entry, read_manifest, save_entry
from cbir.distractors import evaluate_against
from cbir.topk import save_topk
from cbir.topkstore import StaleTopK, checked_topk, stored_evaluations
from dashboard_fixture import METHODS, build, make_distractor_evaluation
from test_distractors import revisited  # noqa: F401  (the fixture)

METHOD = METHODS[0]


@pytest.fixture
def stored(tmp_path):
    """(cache, dataset, distractors, the mac method's top-K file) of a generated stored evaluation."""
    _, cache, dataset = build(tmp_path)
    distractors, _ = make_distractor_evaluation(tmp_path, cache, dataset)
    (evaluation,) = stored_evaluations(cache).values()
    return cache, dataset, distractors, evaluation.files[(METHOD, "original")]


def check(cache, dataset, path):
    return checked_topk(path, dataset, "original", load_entry(cache, dataset, METHOD).manifest,
                        read_manifest(path.parent))


def test_a_valid_stored_evaluation_is_reused_without_the_distractor_descriptors(stored):
    cache, dataset, distractors, path = stored
    entry = load_entry(cache, dataset, METHOD)
    assert not (path.parent / "db.npy").exists()  # deleted by the fixture: a search would need it
    report = evaluate_against(dataset, entry, METHOD, distractors, cache, "original", k=10)
    assert report["topk_reused"] is True and report["topk_file"] == str(path)
    assert report["dataset_name"] == "tiny + R1M (12 of 1001001 images)" and report["n_distractors"] == 12
    assert report["mAP"] == pytest.approx(check(cache, dataset, path).report(dataset, "original")["mAP"])


def test_a_protocol_the_dataset_lacks_is_refused_naming_the_file(stored):
    """What the dashboard and the bundle catch (StaleTopK), not a KeyError."""
    cache, dataset, _, path = stored
    with pytest.raises(StaleTopK, match=f"{path}: computed for protocol 'hard', which"):
        checked_topk(path, dataset, "hard", load_entry(cache, dataset, METHOD).manifest, read_manifest(path.parent))


def test_stale_distractor_descriptors_are_refused_and_evaluate_recomputes(stored):
    cache, dataset, distractors, path = stored
    before = path.read_bytes()
    rng = np.random.default_rng(9)
    db = rng.normal(size=(12, 32))
    save_entry(cache, distractors, METHOD, (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32),
               np.zeros((0, 32), np.float32))  # a new entry folder: the lists are gone with the old one
    assert not path.exists()
    path.write_bytes(before)  # ... and restored from a backup
    with pytest.raises(StaleTopK, match=f"{path}: computed from other distractors descriptors"):
        check(cache, dataset, path)
    report = evaluate_against(dataset, load_entry(cache, dataset, METHOD), METHOD, distractors, cache, "original", k=10)
    assert report["topk_reused"] is False and "other distractors descriptors" in report["topk_recomputed"]
    assert path.read_bytes() != before
    assert check(cache, dataset, path).report(dataset, "original")["mAP"] == pytest.approx(report["mAP"])


def test_stale_database_descriptors_are_refused(stored):
    cache, dataset, _, path = stored
    entry = load_entry(cache, dataset, METHOD)
    save_entry(cache, dataset, METHOD, entry.db[::-1].copy(), entry.queries)
    with pytest.raises(StaleTopK, match="computed from other database descriptors"):
        check(cache, dataset, path)


def test_another_ground_truth_is_refused(stored):
    cache, dataset, _, path = stored
    gnd = [dict(g) for g in dataset.gnd["original"]]
    gnd[0] = {"ok": gnd[0]["ok"][:-1], "junk": gnd[0]["junk"]}
    changed = replace(dataset, gnd={"original": gnd})
    with pytest.raises(StaleTopK, match="another ground truth"):
        check(cache, changed, path)


def test_a_damaged_file_is_refused_naming_it(stored):
    cache, dataset, _, path = stored
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(StaleTopK, match=f"{path}: not a readable stored top-K evaluation"):
        check(cache, dataset, path)


def test_lists_that_disagree_with_their_ranks_are_refused(stored):
    cache, dataset, _, path = stored
    topk = check(cache, dataset, path).topk
    topk.positive_ranks[0] = topk.positive_ranks[0][1:]  # a positive "lost": mAP would be wrong
    save_topk(path, topk)
    with pytest.raises(StaleTopK, match="damaged .stored positive or junk ranks do not match"):
        check(cache, dataset, path)


def test_a_file_without_provenance_is_refused(stored):
    cache, dataset, _, path = stored
    topk = check(cache, dataset, path).topk
    topk.extra = {}
    save_topk(path, topk)
    with pytest.raises(StaleTopK, match="without provenance"):
        check(cache, dataset, path)
    problems = []
    assert stored_evaluations(cache, problems) and any("without provenance" in p for p in problems)


def test_provenance_names_what_the_lists_were_computed_from(stored):
    cache, dataset, distractors, path = stored
    found = check(cache, dataset, path)
    record = found.provenance
    assert record["distractors"]["files"]["db.npy"] == read_manifest(path.parent)["files"]["db.npy"]
    assert record["distractor_root"] == distractors.root
    shown = np.unique(found.topk.ids[found.topk.ids >= found.n_db])
    assert [found.distractor_path(int(i)) for i in shown] == [distractors.paths[i - found.n_db] for i in shown]
    assert json.loads(json.dumps(record)) == record


def test_thumbnail_shard_holds_the_shown_distractors_and_refuses_damaged_bytes(stored, capsys):
    from cbir.thumbshard import BLOB, read_index, read_thumbnail, shown_distractors, write_shard

    cache, dataset, distractors, path = stored
    found = check(cache, dataset, path)
    report = evaluate_against(dataset, load_entry(cache, dataset, METHOD), METHOD, distractors, cache, "original",
                              k=10, thumbnails=True)
    folder = path.parent.parent
    wanted = [distractors.paths[i] for i in shown_distractors(found.topk.ids, found.n_db)]
    assert report["thumbnail_shard"] == {"thumbnails": len(wanted), "added": len(wanted), "unreadable": []}
    assert sorted(read_index(folder)) == sorted(wanted)
    with Image.open(io.BytesIO(read_thumbnail(folder, wanted[0]))) as img:
        assert img.size == (56, 40)  # never enlarged
    assert read_thumbnail(folder, "jpg/absent.jpg") is None
    again = write_shard(folder, Path(distractors.root), wanted[:1] + ["jpg/absent.jpg"])
    assert again["added"] == 0 and again["thumbnails"] == len(wanted)
    assert len(again["unreadable"]) == 1 and "jpg/absent.jpg" in again["unreadable"][0]
    offset, length, _ = read_index(folder)[wanted[0]]
    blob = bytearray((folder / BLOB).read_bytes())
    blob[offset + length // 2] ^= 0xFF
    (folder / BLOB).write_bytes(bytes(blob))
    assert read_thumbnail(folder, wanted[0]) is None and read_thumbnail(folder, wanted[-1]) is not None


def test_thumbnails_without_distractors_are_refused_in_one_line(tmp_path, capsys):
    from cbir.cli import main
    from synthetic import make_revisited_like

    root = make_revisited_like(tmp_path / "data")
    code = main(["evaluate", "--dataset", "rparis6k", "--root", str(root), "--cache", str(tmp_path / "cache"),
                 "--pooling", "gem", "--size", "64", "--weights", "random", "--thumbnails"])
    err = capsys.readouterr().err
    assert code == 2 and "--thumbnails (of the distractors) needs --distractors" in err
    assert len(err.strip().splitlines()) == 1


def test_the_largest_k_of_a_method_is_served_whatever_the_file_is_called(stored):
    from cbir.topk import place_ground_truth
    from cbir.topkstore import provenance, store_topk, topk_path

    cache, dataset, distractors, path = stored
    found = check(cache, dataset, path)
    shorter = place_ground_truth(found.topk.ids[:, :5], found.topk.scores[:, :5], dataset.gnd["original"],
                                 found.topk.n_ranked)
    record = provenance(dataset, "original", METHOD, 5, load_entry(cache, dataset, METHOD).manifest,
                        read_manifest(path.parent), found.name, distractors.root)
    store_topk(topk_path(path.parent, dataset, "original", 5), shorter, record, distractors.paths, found.n_db)
    (evaluation,) = stored_evaluations(cache).values()
    assert evaluation.files[(METHOD, "original")] == path  # K = 10 over K = 5
    renamed = path.rename(path.with_name("topk-z.npz"))  # sorted after the K = 5 file, still chosen
    (evaluation,) = stored_evaluations(cache).values()
    assert evaluation.files[(METHOD, "original")] == renamed


def test_evaluate_cli_reuses_the_stored_lists_the_second_time(capsys, revisited, tmp_path):
    from test_distractors import evaluate
    from cbir.distractors import distractor_dataset
    from synthetic import clustered_unit_vectors

    dataset, r1m_root = revisited
    distractors = distractor_dataset(r1m_root)
    n, nq = len(dataset.images), len(dataset.queries)
    x, _ = clustered_unit_vectors(n + nq + len(distractors.images), 16, clusters=4, noise=0.8, seed=2)
    cache = tmp_path / "cache"
    method = replace(METHOD, pooling="gem", size=64, weights="random")
    save_entry(cache, dataset, method, x[:n], x[n:n + nq])
    save_entry(cache, distractors, method, x[n + nq:], np.zeros((0, 16), np.float32))
    first, second = (json.loads(evaluate(capsys, dataset, r1m_root, cache)[1].out) for _ in range(2))
    assert first["topk_reused"] is False and second["topk_reused"] is True, second.get("topk_recomputed")
    assert second["mAP"] == first["mAP"] and second["per_query"] == first["per_query"]


def test_a_stored_evaluation_of_another_method_is_refused(stored):
    cache, dataset, _, path = stored
    assert check(cache, dataset, path).topk.k > 0
    manifest, distractor_manifest = load_entry(cache, dataset, METHOD).manifest, read_manifest(path.parent)
    assert checked_topk(path, dataset, "original", manifest, distractor_manifest, METHOD).topk.k > 0
    with pytest.raises(StaleTopK, match="computed by another method than .*AQE"):
        checked_topk(path, dataset, "original", manifest, distractor_manifest, replace(METHOD, rerank="aqe"))
