"""Heads on frozen descriptors: learned whitening, contrastive training, overlap refusal, resume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cbir.data import load_dataset
from cbir.heads import (Head, TrainOptions, check_overlap, class_map, learn_lw, matching_pairs,
                        train_head, training_record)
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
    assert plain.label() == "tf_efficientnet_lite0 R-MAC 1024px"
    headed = Method(pooling="gem", head="lw-paris")
    assert headed.slug() == "tf_efficientnet_lite0-gem-1024-imagenet-none-head_lw_paris"
    assert headed.descriptor_key() == headed.with_rerank("diffusion").descriptor_key()
    assert headed.without_head() == Method(pooling="gem")
    transductive = Method(head="lw", head_transductive=True)
    assert "transductive" in transductive.label() and "transductive" in transductive.slug()
    assert json.loads(json.dumps(headed.to_dict())) == headed.to_dict()
    with pytest.raises(ValueError, match="needs a head"):
        Method(head_transductive=True)
