"""`python -m cbir evaluate --rerank fsr|kreciprocal` on a cached entry (no torch needed)."""
import json

import numpy as np
import pytest

from cbir.cache import load_entry, save_entry
from cbir.cli import main
from cbir.data import load_dataset
from cbir.method import Method
from cbir.metrics import evaluation_report
from cbir.rerank import rerank
from synthetic import make_paris_like

METHOD = Method(pooling="rmac", size=64, weights="random")


@pytest.fixture
def cached(tmp_path):
    root = make_paris_like(tmp_path / "data", per_landmark=8)
    dataset = load_dataset("paris6k", root)
    rng = np.random.default_rng(0)
    labels = np.array([name.split("_")[1] for name in dataset.images])
    centres = {lm: rng.standard_normal(16) for lm in set(labels)}
    db = np.stack([centres[lm] for lm in labels]) + 0.8 * rng.standard_normal((len(labels), 16))
    queries = db[[q.index for q in dataset.queries]] + 0.3 * rng.standard_normal((len(dataset.queries), 16))
    cache = tmp_path / "cache"
    db /= np.linalg.norm(db, axis=1, keepdims=True)  # descriptors are unit vectors
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    save_entry(cache, dataset, METHOD, db.astype(np.float32), queries.astype(np.float32))
    return root, cache, dataset


def evaluate(capsys, root, cache, *extra):
    code = main(["evaluate", "--dataset", "paris6k", "--root", str(root), "--cache", str(cache), "--pooling", "rmac",
                 "--size", "64", "--weights", "random", *extra])
    out = capsys.readouterr()
    return code, out


@pytest.mark.parametrize("extra, method", [
    (["--rerank", "fsr", "--k", "5", "--alpha", "0.9", "--rank", "8"],
     METHOD.with_rerank("fsr", k=5, alpha=0.9, fsr_rank=8)),
    (["--rerank", "kreciprocal", "--k1", "6", "--k2", "3", "--lambda", "0.5"],
     METHOD.with_rerank("kreciprocal", k1=6, k2=3, kr_lambda=0.5)),
])
def test_evaluate_prints_the_map_of_the_re_ranking(capsys, cached, extra, method):
    root, cache, dataset = cached
    code, out = evaluate(capsys, root, cache, *extra)
    assert code == 0, out.err
    report = json.loads(out.out)
    entry = load_entry(cache, dataset, METHOD)
    expected = evaluation_report(rerank(method, entry.db, entry.queries), dataset, "original")
    assert report["method"] == method.label() and report["mAP"] == pytest.approx(expected["mAP"])
    if method.rerank == "fsr":  # the eigenpairs and the neighbour list are stored beside the descriptors
        assert (entry.path / "spectrum-k5-g3-r8.npz").exists() and list(entry.path.glob("neighbours-K*.npz"))


def test_fsr_rank_is_capped_at_the_database_size(capsys, cached):
    root, cache, dataset = cached
    code, out = evaluate(capsys, root, cache, "--rerank", "fsr", "--k", "5", "--rank", "1000")
    assert code == 0 and f"r={len(dataset.images)})" in json.loads(out.out)["method"]


@pytest.mark.parametrize("extra, message", [(["--rerank", "kreciprocal", "--k1", "500"], "k1"),
                                            (["--rerank", "fsr", "--rank", "0"], "fsr_rank"),
                                            (["--rerank", "kreciprocal", "--lambda", "2"], "lambda")])
def test_bad_parameters_are_one_line_errors(capsys, cached, extra, message):
    root, cache, _ = cached
    code, out = evaluate(capsys, root, cache, *extra)
    assert code == 2 and out.err.startswith("error:") and message in out.err and out.err.count("\n") == 1
