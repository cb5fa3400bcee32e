"""Extraction on Ray Data (local, 2 CPUs): the in-process extractor's descriptors, bit for bit."""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

from cbir.cache import load_entry
from cbir.cli import main
from cbir.data import load_dataset
from cbir.extraction import extract
from cbir.method import Method
from synthetic import make_class_folder

METHODS = [Method(pooling=p, size=64, weights="random") for p in ("gem", "rmac")]
CHUNK = 4


@pytest.fixture(scope="module")
def ray_engine():
    pytest.importorskip("ray.data", reason="Ray Data is not installed (requirements-scale.txt)")
    import ray

    from cbir.distributed import RayEngine

    yield RayEngine(actors=2, threads=1)
    ray.shutdown()


@pytest.fixture
def folder(tmp_path):
    return load_dataset("folder", make_class_folder(tmp_path / "data", per_class=5))


def local(dataset, cache, **options):
    return extract(dataset, METHODS, cache, runtime="torch", threads=1, workers=0, chunk_size=CHUNK, **options)


def assert_same_entries(a, b):
    for m in METHODS:
        assert a[m].manifest["files"] == b[m].manifest["files"], m.label()  # checksums of every array
        np.testing.assert_array_equal(np.asarray(a[m].db), np.asarray(b[m].db))


def test_ray_extraction_is_bitwise_the_in_process_one(ray_engine, folder, tmp_path):
    expected = local(folder, tmp_path / "local")
    got = extract(folder, METHODS, tmp_path / "ray", runtime="torch", threads=1, chunk_size=CHUNK, engine=ray_engine)
    assert_same_entries(expected, got)
    assert not list((tmp_path / "ray").glob("*/.partial/*"))  # the shards are gone once published


def test_a_stopped_ray_job_resumes_from_its_shards(ray_engine, folder, tmp_path):
    expected = local(folder, tmp_path / "local")
    shards = []

    def stop_after_two_shards(done, total, stage):
        shards.append(done)
        if len(shards) == 3:  # the initial call, then one per shard
            raise KeyboardInterrupt

    cache = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        extract(folder, METHODS, cache, stop_after_two_shards, runtime="torch", threads=1, chunk_size=CHUNK,
                engine=ray_engine)
    assert len(list(cache.glob("*/.partial/*/chunk-*.npz"))) == 2
    got = extract(folder, METHODS, cache, runtime="torch", threads=1, chunk_size=CHUNK, engine=ray_engine)
    assert got[METHODS[0]].manifest["resumed_items"] == 2 * CHUNK
    assert_same_entries(expected, got)


def test_a_killed_model_actor_is_restarted_and_the_result_unchanged(ray_engine, folder, tmp_path):
    from ray._private import state  # the actors' process ids (the public state API needs the dashboard)

    killed = []

    def kill_an_actor(done, total, stage):
        if done and not killed:
            alive = [a["Pid"] for a in state.actors().values()
                     if a["State"] == "ALIVE" and "ChunkActor" in a.get("ActorClassName", "")]
            if alive:
                os.kill(alive[0], signal.SIGKILL)
                killed.append(alive[0])

    got = extract(folder, METHODS, tmp_path / "ray", kill_an_actor, runtime="torch", threads=1, chunk_size=1,
                  engine=ray_engine)
    assert killed
    expected = extract(folder, METHODS, tmp_path / "local", runtime="torch", threads=1, workers=0, chunk_size=1)
    assert_same_entries(expected, got)


def test_shards_of_an_in_process_run_are_resumed_by_ray(ray_engine, folder, tmp_path):
    def stop_after_one_chunk(done, total, stage):
        if done >= 2 * CHUNK:  # reported before the second chunk is written
            raise KeyboardInterrupt

    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        local(folder, cache, progress=stop_after_one_chunk)
    got = extract(folder, METHODS, cache, runtime="torch", threads=1, chunk_size=CHUNK, engine=ray_engine)
    assert got[METHODS[0]].manifest["resumed_items"] == CHUNK
    assert_same_entries(local(folder, tmp_path / "local"), got)


def test_extract_cli_with_engine_ray(ray_engine, folder, tmp_path, capsys):
    common = ["extract", "--dataset", "folder", "--root", folder.root, "--pooling", "gem", "--size", "64",
              "--weights", "random", "--runtime", "torch", "--threads", "1"]
    assert main(common + ["--cache", str(tmp_path / "local"), "--workers", "0"]) == 0
    assert main(common + ["--cache", str(tmp_path / "ray"), "--engine", "ray", "--actors", "2"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex('{\n "dataset"'):])["entries"][0]["n_images"] == len(folder.images)
    a, b = (load_entry(tmp_path / c, folder, METHODS[0]) for c in ("local", "ray"))
    assert a.manifest["files"] == b.manifest["files"]


def test_engine_ray_without_ray_is_a_one_line_error(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code = main(["extract", "--dataset", "folder", "--root", folder.root, "--cache", str(tmp_path / "c"),
                 "--pooling", "gem", "--size", "64", "--weights", "random", "--engine", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --engine ray needs Ray Data") and "pip install -r requirements-scale.txt" in err
    assert not (tmp_path / "c").exists()


def test_address_without_engine_ray_is_refused(folder, tmp_path, capsys):
    code = main(["extract", "--dataset", "folder", "--root", folder.root, "--cache", str(tmp_path / "c"),
                 "--pooling", "gem", "--size", "64", "--weights", "random", "--address", "ray://head:10001"])
    assert code == 2 and "--address applies to --engine ray" in capsys.readouterr().err


def test_default_actors_are_one_per_gpu_else_one_per_live_node():
    from cbir.distributed import default_actors

    class Cluster:
        def __init__(self, resources, nodes):
            self.resources, self.alive = resources, nodes

        def cluster_resources(self):
            return self.resources

        def nodes(self):
            return [{"Alive": alive} for alive in self.alive]

    assert default_actors(Cluster({"CPU": 2.0}, [True])) == 1  # one machine: one actor, every core
    assert default_actors(Cluster({"CPU": 64.0}, [True, True, False, True])) == 3
    assert default_actors(Cluster({"CPU": 64.0, "GPU": 8.0}, [True, True])) == 8
