"""Heads on frozen descriptors: learned whitening, contrastive training, overlap refusal, resume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cbir.data import Dataset, load_dataset
from cbir.heads import TrainOptions, class_map, learn_lw, matching_pairs, train_head
from cbir.headstore import Head, check_overlap, training_record
from cbir.method import Method
from synthetic import clustered_unit_vectors, make_class_folder

torch = pytest.importorskip("torch")


def whitenlearn_reference(X, qidxs, pidxs):
    """cnnimageretrieval's `whitenlearn` verbatim (columns are vectors, np.linalg.eig)."""
    m = X[:, qidxs].mean(axis=1, keepdims=True)
    df = X[:, qidxs] - X[:, pidxs]
    S = np.dot(df, df.T) / df.shape[1]
    P = np.linalg.inv(np.linalg.cholesky(S))
    df = np.dot(P, X - m)
    D = np.dot(df, df.T)
    eigval, eigvec = np.linalg.eig(D)
    order = eigval.argsort()[::-1]
    return m, np.dot(eigvec[:, order].T, P)


def test_lw_equals_its_closed_form_and_whitens_matching_pair_differences():
    X, labels = clustered_unit_vectors(300, 8, clusters=5, noise=0.4, seed=1)
    X = X.astype(np.float64)
    q, p = matching_pairs(labels)
    assert np.all(labels[q] == labels[p]) and np.all(q < p)
    mean, P = learn_lw(X, q, p)
    m_ref, P_ref = whitenlearn_reference(X.T, q, p)
    assert np.allclose(mean, m_ref[:, 0])
    signs = np.sign(np.sum(P * P_ref, axis=1))  # eigenvectors are defined up to sign
    assert np.allclose(P, P_ref * signs[:, None], atol=1e-8)
    diff = (X[q] - X[p]) @ P.T
    assert np.allclose(diff.T @ diff / len(diff), np.eye(8), atol=1e-8)
    rotated = (X - mean) @ P.T
    spread = rotated.T @ rotated
    assert np.allclose(spread, np.diag(np.diag(spread)), atol=1e-6)
    assert np.all(np.diff(np.diag(spread)) <= 1e-9)


def test_lw_refuses_a_singular_pair_covariance_unless_shrunk():
    X, labels = clustered_unit_vectors(12, 32, clusters=3, noise=0.3)
    q, p = matching_pairs(labels)
    with pytest.raises(ValueError, match="singular"):
        learn_lw(X, q, p)
    _, P = learn_lw(X, q, p, shrinkage=0.1)
    assert P.shape == (32, 32) and np.isfinite(P).all()


def confusing_classes(n_classes: int, per_class: int, seed: int):
    """Unit vectors whose class lives in 4 weak dimensions under 28 loud nuisance ones."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, 4))
    labels = np.repeat(np.arange(n_classes), per_class)
    signal = centres[labels] * 0.6 + 0.1 * rng.standard_normal((len(labels), 4))
    nuisance = 1.5 * rng.standard_normal((len(labels), 28))
    x = np.hstack([signal, nuisance])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def held_out_map(describe, X, labels) -> float:
    return class_map(describe(X), labels, np.ones(len(labels), bool))


def test_linear_head_separates_classes_the_raw_descriptors_confuse():
    X, labels = confusing_classes(8, 20, seed=0)
    X_test, labels_test = confusing_classes(6, 20, seed=1)  # other classes, other centres
    options = TrainOptions(kind="linear", init="random", epochs=25, lr=1e-2, patience=25, seed=0)
    params, history = train_head(X, np.arange(len(X)), labels, options)
    head = Head("t", "linear", params, {})
    raw = held_out_map(lambda v: v, X_test, labels_test)
    tuned = held_out_map(lambda v: head.describe(v, np.arange(len(v)), len(v)), X_test, labels_test)
    assert raw < 0.4 and tuned > raw + 0.25, (raw, tuned)
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_mAP"]) > history["raw_val_mAP"]


def test_rmac_head_is_trained_through_the_regions_and_equals_rmac_without_a_head():
    rng = np.random.default_rng(0)
    X, labels = confusing_classes(6, 10, seed=2)
    owner = np.repeat(np.arange(len(X)), 3)
    regions = X[owner] + 0.05 * rng.standard_normal((len(owner), X.shape[1])).astype(np.float32)
    regions /= np.linalg.norm(regions, axis=1, keepdims=True)
    identity = Head("id", "lw", {"0.weight": np.eye(32, dtype=np.float32), "0.bias": np.zeros(32, np.float32)}, {})
    summed = np.add.reduceat(regions, np.arange(0, len(owner), 3))
    assert np.allclose(identity.describe(regions, owner, len(X)),
                       summed / np.linalg.norm(summed, axis=1, keepdims=True), atol=1e-6)
    params, history = train_head(regions, owner, labels, TrainOptions(kind="linear", epochs=3, lr=1e-3))
    assert params["0.weight"].shape == (32, 32) and len(history["loss"]) == 3


def test_killed_training_resumes_to_the_same_head(tmp_path):
    X, labels = confusing_classes(6, 15, seed=3)
    owner = np.arange(len(X))
    options = TrainOptions(kind="linear", epochs=6, lr=1e-2, patience=6, seed=4)
    reference, ref_history = train_head(X, owner, labels, options, checkpoint=tmp_path / "a" / "checkpoint.pt")

    def kill_after_three(epoch, epochs, history):
        if epoch == 3:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "b" / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_head(X, owner, labels, options, checkpoint=checkpoint, progress=kill_after_three)
    seen = []
    resumed, history = train_head(X, owner, labels, options, checkpoint=checkpoint,
                                  progress=lambda epoch, *_: seen.append(epoch))
    assert seen == [4, 5, 6]
    assert all(np.array_equal(reference[k], resumed[k]) for k in reference)
    assert history["loss"] == ref_history["loss"] and history["val_mAP"] == ref_history["val_mAP"]


KILLED_RUN = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_heads import confusing_classes
from cbir.heads import TrainOptions, train_head
X, labels = confusing_classes(6, 15, seed=3)
train_head(X, np.arange(len(X)), labels, TrainOptions(kind="linear", epochs=6, lr=1e-2, patience=6, seed=4),
           checkpoint=sys.argv[1], progress=lambda *_: time.sleep(0.5))
"""


def test_a_process_killed_mid_training_resumes_to_the_same_head(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    X, labels = confusing_classes(6, 15, seed=3)
    options = TrainOptions(kind="linear", epochs=6, lr=1e-2, patience=6, seed=4)
    reference, _ = train_head(X, np.arange(len(X)), labels, options)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(checkpoint), str(root / "tests")],
                            env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert killed_at < 6
    resumed, history = train_head(X, np.arange(len(X)), labels, options, checkpoint=checkpoint)
    assert all(np.array_equal(reference[k], resumed[k]) for k in reference)
    assert len(history["loss"]) == 6


def test_overlap_with_the_training_images_is_refused_by_path_and_by_content(tmp_path):
    train = load_dataset("folder", make_class_folder(tmp_path / "train"))
    record = {"name": "h", "training": training_record(train)}
    with pytest.raises(ValueError, match=r"shares \d+ images .*same path.*--transductive"):
        check_overlap(record, train)
    other = make_class_folder(tmp_path / "other", classes=("cars", "boats"), seed=9)
    check_overlap(record, load_dataset("folder", other))
    copied = other / "cars" / "copy.jpg"
    shutil.copy(train.image_path(0), copied)
    with pytest.raises(ValueError, match="same content as training image"):
        check_overlap(record, load_dataset("folder", other))


def test_method_slug_and_label_unchanged_without_a_head():
    plain = Method()
    assert plain.slug() == "tf_efficientnet_lite0-rmac-1024-imagenet-none"
    assert plain.label() == "Lite0 R-MAC"
    headed = Method(pooling="gem", head="lw-paris")
    assert headed.slug() == "tf_efficientnet_lite0-gem-1024-imagenet-none-head_lw_paris"
    assert headed.descriptor_key() == headed.with_rerank("diffusion").descriptor_key()
    assert headed.without_head() == Method(pooling="gem")
    transductive = Method(head="lw", head_transductive=True)
    assert "transductive" in transductive.label() and "transductive" in transductive.slug()
    assert Method.from_dict(json.loads(json.dumps(headed.to_dict()))) == headed
    with pytest.raises(ValueError, match="needs a head"):
        Method(head_transductive=True)


# --- end to end: CLI finetune, evaluate --head, report (random-weight Lite0 at 64 px) -----------------

SIZE = ["--backbone", "tf_efficientnet_lite0", "--size", "64", "--weights", "random", "--workers", "0",
        "--threads", "1"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    from cbir.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(training csv, test root, cache) with heads lw-gem and linear-rmac trained on the csv."""
    pytest.importorskip("timm")
    from cbir.cli import main
    from synthetic import make_csv_manifest, make_paris_like

    tmp = tmp_path_factory.mktemp("heads")
    train = make_csv_manifest(tmp / "train", classes=("cats", "dogs", "birds"), per_class=6)
    test = make_paris_like(tmp / "test")
    cache = tmp / "cache"
    for pooling, kind in (("gem", "lw"), ("rmac", "linear")):
        assert main(["finetune", "--dataset", "csv", "--root", str(train), *SIZE, "--pooling", pooling,
                     "--head", kind, "--name", f"{kind}-{pooling}", "--epochs", "2", "--cache", str(cache)]) == 0
    return train, test, cache


def test_evaluate_with_a_head_prints_the_same_report_with_the_head_named(trained, capsys):
    train, test, cache = trained
    common = ["--dataset", "paris6k", "--root", test, *SIZE, "--cache", cache]
    for pooling, head in (("gem", "lw-gem"), ("rmac", "linear-rmac")):
        code, out, err = cli(capsys, "evaluate", *common, "--pooling", pooling)
        assert code == 0, err
        before = json.loads(out)
        code, out, err = cli(capsys, "evaluate", *common, "--pooling", pooling, "--head", head)
        assert code == 0, err
        after = json.loads(out)
        assert set(after) == set(before) | {"head"} and "head" not in before
        assert after["method"] == before["method"] + f" + head {head}"
        assert after["head"]["name"] == head and "csv" in after["head"]["trained_on"]
        assert after["cache_entry"].endswith(f"-head_{head.replace('-', '_')}")
        assert 0 <= after["mAP"] <= 1 and after["n_queries"] == before["n_queries"]


def test_rmac_regions_sum_to_the_cached_rmac_descriptors(trained):
    from cbir.extraction import ensure_descriptors
    from cbir.regionstore import aggregate, load_regions

    train, _, cache = trained
    dataset = load_dataset("csv", train)
    method = Method(backbone="tf_efficientnet_lite0", pooling="rmac", size=64, weights="random")
    regions = load_regions(cache, dataset, method)
    vectors, owner = regions.items("db")
    assert np.allclose(aggregate(vectors, owner, len(dataset.images)), ensure_descriptors(dataset, method, cache, workers=0, threads=1).db, atol=1e-5)


def test_evaluating_a_head_on_its_training_images_is_refused_unless_transductive(trained, capsys):
    train, _, cache = trained
    common = ["--dataset", "csv", "--root", train, *SIZE, "--cache", cache, "--pooling", "gem", "--head", "lw-gem"]
    code, out, err = cli(capsys, "evaluate", *common)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "shares 18 images" in err and "--transductive" in err
    code, out, err = cli(capsys, "evaluate", *common, "--transductive")
    assert code == 0, err
    assert json.loads(out)["method"].endswith("+ head lw-gem (transductive)")


def test_a_missing_head_a_mismatched_method_or_a_test_set_seen_in_training_is_one_line_error(trained, capsys):
    train, test, cache = trained
    common = ["--dataset", "paris6k", "--root", test, *SIZE, "--cache", cache]
    code, _, err = cli(capsys, "evaluate", *common, "--pooling", "gem", "--head", "nope")
    assert code == 2 and "no trained head 'nope'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "evaluate", *common, "--pooling", "rmac", "--head", "lw-gem")
    assert code == 2 and "was trained on Lite0 GeM 64px" in err
    code, _, err = cli(capsys, "finetune", "--dataset", "csv", "--root", train, *SIZE, "--cache", cache,
                       "--pooling", "gem", "--head", "lw", "--name", "again", "--test-dataset", "csv",
                       "--test-root", train)
    assert code == 2 and "shares 18 images" in err
    assert not (cache / "heads" / "again").exists()


def test_report_has_a_finetuning_table(trained, capsys):
    train, test, cache = trained
    code, _, err = cli(capsys, "evaluate", "--dataset", "paris6k", "--root", test, *SIZE, "--cache", cache,
                       "--pooling", "gem", "--head", "lw-gem")
    assert code == 0, err
    code, out, err = cli(capsys, "report", "--dataset", "paris6k", "--cache", cache, "--k", "5")
    assert code == 0, err
    section = out.split("## Fine-tuning")[1]
    row = next(line for line in section.splitlines() if "lw lw-gem" in line)
    assert "csv" in row and "| no |" in row


def test_a_bundle_carries_a_head_method_with_its_provenance(trained, tmp_path):
    from cbir.bundle import build_bundle, verify_bundle
    from cbir.cache import list_entries, load_entry
    from cbir.extraction import ensure_descriptors
    from cbir.headstore import load_head

    _, test, cache = trained
    dataset = load_dataset("paris6k", test)
    method = Method(backbone="tf_efficientnet_lite0", pooling="gem", size=64, weights="random", head="lw-gem")
    entry = ensure_descriptors(dataset, method, cache, workers=0, threads=1)
    manifest = build_bundle(cache, dataset, [method], tmp_path / "bundle", layouts=False, grid_protocols=())
    verify_bundle(tmp_path / "bundle")
    assert manifest["methods"] == [method.to_dict()]
    key = manifest["dataset_key"]
    assert list_entries(tmp_path / "bundle", key) == [method]
    bundled = load_entry(tmp_path / "bundle", Dataset.load(tmp_path / "bundle" / key / "dataset.json"), method)
    assert bundled.manifest["head"] == entry.manifest["head"]
    assert np.allclose(bundled.db, entry.db, atol=1e-3)  # float16 storage
    assert load_head(tmp_path / "bundle", "lw-gem").manifest == load_head(cache, "lw-gem").manifest


# --- --unfreeze last-stage, on tiny random-weight networks ------------------------------------------

@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv3_small_050", "resnet10t"])
def test_frozen_layers_then_last_stage_are_the_feature_map(name):
    pytest.importorskip("timm")
    from cbir.backbones import load_backbone
    from cbir.unfreeze import split_last_stage

    backbone = load_backbone(name, weights="random")
    frozen, last = split_last_stage(backbone.classifier)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(last(frozen(x)), backbone.model(x), atol=1e-5)


def test_unfreeze_last_stage_tunes_the_stage_and_evaluates_through_it(tmp_path, capsys):
    pytest.importorskip("timm")
    from cbir.backbones import load_backbone
    from cbir.headstore import load_head
    from cbir.unfreeze import split_last_stage, train_unfrozen
    from synthetic import make_csv_manifest, make_paris_like

    train = make_csv_manifest(tmp_path / "train", classes=("cats", "dogs", "birds"), per_class=5)
    method = Method(backbone="resnet10t", pooling="gem", size=64, weights="random")
    checkpoint = tmp_path / "checkpoint.pt"
    train_unfrozen(load_dataset("csv", train), method, TrainOptions(epochs=2, lr=1e-3, patience=5),
                   checkpoint=checkpoint)
    _, last = split_last_stage(load_backbone("resnet10t", weights="random").classifier)
    after = torch.load(checkpoint, weights_only=True)["net"]
    assert all(not torch.equal(after[f"stage.{k}"], v) for k, v in last.state_dict().items() if k.endswith("conv1.weight"))

    test = make_paris_like(tmp_path / "test")
    tiny = ["--backbone", "resnet10t", "--size", "64", "--weights", "random", "--cache", tmp_path / "cache",
            "--pooling", "gem"]
    code, out, err = cli(capsys, "finetune", "--dataset", "csv", "--root", train, *tiny, "--head", "linear",
                         "--name", "tuned", "--epochs", "2", "--unfreeze", "last-stage")
    assert code == 0, err
    head = load_head(tmp_path / "cache", "tuned")
    assert head.manifest["unfreeze"] == "last-stage" and head.manifest["dim_in"] == 512
    assert any(k.startswith("stage.") for k in head.params)
    code, out, err = cli(capsys, "evaluate", "--dataset", "paris6k", "--root", test, *tiny, "--head", "tuned",
                         "--workers", "0")
    assert code == 0, err
    report = json.loads(out)
    assert report["method"].endswith("+ head tuned") and 0 <= report["mAP"] <= 1


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_stored_head_applies_in_numpy_exactly_as_it_was_trained(kind):
    from cbir.heads import Items, build_net

    X, labels = confusing_classes(4, 12, seed=5)
    owner = np.repeat(np.arange(len(X) // 2), 2)  # two "regions" per image
    options = TrainOptions(kind=kind, epochs=2, hidden=16, lr=1e-3, init="random")
    params, _ = train_head(X, owner, labels[::2], options)
    head = Head("h", kind, params, {})
    net = build_net(options, X.shape[1], None)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    with torch.no_grad():
        trained = Items(X, owner, len(X) // 2).describe(net, np.arange(len(X) // 2)).numpy()
    assert np.allclose(head.describe(X, owner, len(X) // 2), trained, atol=1e-5)


def test_sfm120k_training_pickle_is_a_labelled_collection_by_cluster(tmp_path):
    import pickle

    from cbir.sfm import cid_path
    from synthetic import landmark_image, write_jpeg

    rng = np.random.default_rng(0)
    cids = [f"{i:02d}ab{i:02d}cd{i:02d}ef" for i in range(7)]
    clusters = [0, 0, 0, 1, 1, 1, 2]
    for cid, cluster in zip(cids[:-1], clusters[:-1]):  # the last image is not downloaded
        write_jpeg(tmp_path / cid_path(cid), landmark_image(cluster, (48, 32), rng))
    split = {"cids": cids, "cluster": clusters, "qidxs": [0, 3, 0, 6], "pidxs": [1, 4, 2, 5]}
    (tmp_path / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps({"train": split, "val": split}))
    dataset = load_dataset("sfm120k", tmp_path)
    assert dataset.images == cids[:-1] and dataset.labels == ["0", "0", "0", "1", "1", "1"]
    assert [q.name for q in dataset.queries] == [cids[0], cids[3]]  # the pool, deduplicated, present only
    assert dataset.missing == [cids[-1]]
    assert sorted(dataset.images[i] for i in dataset.gnd["class"][0]["ok"]) == cids[1:3]
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("sfm120k", tmp_path, split="test")
    (tmp_path / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps({"train": {"cids": cids}}))
    with pytest.raises(ValueError, match="expected"):
        load_dataset("sfm120k", tmp_path)


def test_head_names_are_checked_and_extraction_refuses_a_head_method(tmp_path):
    from cbir.extraction import extract
    from cbir.headstore import check_name

    assert check_name("lw-paris_3.v2") == "lw-paris_3.v2"
    for bad in ("", "../x", "a/b", "-x", "a b"):
        with pytest.raises(ValueError, match="head name"):
            check_name(bad)
    train = load_dataset("folder", make_class_folder(tmp_path / "train"))
    with pytest.raises(ValueError, match="headstore.head_entry"):
        extract(train, [Method(head="h")], tmp_path / "cache")


def test_heads_refuse_a_multiscale_or_bf16_base(tmp_path):
    from dataclasses import replace

    from cbir.heads import TrainOptions, finetune
    from cbir.method import Method

    for base in (Method(pooling="rmac", scales=(1, 0.7071)), Method(pooling="gem", precision="bf16")):
        with pytest.raises(ValueError, match="single-scale float32"):
            replace(base, head="lw-train")  # applying a head
        with pytest.raises(ValueError, match="single-scale float32"):
            finetune(None, base, tmp_path, "lw-train", TrainOptions())  # training one
    Method(pooling="rmac", head="lw-train")  # the default base is fine
