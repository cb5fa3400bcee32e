"""R1M-style distractors: each query ranked against database + distractors, ground truth unchanged."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cbir.cache import save_entry
from cbir.cli import main
from cbir.data import load_dataset
from cbir.diffusion import DiffusionRanker
from cbir.distractors import combined_name, distractor_dataset, distractor_report, read_image_list
from cbir.method import Method
from cbir.metrics import compute_map, seed_map_at_k
from cbir.ranking import search
from cbir.rerank import query_expansion
from cbir.topk import load_topk
from synthetic import clustered_unit_vectors, landmark_image, make_revisited_like, write_jpeg
from test_download import server, tgz  # noqa: F401  (the fixture)

METHOD = Method(pooling="gem", size=64, weights="random")


def write_distractors(root, n: int = 30):
    """revisitop's layout: `revisitop1m.txt` (names without extension) and `jpg/<name>.jpg`."""
    rng = np.random.default_rng(1)
    names = [f"{i % 3}/{i:04x}" for i in range(n)]
    for i, name in enumerate(names):
        write_jpeg(root / "jpg" / f"{name}.jpg", landmark_image(7 + i % 3, (40, 30), rng))
    (root / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    return root


def brute_force(db, distractor_db, queries, gnd):
    """Full ranking over the stacked descriptors by a stable sort: the reference figures."""
    ranks = np.argsort(-(queries @ np.vstack([db, distractor_db]).T), axis=1, kind="stable")
    reference = compute_map(ranks, gnd, kappas=(1, 5, 10))
    return reference, seed_map_at_k(ranks, gnd, 100)[0], seed_map_at_k(ranks, gnd, None)[0]


@pytest.fixture
def revisited(tmp_path):
    root = make_revisited_like(tmp_path / "data")
    return load_dataset("rparis6k", root), write_distractors(tmp_path / "r1m")


def test_distractor_evaluation_equals_brute_force(revisited):
    dataset, r1m_root = revisited
    distractors = distractor_dataset(r1m_root)
    x, _ = clustered_unit_vectors(len(dataset.images) + len(dataset.queries) + len(distractors.images), 16,
                                  clusters=4, noise=0.8, seed=2)
    n, nq = len(dataset.images), len(dataset.queries)
    db, queries, distractor_db = x[:n], x[n:n + nq], x[n + nq:]
    total = n + len(distractor_db)
    for protocol in ("easy", "medium", "hard"):
        report, topk = distractor_report(db, distractor_db, queries, dataset, distractors, protocol, k=total)
        reference, seed100, seed_all = brute_force(db, distractor_db, queries, dataset.gnd[protocol])
        assert report["mAP"] == pytest.approx(reference["map"], abs=1e-12)
        assert [report["mP@1"], report["mP@5"], report["mP@10"]] == pytest.approx(reference["mpr"].tolist())
        assert report["seed_mAP@100"] == pytest.approx(seed100) and report["seed_mAP"] == pytest.approx(seed_all)
        assert report["n_ranked"] == total and report["n_distractors"] == len(distractor_db)
        assert topk.ids.max() >= n  # distractors are ranked among the database images
    assert report["dataset_name"] == "rParis6k (24 of 27 images) + R1M (30 of 1001001 images)"


def test_distractors_lower_the_map_of_a_query_they_outrank(revisited):
    dataset, r1m_root = revisited
    distractors = distractor_dataset(r1m_root)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((len(dataset.images), 8)).astype(np.float32)
    queries = db[[int(g["ok"][0]) for g in dataset.gnd["easy"]]]
    alone, _ = distractor_report(db, np.zeros((0, 8), np.float32), queries, dataset, distractors, "easy", k=100)
    copies = np.repeat(queries, 5, axis=0)  # distractors identical to the queries outrank every positive
    against, _ = distractor_report(db, copies, queries, dataset, distractors, "easy", k=100)
    assert against["mAP"] < alone["mAP"]


def test_image_list_names_the_file_and_line_of_a_bad_entry(tmp_path):
    (tmp_path / "revisitop1m.txt").write_text("a/b\nc.png\n../../etc/passwd\n")
    with pytest.raises(ValueError, match=r"revisitop1m.txt, line 3: '../../etc/passwd'"):
        read_image_list(tmp_path)
    (tmp_path / "revisitop1m.txt").write_text("a/b\nc.png\n")
    assert read_image_list(tmp_path) == ["jpg/a/b.jpg", "jpg/c.png"]
    with pytest.raises(ValueError, match="none of the 2 images"):
        distractor_dataset(tmp_path)
    with pytest.raises(ValueError, match="cannot read the revisitop1m image list"):
        read_image_list(tmp_path / "absent")


def test_missing_distractor_images_are_listed_and_named_in_the_dataset_name(revisited):
    dataset, r1m_root = revisited
    (r1m_root / "jpg" / "0" / "0000.jpg").unlink()
    distractors = distractor_dataset(r1m_root)
    assert distractors.missing == ["jpg/0/0000.jpg"] and len(distractors.images) == 29
    assert combined_name(dataset, distractors) == "rParis6k (24 of 27 images) + R1M (29 of 1001001 images)"
    whole = replace(dataset, n_images_total=len(dataset.images), missing=[])
    assert combined_name(whole, replace(distractors, n_images_total=29)) == "rParis6k + R1M"


def evaluate(capsys, dataset, r1m_root, cache, *extra):
    code = main(["evaluate", "--dataset", "rparis6k", "--root", dataset.root, "--cache", str(cache),
                 "--pooling", "gem", "--size", "64", "--weights", "random", "--protocol", "medium",
                 "--distractors", "revisitop1m", "--distractors-root", str(r1m_root), *extra])
    return code, capsys.readouterr()


def test_evaluate_cli_ranks_against_cached_distractors_and_stores_the_top_k(capsys, revisited, tmp_path):
    dataset, r1m_root = revisited
    distractors = distractor_dataset(r1m_root)
    x, _ = clustered_unit_vectors(len(dataset.images) + len(dataset.queries) + len(distractors.images), 16,
                                  clusters=4, noise=0.8, seed=2)
    n, nq = len(dataset.images), len(dataset.queries)
    cache = tmp_path / "cache"
    save_entry(cache, dataset, METHOD, x[:n], x[n:n + nq])
    save_entry(cache, distractors, METHOD, x[n + nq:], np.zeros((0, 16), np.float32))
    code, out = evaluate(capsys, dataset, r1m_root, cache)
    assert code == 0, out.err
    report = json.loads(out.out)
    reference, _, _ = brute_force(x[:n], x[n + nq:], x[n:n + nq], dataset.gnd["medium"])
    assert report["mAP"] == pytest.approx(reference["map"]) and report["n_queries_truncated"] == 0
    assert report["dataset_name"] == "rParis6k (24 of 27 images) + R1M (30 of 1001001 images)"
    assert load_topk(report["topk_file"]).ids.shape == (nq, n + len(distractors.images))


@pytest.mark.parametrize("extra, message", [
    (["--rerank", "kreciprocal"], "--rerank kreciprocal with distractors is not supported"),
    (["--rerank", "fsr"], "--rerank fsr with distractors is not supported"),
    (["--rerank", "diffusion", "--truncate", "0"], "--truncate must be at least 1"),
    (["--topk", "0"], "--topk must be at least 1"),
])
def test_evaluate_cli_refuses_unsupported_distractor_options_in_one_line(capsys, revisited, tmp_path, extra, message):
    dataset, r1m_root = revisited
    code, out = evaluate(capsys, dataset, r1m_root, tmp_path / "cache", *extra)
    assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1


def cached_stack(dataset, r1m_root, cache):
    """Descriptors of the database, queries and distractors saved in the cache; (db, queries, distractors)."""
    distractors = distractor_dataset(r1m_root)
    x, _ = clustered_unit_vectors(len(dataset.images) + len(dataset.queries) + len(distractors.images), 16,
                                  clusters=4, noise=0.8, seed=2)
    n, nq = len(dataset.images), len(dataset.queries)
    save_entry(cache, dataset, METHOD, x[:n], x[n:n + nq])
    save_entry(cache, distractors, METHOD, x[n + nq:], np.zeros((0, 16), np.float32))
    return x[:n], x[n:n + nq], x[n + nq:]


def test_evaluate_cli_reranks_with_aqe_against_distractors_as_on_the_stack(capsys, revisited, tmp_path):
    dataset, r1m_root = revisited
    db, queries, distractor_db = cached_stack(dataset, r1m_root, tmp_path / "cache")
    code, out = evaluate(capsys, dataset, r1m_root, tmp_path / "cache", "--rerank", "aqe", "--qe-n", "3")
    assert code == 0, out.err
    report = json.loads(out.out)
    stack = np.vstack([db, distractor_db])
    ranks = search(stack, query_expansion(stack, queries, 3, 3.0))[1]
    assert report["mAP"] == pytest.approx(compute_map(ranks, dataset.gnd["medium"])["map"])
    assert report["method"] == "Lite0 GeM 64px [random weights] +AQE(n=3)"
    assert report["topk_file"].endswith("-medium-k1000-aqe-n3.npz")


def test_evaluate_cli_diffuses_on_the_stored_graph_of_database_and_distractors(capsys, revisited, tmp_path):
    dataset, r1m_root = revisited
    db, queries, distractor_db = cached_stack(dataset, r1m_root, tmp_path / "cache")
    options = ("--rerank", "diffusion", "--k", "5", "--kq", "3", "--alpha", "0.9", "--truncate", "20", "--ann", "flat")
    code, out = evaluate(capsys, dataset, r1m_root, tmp_path / "cache", *options)
    assert code == 0, out.err
    report = json.loads(out.out)
    ranks = DiffusionRanker(np.vstack([db, distractor_db]), k=5).rank(queries, alpha=0.9, kq=3, truncate=20)
    assert report["mAP"] == pytest.approx(compute_map(ranks, dataset.gnd["medium"])["map"])
    assert report["method"] == ("Lite0 GeM 64px [random weights] +diffusion(a=0.9, k=5) truncated to each query's "
                                "top 20, exact kNN graph (flat index; recall@5 1.000 on 54 sampled items)")
    assert report["ann_graph"]["status"] == "built" and report["topk_file"].endswith("-T20-flat.npz")
    code, out = evaluate(capsys, dataset, r1m_root, tmp_path / "cache", *options)
    again = json.loads(out.out)  # the stored lists, their provenance naming the graph
    assert code == 0 and again["topk_reused"] and again["mAP"] == report["mAP"]
    assert again["method"] == report["method"] and again["ann_graph"]["recall"] == report["ann_graph"]["recall"]
    Path(report["topk_file"]).unlink()
    code, out = evaluate(capsys, dataset, r1m_root, tmp_path / "cache", *options)
    assert code == 0 and json.loads(out.out)["ann_graph"]["status"] == "loaded"
    code, out = evaluate(capsys, dataset, r1m_root, tmp_path / "cache", *options[:-1], "hnsw")
    assert code == 0 and "approximate kNN graph (HNSW M=32" in json.loads(out.out)["method"]


def test_extract_cli_describes_the_distractors_as_the_database(capsys, revisited, tmp_path):
    dataset, r1m_root = revisited
    cache = tmp_path / "cache"
    code = main(["extract", "--dataset", "rparis6k", "--root", dataset.root, "--cache", str(cache), "--pooling", "gem",
                 "--size", "64", "--weights", "random", "--runtime", "torch",
                 "--distractors", "revisitop1m", "--distractors-root", str(r1m_root)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    from cbir.cache import load_entry

    entry = load_entry(cache, dataset, METHOD)
    distractor_entry = load_entry(cache, distractor_dataset(r1m_root), METHOD)
    assert distractor_entry.db.shape == (30, entry.db.shape[1]) and distractor_entry.queries.shape[0] == 0
    code, out = evaluate(capsys, dataset, r1m_root, cache)
    reference, _, _ = brute_force(entry.db, distractor_entry.db, entry.queries, dataset.gnd["medium"])
    assert code == 0 and json.loads(out.out)["mAP"] == pytest.approx(reference["map"])


def test_download_installs_the_layout_distractor_dataset_reads(server, tmp_path):
    from cbir.download import R1M_ARCHIVES, download

    source = write_distractors(tmp_path / "src", n=R1M_ARCHIVES)
    names = (source / "revisitop1m.txt").read_text().split()
    server.files["revisitop1m.txt"] = (source / "revisitop1m.txt").read_bytes()
    for n, name in enumerate(names, 1):  # one image per archive
        server.files[f"revisitop1m.{n}.tar.gz"] = tgz({f"{name}.jpg": (source / "jpg" / f"{name}.jpg").read_bytes()})
    root = tmp_path / "r1m"
    report = download("revisitop1m", root, base_url=server.url, progressbar=False)
    assert len(report) == R1M_ARCHIVES + 1 and set(report.values()) == {"installed"}
    distractors = distractor_dataset(root)
    assert len(distractors.images) == R1M_ARCHIVES and not distractors.missing
    assert set(download("revisitop1m", root, base_url=server.url, progressbar=False).values()) == {"already installed"}
