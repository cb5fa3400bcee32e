"""cbir.manifold: diffusion distances, Procrustes alignment, and cached UMAP layouts.

UMAP runs (and numba's JIT) are expensive, so one module-scoped fixture computes the
layouts of a small two-cluster database once; the cache tests reuse its files.
"""
import numpy as np
import pytest

import cbir.manifold as manifold
from cbir.cache import Entry
from cbir.data import Dataset
from cbir.diffusion import affinity_graph, normalize_graph
from cbir.manifold import align, diffusion_distances, layouts, nearest_neighbours, stored_layouts

N_PER_CLUSTER, DIM, K = 100, 16, 10


def two_clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, DIM))
    centres[0, 0], centres[1, 1] = 1.0, 1.0
    db = np.repeat(centres, N_PER_CLUSTER, axis=0) + 0.08 * rng.standard_normal((2 * N_PER_CLUSTER, DIM))
    return db.astype(np.float32), np.repeat([0, 1], N_PER_CLUSTER)


def neighbour_purity(layout, labels, k=10):
    """Fraction of each point's k nearest 2-D neighbours that share its cluster."""
    d = ((layout[:, None, :] - layout[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    return (labels[nearest] == labels[:, None]).mean()


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    db, labels = two_clusters()
    directory = tmp_path_factory.mktemp("entry")
    names = [f"img{i}" for i in range(len(db))]
    dataset = Dataset("toy", "", names, names, [str(c) for c in labels], [], {"original": []},
                      len(db), 0)
    entry = Entry(db, np.zeros((0, DIM), np.float32), {}, directory)
    stages = []
    result = stored_layouts(dataset, entry, k=K, progress=lambda done, total, stage: stages.append(stage))
    S = normalize_graph(affinity_graph(db, k=K))
    return dict(db=db, labels=labels, S=S, dir=directory, result=result, stages=stages)


def test_layouts_have_the_right_shape_and_keep_clusters_apart(computed):
    labels = computed["labels"]
    for name in ("before", "after"):
        layout = computed["result"][name]
        assert layout.shape == (len(labels), 2) and layout.dtype == np.float32
        assert np.isfinite(layout).all()
        assert neighbour_purity(layout, labels) > 0.95, name
    assert computed["stages"][:2] == ["UMAP of the descriptors", "UMAP of the diffusion affinities"]


def test_after_layout_is_aligned_with_before(computed):
    before, after, labels = computed["result"]["before"], computed["result"]["after"], computed["labels"]
    centres_before = np.array([before[labels == c].mean(0) for c in (0, 1)])
    centres_after = np.array([after[labels == c].mean(0) for c in (0, 1)])
    gap = np.linalg.norm(centres_before[0] - centres_before[1])
    assert np.linalg.norm(centres_after - centres_before, axis=1).max() < 0.25 * gap
    np.testing.assert_allclose(after.mean(0), before.mean(0), atol=1e-3)


def test_images_without_mutual_neighbour_stay_where_they_were(computed):
    isolated = np.asarray((computed["S"] != 0).sum(axis=1)).ravel() == 0
    assert isolated.any(), "the fixture graph should have isolated nodes"
    before, after = computed["result"]["before"], computed["result"]["after"]
    extent = np.ptp(before, axis=0).max()
    assert np.linalg.norm(after[isolated] - before[isolated], axis=1).max() < 0.05 * extent


def test_unconnected_points_without_init_go_on_a_ring_outside():
    rng = np.random.default_rng(4)
    layout = rng.standard_normal((20, 2))
    layout[[3, 7]] = np.nan
    placed = manifold._place_unconnected(layout, "spectral")
    np.testing.assert_array_equal(placed[~np.isin(np.arange(20), [3, 7])],
                                  np.delete(layout, [3, 7], axis=0))
    radius = np.linalg.norm(placed - np.delete(layout, [3, 7], axis=0).mean(0), axis=1)
    assert radius[[3, 7]].min() > np.delete(radius, [3, 7]).max()
    with pytest.raises(RuntimeError, match="no two points"):
        manifold._place_unconnected(np.full((4, 2), np.nan), "spectral")


def test_cached_layouts_are_loaded_not_recomputed(computed, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached layout")

    monkeypatch.setattr(manifold, "umap_layout", fail)
    monkeypatch.setattr(manifold, "diffusion_layout", fail)
    files = sorted(p.name for p in computed["dir"].glob("layout-*.npy"))
    assert len(files) == 2 and any(f"-after-k{K}-g3-a0.99-" in f for f in files)
    again = layouts(computed["db"], computed["S"], computed["dir"], f"k{K}-g3-a0.99")
    for name in ("before", "after"):
        np.testing.assert_array_equal(again[name], computed["result"][name])
    read = manifold.read_layouts(computed["db"], computed["dir"], manifold.graph_key(K, 3.0, 0.99))
    for name in ("before", "after"):
        np.testing.assert_array_equal(read[name], computed["result"][name])
    assert manifold.read_layouts(computed["db"], computed["dir"], manifold.graph_key(K + 1, 3.0, 0.99)) is None


@pytest.mark.parametrize("damage", ["garbage", "wrong shape", "non-finite"])
def test_a_damaged_after_layout_is_recomputed(computed, tmp_path, damage):
    directory = tmp_path / "copy"
    directory.mkdir()
    for path in computed["dir"].glob("layout-*.npy"):
        (directory / path.name).write_bytes(path.read_bytes())
    after_file = next(directory.glob("layout-*-after-*.npy"))
    if damage == "garbage":
        after_file.write_bytes(b"\x93NUMPY not really")
    elif damage == "wrong shape":
        np.save(after_file, np.zeros((5, 2), np.float32))
    else:
        np.save(after_file, np.full((len(computed["db"]), 2), np.nan, np.float32))
    stages = []
    result = layouts(computed["db"], computed["S"], directory, f"k{K}-g3-a0.99",
                     progress=lambda done, total, stage: stages.append(stage))
    assert stages == ["UMAP of the diffusion affinities", "layouts ready"]
    assert result["after"].shape == (len(computed["db"]), 2) and np.isfinite(result["after"]).all()
    np.testing.assert_array_equal(result["before"], computed["result"]["before"])
    assert manifold._load_layout(after_file, len(computed["db"])) is not None, "repaired on disk"


def test_layouts_of_other_descriptors_are_never_reused(computed, tmp_path, monkeypatch):
    directory = tmp_path / "copy"
    directory.mkdir()
    for path in computed["dir"].glob("layout-*.npy"):
        (directory / path.name).write_bytes(path.read_bytes())
    calls = []
    monkeypatch.setattr(manifold, "umap_layout", lambda db, **kw: calls.append("before") or
                        computed["result"]["before"][::-1].copy())
    monkeypatch.setattr(manifold, "diffusion_layout", lambda S, **kw: calls.append("after") or
                        computed["result"]["after"].copy())
    layouts(computed["db"][::-1].copy(), computed["S"], directory, f"k{K}-g3-a0.99")
    assert calls == ["before", "after"]


def test_align_recovers_a_rotated_scaled_shifted_copy():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((50, 2)).astype(np.float32)
    theta = 1.1
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    reflection = np.diag([1.0, -1.0])
    for transform in (rotation, rotation @ reflection):
        moved = 3.7 * reference @ transform + np.array([10.0, -4.0])
        np.testing.assert_allclose(align(moved, reference), reference, atol=1e-5)
    noisy = align(reference + 0.3 * rng.standard_normal(reference.shape), reference)
    assert np.abs(noisy - reference).mean() > 0.05


def test_align_rejects_mismatched_or_degenerate_layouts():
    with pytest.raises(ValueError, match="shape"):
        align(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="coincide"):
        align(np.ones((4, 2)), np.arange(8.0).reshape(4, 2))


def test_diffusion_distances_match_the_dense_inverse_and_separate_components():
    db, labels = two_clusters(seed=2)
    S = normalize_graph(affinity_graph(db, k=K))
    assert S[:N_PER_CLUSTER, N_PER_CLUSTER:].nnz == 0, "the two clusters share no edge"
    alpha = 0.9
    F = np.linalg.inv(np.eye(len(db)) - alpha * S.toarray())
    C = F / np.sqrt(np.outer(np.diag(F), np.diag(F)))
    expected = np.sqrt(np.maximum(2 - 2 * C, 0))
    d = diffusion_distances(S, alpha)
    np.testing.assert_allclose(d, expected, atol=2e-3)
    np.testing.assert_array_equal(np.diag(d), 0)
    np.testing.assert_allclose(d, d.T, atol=1e-6)
    np.testing.assert_allclose(d[labels == 0][:, labels == 1], np.sqrt(2), atol=1e-6)
    assert d[labels == 0][:, labels == 0].mean() < np.sqrt(2) - 0.02


def test_diffusion_distances_reject_unnormalised_or_asymmetric_graphs():
    A = 2.0 * (np.ones((6, 6)) - np.eye(6))
    with pytest.raises(ValueError, match="not positive definite"):
        diffusion_distances(A)
    with pytest.raises(ValueError, match="symmetric"):
        diffusion_distances(np.triu(np.full((6, 6), 0.1), 1))
    with pytest.raises(ValueError, match="square"):
        diffusion_distances(np.zeros((3, 4)))


def test_nearest_neighbours_are_exact_and_start_with_self():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((37, 3))
    full = np.linalg.norm(points[:, None] - points[None], axis=-1)
    indices, distances = nearest_neighbours(lambda a, b: full[a:b].copy(), 37, 5, block=8)
    np.testing.assert_array_equal(indices[:, 0], np.arange(37))
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1)[:, :5])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :5], atol=1e-6)


def test_bad_input_is_rejected_before_any_umap_work(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        manifold.umap_layout(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        manifold.umap_layout(np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="metric"):
        manifold.umap_layout(np.ones((10, 3)), metric="hamming")
    db, _ = two_clusters()
    with pytest.raises(ValueError, match="key"):
        layouts(db, np.zeros((len(db), len(db))), tmp_path, "../escape")
    with pytest.raises(ValueError, match="does not match"):
        layouts(db, np.zeros((3, 3)), tmp_path, "k10")
