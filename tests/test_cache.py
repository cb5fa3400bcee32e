"""The descriptor cache: whole entries or none, defects detected, resumable partial runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.cache import (CacheError, PartialRun, atomic_write_bytes, cached_dataset, dataset_key, entry_dir,
                        list_entries, load_entry, load_entry_array, partial_dir, save_dataset, save_entry)
from cbir.data import Dataset, Query
from cbir.method import Method

METHOD = Method(pooling="gem", size=256)


def make_dataset(images=("a", "b", "c", "d"), root="/data", bbox=(1.0, 2.0, 30.0, 40.0), unreadable=()) -> Dataset:
    images = list(images)
    queries = [Query("a", 0, "a.jpg", bbox), Query("c", 2, "c.jpg")]
    return Dataset(name="paris6k", root=root, images=images, paths=[f"{n}.jpg" for n in images],
                   labels=["x"] * len(images), queries=queries,
                   gnd={"original": [{"ok": np.array([0, 1]), "junk": np.array([3])},
                                     {"ok": np.array([2]), "junk": np.array([], np.int64)}]},
                   n_images_total=10, n_queries_total=2,
                   unreadable=[{"name": n, "error": "truncated"} for n in unreadable])


def descriptors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def saved(tmp_path):
    ds = make_dataset()
    db, q = descriptors(4), descriptors(2, seed=1)
    save_entry(tmp_path, ds, METHOD, db, q, extra={"note": "hi"}, arrays={"regions_sample": descriptors(5, seed=2)})
    return ds, db, q


def test_entry_round_trip_with_extra_arrays(tmp_path, saved):
    ds, db, q = saved
    entry = load_entry(tmp_path, ds, METHOD.with_rerank("diffusion"))  # re-ranking shares the entry
    assert np.array_equal(entry.db, db) and np.array_equal(entry.queries, q)
    assert entry.manifest["note"] == "hi" and entry.method == METHOD
    assert set(entry.manifest["files"]) == {"db.npy", "queries.npy", "regions_sample.npy"}
    assert np.array_equal(load_entry_array(entry, "regions_sample"), descriptors(5, seed=2))
    assert list_entries(tmp_path, dataset_key(ds)) == [METHOD]
    assert not [p for p in entry.path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["db.npy", "queries.npy"])
def test_truncated_array_is_detected(tmp_path, saved, name):
    ds, _, _ = saved
    path = entry_dir(tmp_path, dataset_key(ds), METHOD) / name
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CacheError, match=f"{name}: 100 bytes, the manifest says"):
        load_entry(tmp_path, ds, METHOD)
    with pytest.raises(CacheError, match=f"{name}: 100 bytes, the manifest says"):
        load_entry(tmp_path, ds, METHOD, verify=False)


def test_tampered_extra_array_and_manifest_are_detected(tmp_path, saved):
    ds, _, _ = saved
    path = entry_dir(tmp_path, dataset_key(ds), METHOD)
    entry = load_entry(tmp_path, ds, METHOD)
    np.save(path / "regions_sample.npy", descriptors(5, seed=9))
    with pytest.raises(CacheError, match="regions_sample.npy: checksum mismatch"):
        load_entry_array(entry, "regions_sample.npy")
    with pytest.raises(CacheError, match="stores no whitening_mean.npy"):
        load_entry_array(entry, "whitening_mean")
    (path / "manifest.json").write_text("{ not json")
    with pytest.raises(CacheError, match="manifest.json: not valid JSON"):
        load_entry(tmp_path, ds, METHOD)


def test_entry_of_other_images_is_stale(tmp_path, saved):
    other = make_dataset(images=("a", "b", "c", "e"))
    other_key_dir = entry_dir(tmp_path, dataset_key(other), METHOD)
    other_key_dir.parent.mkdir(parents=True)
    entry_dir(tmp_path, dataset_key(saved[0]), METHOD).rename(other_key_dir)
    with pytest.raises(CacheError, match="other database images"):
        load_entry(tmp_path, other, METHOD)


def test_bad_shapes_and_reserved_names_write_nothing(tmp_path):
    ds = make_dataset()
    with pytest.raises(ValueError, match="3 database / 2 query descriptors"):
        save_entry(tmp_path, ds, METHOD, descriptors(3), descriptors(2))
    with pytest.raises(ValueError, match="named like the entry's own files"):
        save_entry(tmp_path, ds, METHOD, descriptors(4), descriptors(2), arrays={"db": descriptors(1)})
    assert not list(tmp_path.glob("*/*/manifest.json"))
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_rewriting_an_entry_replaces_it_whole(tmp_path, saved):
    ds, _, _ = saved
    save_entry(tmp_path, ds, METHOD, descriptors(4, seed=5), descriptors(2, seed=6))
    entry = load_entry(tmp_path, ds, METHOD)
    assert np.array_equal(entry.db, descriptors(4, seed=5))
    assert "regions_sample.npy" not in entry.manifest["files"]
    assert sorted(p.name for p in entry.path.parent.iterdir()) == ["dataset.json", METHOD.slug()]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x.bin", object())
    assert list(tmp_path.iterdir()) == []


# --- partial runs -----------------------------------------------------------------------------

def test_partial_run_keeps_chunks_across_reopening(tmp_path):
    ds = make_dataset()
    directory = partial_dir(tmp_path, ds, "run1")
    run = PartialRun(directory, {"heads": ["gem"], "chunk_size": 2})
    assert run.load_chunk(0) is None
    run.save_chunk(0, {"d0": descriptors(2)}, seconds=1.5)
    run.close()  # the process that wrote it ended
    again = PartialRun(directory, {"heads": ["gem"], "chunk_size": 2})
    assert np.array_equal(again.load_chunk(0)["d0"], descriptors(2))
    assert again.seconds == 1.5 and again.load_chunk(1) is None
    again.remove()
    assert not directory.exists() and not directory.parent.exists()


def test_partial_run_with_another_fingerprint_starts_over(tmp_path):
    directory = partial_dir(tmp_path, make_dataset(), "run1")
    old = PartialRun(directory, {"chunk_size": 2})
    old.save_chunk(0, {"d0": descriptors(2)}, seconds=1.0)
    old.close()
    fresh = PartialRun(directory, {"chunk_size": 3})
    assert fresh.load_chunk(0) is None and fresh.seconds == 0.0
    assert json.loads((directory / "progress.json").read_text())["fingerprint"] == {"chunk_size": 3}


def test_unreadable_chunk_is_dropped_for_recomputation(tmp_path):
    run = PartialRun(partial_dir(tmp_path, make_dataset(), "run1"), {"x": 1})
    run.save_chunk(0, {"d0": descriptors(2)}, seconds=1.0)
    run.chunk_path(0).write_bytes(b"PK\x03\x04 broken")
    assert run.load_chunk(0) is None and not run.chunk_path(0).exists()


# --- finding a verified dataset description ---------------------------------------------------

def test_cached_dataset_matches_the_same_listing(tmp_path):
    ds = make_dataset()
    save_dataset(tmp_path, ds)
    assert cached_dataset(tmp_path, make_dataset()).to_json() == ds.to_json()
    assert cached_dataset(tmp_path, make_dataset(images=("a", "b", "c", "d", "e"))) is None
    assert cached_dataset(tmp_path, make_dataset(bbox=(1.0, 2.0, 31.0, 40.0))) is None
    assert cached_dataset(tmp_path, make_dataset(root="/elsewhere")) is None


def test_cached_dataset_accounts_for_images_found_unreadable(tmp_path):
    """The verified description lacks the unreadable image `b`; a listing that does not decode has it."""
    verified = make_dataset(images=("a", "c", "d"), unreadable=("b",))
    verified.queries = [Query("a", 0, "a.jpg", (1.0, 2.0, 30.0, 40.0)), Query("c", 1, "c.jpg")]
    verified.gnd = {"original": [{"ok": np.array([0]), "junk": np.array([2])},
                                 {"ok": np.array([1]), "junk": np.array([], np.int64)}]}
    save_dataset(tmp_path, verified)
    assert cached_dataset(tmp_path, make_dataset()) is not None
    listed = make_dataset()
    listed.gnd["original"][0]["junk"] = np.array([2])  # ground truth changed: not the same dataset
    assert cached_dataset(tmp_path, listed) is None
