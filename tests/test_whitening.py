import numpy as np
import pytest

from cbir.whitening import (PARTIAL_POWER, Whitening, apply_whitening, learn_whitening,
                            load_whitening, save_whitening)


def correlated(n=2000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(0.2, 3.0, d)
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def test_full_whitening_gives_identity_covariance():
    X = correlated()
    W = learn_whitening(X, learned_on="oxford5k")
    Y = W.project(X)
    np.testing.assert_allclose(Y.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(Y.T), np.eye(8), atol=1e-8)
    assert W.learned_on == "oxford5k" and W.power == 0.5


def test_partial_whitening_keeps_square_root_of_eigenvalues():
    X = correlated()
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(X.T)))[::-1]
    Y = learn_whitening(X, power=PARTIAL_POWER).project(X)
    # dividing by eigenvalue^0.25 leaves variance eigenvalue / eigenvalue^0.5 = eigenvalue^0.5
    np.testing.assert_allclose(np.cov(Y.T), np.diag(np.sqrt(eigenvalues)), atol=1e-8)


def test_dimension_reduction_keeps_leading_components():
    X = correlated()
    W = learn_whitening(X, dim=3)
    assert W.dim == 3 and W.projection.shape == (3, 8)
    np.testing.assert_allclose(np.cov(W.project(X).T), np.eye(3), atol=1e-8)
    with pytest.raises(ValueError, match="dimension"):
        learn_whitening(X, dim=9)


def test_fewer_vectors_than_dimensions_drops_degenerate_components():
    X = correlated(n=20, d=50)
    W = learn_whitening(X)
    assert W.dim == 19  # 20 centred vectors span 19 dimensions
    out = apply_whitening(X, W)
    assert np.isfinite(out).all()


def test_apply_returns_unit_float32_vectors():
    X = correlated()
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    W = learn_whitening(X[:1000])
    out = apply_whitening(X[1000:], W)
    assert out.dtype == np.float32 and out.shape == (1000, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_apply_checks_dimension():
    W = learn_whitening(correlated(), learned_on="paris6k")
    with pytest.raises(ValueError, match="paris6k"):
        apply_whitening(np.ones((2, 7)), W)


def test_learning_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        learn_whitening(np.ones((1, 4)))
    X = correlated()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        learn_whitening(X)


def test_save_load_round_trip(tmp_path):
    W = learn_whitening(correlated(), power=PARTIAL_POWER, dim=5, learned_on="oxford5k (regional)")
    path = tmp_path / "w" / "whitening.npz"
    save_whitening(W, path)
    assert [p.name for p in path.parent.iterdir()] == ["whitening.npz"]  # no temporary left over
    loaded = load_whitening(path)
    assert isinstance(loaded, Whitening)
    assert loaded.learned_on == "oxford5k (regional)" and loaded.power == PARTIAL_POWER
    np.testing.assert_array_equal(loaded.mean, W.mean)
    np.testing.assert_array_equal(loaded.projection, W.projection)
    X = correlated(seed=1)
    np.testing.assert_array_equal(apply_whitening(X, loaded), apply_whitening(X, W))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_whitening(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz"):
        load_whitening(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, mean=np.zeros(3))
    with pytest.raises(ValueError, match="partial.npz"):
        load_whitening(partial)
