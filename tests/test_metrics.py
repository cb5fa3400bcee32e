"""cbir.metrics against the reference evaluation (a loop port of revisitop) on real Paris6k ground truth."""
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from cbir.data import Dataset, Query
from cbir.metrics import (compute_map, evaluation_report, pr_curves, precision_at_k_curves,
                          seed_ap_at_k, seed_map_at_k)


# --- the oracle: revisitop's compute_ap / compute_map, ported loop for loop ---------------
# Its own convention: ranks is (n_db, n_queries), column i = ranking of query i.

def oracle_compute_ap(ranks, nres):
    nimgranks = len(ranks)
    ap = 0
    recall_step = 1. / nres
    for j in np.arange(nimgranks):
        rank = ranks[j]
        if rank == 0:
            precision_0 = 1.
        else:
            precision_0 = j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.
    return ap


def oracle_compute_map(ranks, gnd, kappas=()):
    map = 0.
    nq = len(gnd)
    aps = np.zeros(nq)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]['ok'])
        if qgnd.shape[0] == 0:
            aps[i] = float('nan')
            prs[i, :] = float('nan')
            nempty += 1
            continue
        try:
            qgndj = np.array(gnd[i]['junk'])
        except KeyError:
            qgndj = np.empty(0)
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = oracle_compute_ap(pos, len(qgnd))
        map = map + ap
        aps[i] = ap
        pos += 1
        for j in np.arange(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    map = map / (nq - nempty)
    pr = pr / (nq - nempty)
    return map, aps, pr, prs


# --- real Paris6k ground truth ------------------------------------------------------------

class _PlainDataUnpickler(pickle.Unpickler):
    """The ground-truth pickle holds only containers, numbers and strings: refuse any class."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a ground-truth pickle")


@pytest.fixture
def paris_gnd(paris250):
    with open(paris250 / "gnd_paris6k.pkl", "rb") as f:
        data = _PlainDataUnpickler(f).load()
    assert len(data["imlist"]) == 6392 and len(data["gnd"]) == 55
    return data


def informative_ranks(gnd, n_db, seed):
    """Rankings between random and perfect: positives and junk get a random per-query boost."""
    rng = np.random.default_rng(seed)
    ranks = np.empty((len(gnd), n_db), dtype=np.int64)
    for q, g in enumerate(gnd):
        score = rng.random(n_db)
        score[np.asarray(g["ok"], dtype=int)] += rng.uniform(0, 1.5)
        score[np.asarray(g["junk"], dtype=int)] += rng.uniform(0, 1.5)
        ranks[q] = np.argsort(-score, kind="stable")
    return ranks


def assert_matches_oracle(ranks, gnd, kappas=(1, 5, 10)):
    ours = compute_map(ranks, gnd, kappas)
    m, aps, pr, prs = oracle_compute_map(ranks.T.copy(), gnd, list(kappas))
    assert ours["map"] == pytest.approx(m, abs=1e-12)
    np.testing.assert_allclose(ours["aps"], aps, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["mpr"], pr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["prs"], prs, rtol=0, atol=1e-12)
    return ours


def test_matches_reference_on_full_paris6k_ground_truth(paris_gnd):
    gnd = paris_gnd["gnd"]
    rng = np.random.default_rng(0)
    random_ranks = np.argsort(rng.random((55, 6392)), axis=1)
    ours = assert_matches_oracle(random_ranks, gnd)
    assert ours["map"] < 0.1
    ours = assert_matches_oracle(informative_ranks(gnd, 6392, seed=1), gnd, kappas=(1, 5, 10, 100))
    assert ours["aps"].min() < 0.3 < 0.8 < ours["aps"].max()


def test_matches_reference_on_the_250_image_subset(paris_gnd, paris250):
    present = sorted(p.stem for p in (paris250 / "paris").rglob("*.jpg"))
    assert len(present) == 250
    new_index = {name: i for i, name in enumerate(present)}
    old_to_new = np.array([new_index.get(name, -1) for name in paris_gnd["imlist"]])
    gnd = []
    for q, name in enumerate(paris_gnd["qimlist"]):
        if name not in new_index:
            continue
        g = paris_gnd["gnd"][q]
        ok, junk = old_to_new[g["ok"]], old_to_new[g["junk"]]
        gnd.append({"ok": ok[ok >= 0], "junk": junk[junk >= 0]})
        assert new_index[name] in gnd[-1]["ok"], "original protocol: the query is its own positive"
    assert len(gnd) == 12
    assert_matches_oracle(informative_ranks(gnd, 250, seed=2), gnd)
    rng = np.random.default_rng(3)
    ours = assert_matches_oracle(np.argsort(rng.random((12, 250)), axis=1), gnd)
    assert 0.05 < ours["map"] < 0.35, "random ranking on Paris6k-250 scores about 0.155"


# --- worked example of REFERENCE.md ---------------------------------------------------------

WORKED = [{"ok": np.array([0, 2, 5, 9, 30]), "junk": np.array([], dtype=np.int64)}]
IDENTITY = np.arange(100)[None, :]


def test_worked_example_reference_ap_differs_from_scikit_learn():
    reference = compute_map(IDENTITY, WORKED)["map"]
    relevant = np.isin(np.arange(100), WORKED[0]["ok"])
    sklearn_ap = average_precision_score(relevant, -np.arange(100.0))
    assert reference == pytest.approx(0.509462365591, abs=1e-12)
    assert sklearn_ap == pytest.approx(0.545591397849, abs=1e-12)
    assert seed_map_at_k(IDENTITY, WORKED, None)[0] == pytest.approx(sklearn_ap, abs=1e-12)


def test_worked_example_mp_at_k_is_the_reference_not_plain_precision():
    result = compute_map(IDENTITY, WORKED, kappas=(1, 3, 5, 10, 50))
    np.testing.assert_allclose(result["prs"][0], [1, 2 / 3, 2 / 5, 4 / 10, 5 / 31])
    np.testing.assert_allclose(precision_at_k_curves(IDENTITY, WORKED, 50)[0, [0, 2, 4, 9, 49]],
                               [1, 2 / 3, 2 / 5, 4 / 10, 5 / 50])


def test_seed_ap_at_k_divides_by_positives_within_the_top_k():
    expected_at_10 = (1 + 2 / 3 + 3 / 6 + 4 / 10) / 4
    expected_full = (1 + 2 / 3 + 3 / 6 + 4 / 10 + 5 / 31) / 5
    assert seed_ap_at_k(IDENTITY, WORKED, 10)[0] == pytest.approx(expected_at_10)
    assert seed_ap_at_k(IDENTITY, WORKED, 100)[0] == pytest.approx(expected_full)
    assert seed_ap_at_k(IDENTITY, WORKED, 1)[0] == 1.0
    no_hit_in_top_2 = [{"ok": np.array([7, 8]), "junk": np.array([], dtype=np.int64)}]
    assert seed_ap_at_k(IDENTITY, no_hit_in_top_2, 2)[0] == 0.0


def test_seed_full_list_is_scikit_learn_ap_without_junk():
    rng = np.random.default_rng(5)
    for _ in range(20):
        relevant = rng.random(60) < rng.uniform(0.05, 0.5)
        relevant[rng.integers(60)] = True
        scores = rng.random(60)
        ranks = np.argsort(-scores)[None, :]
        gnd = [{"ok": np.flatnonzero(relevant), "junk": np.array([], dtype=np.int64)}]
        assert seed_ap_at_k(ranks, gnd, None)[0] == pytest.approx(
            average_precision_score(relevant, scores), abs=1e-12)


def test_seed_junk_is_removed_unless_asked_otherwise():
    gnd = [{"ok": np.array([0, 2]), "junk": np.array([1])}]
    ranks = np.arange(4)[None, :]
    assert seed_ap_at_k(ranks, gnd, 10)[0] == 1.0
    assert seed_ap_at_k(ranks, gnd, 10, remove_junk=False)[0] == pytest.approx((1 + 2 / 3) / 2)


# --- properties ----------------------------------------------------------------------------

@st.composite
def retrieval_case(draw):
    """A random database, ground truth (possibly without positives) and full ranking."""
    n_db = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    roles = rng.choice([0, 1, -1], size=n_db, p=draw(st.sampled_from(
        [(0.5, 0.3, 0.2), (0.8, 0.1, 0.1), (0.2, 0.7, 0.1), (0.6, 0.0, 0.4)])))
    gnd = [{"ok": np.flatnonzero(roles == 1), "junk": np.flatnonzero(roles == -1)}]
    return rng.permutation(n_db)[None, :], gnd, rng


@settings(max_examples=150, deadline=None)
@given(retrieval_case())
def test_scores_are_fractions_and_agree_with_the_oracle(case):
    ranks, gnd, _ = case
    result = compute_map(ranks, gnd, kappas=(1, 5, 10))
    if len(gnd[0]["ok"]) == 0:
        assert np.isnan(result["aps"][0]) and np.isnan(result["map"])
        assert np.isnan(seed_ap_at_k(ranks, gnd, 10)[0])
        return
    assert_matches_oracle(ranks, gnd)
    values = np.concatenate([result["aps"], result["prs"].ravel(),
                             seed_ap_at_k(ranks, gnd, 10), seed_ap_at_k(ranks, gnd, None),
                             precision_at_k_curves(ranks, gnd, 15).ravel()])
    assert ((values >= 0) & (values <= 1 + 1e-12)).all()
    recall, precision = pr_curves(ranks, gnd)[0]
    assert np.trapezoid(precision, recall) == pytest.approx(result["aps"][0], abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(retrieval_case())
def test_perfect_ranking_scores_one(case):
    _, gnd, rng = case
    ok, junk = gnd[0]["ok"], gnd[0]["junk"]
    if not len(ok):
        return
    n_db = len(ok) + len(junk) + int(rng.integers(0, 5)) + 100
    others = np.setdiff1d(np.arange(n_db), np.concatenate([ok, junk]))
    head = rng.permutation(np.concatenate([ok, junk]))
    ranks = np.concatenate([head, rng.permutation(others)])[None, :]
    result = compute_map(ranks, gnd, kappas=(1, 5, 10))
    assert result["map"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(result["prs"], 1.0)
    assert seed_map_at_k(ranks, gnd, 10)[0] == pytest.approx(1.0)
    assert seed_map_at_k(ranks, gnd, None)[0] == pytest.approx(1.0)


@settings(max_examples=150, deadline=None)
@given(retrieval_case(), st.integers(0, 2**32 - 1))
def test_inserting_junk_anywhere_changes_nothing(case, seed):
    ranks, gnd, _ = case
    rng = np.random.default_rng(seed)
    n_db = ranks.shape[1]
    base = ranks[0][~np.isin(ranks[0], gnd[0]["junk"])]
    new_junk = np.arange(n_db, n_db + int(rng.integers(1, 6)))
    with_junk = base.copy()
    for item in rng.permutation(np.concatenate([gnd[0]["junk"], new_junk])):
        with_junk = np.insert(with_junk, rng.integers(0, len(with_junk) + 1), item)
    more_junk = [{"ok": gnd[0]["ok"], "junk": np.concatenate([gnd[0]["junk"], new_junk])}]
    before = compute_map(base[None, :], gnd)
    after = compute_map(with_junk[None, :], more_junk)
    same = dict(rtol=0, atol=1e-14)  # only the summation order may differ
    np.testing.assert_allclose(before["aps"], after["aps"], **same)
    np.testing.assert_allclose(before["prs"], after["prs"], **same)
    for k in (1, 5, None):
        np.testing.assert_allclose(seed_ap_at_k(base[None, :], gnd, k),
                                   seed_ap_at_k(with_junk[None, :], more_junk, k), **same)
    np.testing.assert_allclose(precision_at_k_curves(base[None, :], gnd, 12),
                               precision_at_k_curves(with_junk[None, :], more_junk, 12), **same)


@settings(max_examples=100, deadline=None)
@given(retrieval_case(), st.integers(0, 40))
def test_truncated_list_counts_missing_positives_as_never_retrieved(case, k):
    ranks, gnd, _ = case
    if not len(gnd[0]["ok"]):
        return
    full = compute_map(ranks, gnd)["aps"][0]
    truncated = compute_map(ranks[:, :k], gnd)["aps"][0]
    kept = ranks[0, :k]
    kept_positives = np.isin(kept, gnd[0]["ok"])
    assert truncated <= full + 1e-12
    if kept_positives.sum() == len(gnd[0]["ok"]):
        assert truncated == pytest.approx(full, abs=1e-12)
    if not kept_positives.any():
        assert truncated == 0.0
        assert compute_map(ranks[:, :k], gnd)["prs"][0].tolist() == [0.0, 0.0, 0.0]


@settings(max_examples=100, deadline=None)
@given(retrieval_case(), st.integers(0, 40))
def test_truncated_list_keeps_the_reference_mp_at_k_while_it_holds_k_items(case, k):
    """The last positive of a truncated row's query may lie beyond the row: kq is then k (the
    reference's kq is the rank of the last positive in the whole ranking), never the rank of
    the last positive the row happens to hold."""
    ranks, gnd, _ = case
    if not len(gnd[0]["ok"]):
        return
    full = compute_map(ranks, gnd)["prs"][0]
    truncated = compute_map(ranks[:, :k], gnd)["prs"][0]
    kept = np.count_nonzero(~np.isin(ranks[0, :k], gnd[0]["junk"]))
    for c, kappa in enumerate((1, 5, 10)):
        if kept >= kappa:
            assert truncated[c] == pytest.approx(full[c], abs=1e-12), (kappa, kept)
        else:
            assert truncated[c] <= full[c] + 1e-12, (kappa, kept)


def test_a_positive_beyond_the_list_makes_kq_k():
    gnd = [{"ok": np.array([1, 20, 21, 22, 23]), "junk": np.array([], np.int64)}]
    row = np.array([[0, 1] + list(range(2, 20))])  # 20 items: the positive at rank 2, four beyond
    result = compute_map(row, gnd, kappas=(5, 10))
    assert result["prs"][0].tolist() == [1 / 5, 1 / 10]  # not 1/2: kq is k


def test_many_queries_in_chunks_agree_with_one_by_one(monkeypatch):
    import cbir.metrics
    rng = np.random.default_rng(7)
    gnd = [{"ok": rng.choice(300, rng.integers(0, 20), replace=False),
            "junk": np.arange(300, 300 + rng.integers(0, 5))} for _ in range(23)]
    ranks = np.argsort(rng.random((23, 310)), axis=1)
    whole = compute_map(ranks, gnd)
    monkeypatch.setattr(cbir.metrics, "CHUNK_ELEMENTS", 1000)
    chunked = compute_map(ranks, gnd)
    np.testing.assert_array_equal(whole["aps"], chunked["aps"])
    np.testing.assert_array_equal(whole["prs"], chunked["prs"])
    assert np.isnan(whole["aps"]).sum() == sum(len(g["ok"]) == 0 for g in gnd)


@pytest.mark.parametrize("ranks, gnd, message", [
    (np.arange(5), [{"ok": [1]}], "2-D"),
    (np.zeros((2, 5), dtype=int), [{"ok": [1]}], "2 rows"),
    (np.array([[0, -1, 2]]), [{"ok": [1]}], "negative"),
    (np.array([[0.0, 1.0]]), [{"ok": [1]}], "integer"),
    (np.array([[0, 1]]), [{"junk": [1]}], "'ok'"),
    (np.array([[0, 1]]), [{"ok": [1], "junk": [1]}], "both positive and junk"),
])
def test_bad_input_is_rejected_with_a_clear_message(ranks, gnd, message):
    with pytest.raises(ValueError, match=message):
        compute_map(ranks, gnd)


# --- the CLI report ---------------------------------------------------------------------------

def small_dataset():
    names = [f"img{i}" for i in range(8)]
    queries = [Query("img0", 0, "img0.jpg"), Query("img4", 4, "img4.jpg"), Query("q-empty", -1, "q.jpg")]
    gnd = {"original": [{"ok": np.array([0, 1, 2]), "junk": np.array([3])},
                        {"ok": np.array([4, 5]), "junk": np.array([], dtype=np.int64)},
                        {"ok": np.array([], dtype=np.int64), "junk": np.array([], dtype=np.int64)}]}
    return Dataset("toy", "/nowhere", names, [n + ".jpg" for n in names], ["a"] * 4 + ["b"] * 4,
                   queries, gnd, 8, 3)


def test_evaluation_report_is_valid_json_of_fractions():
    ds = small_dataset()
    ranks = np.array([[0, 3, 1, 6, 2, 4, 5, 7], [4, 0, 5, 1, 2, 3, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]])
    report = evaluation_report(ranks, ds, "original")
    json.dumps(report, allow_nan=False)
    reference = compute_map(ranks, ds.gnd["original"])
    assert report["mAP"] == pytest.approx(reference["map"])
    assert report["mAP"] == pytest.approx(((2 + 2 + 2 / 3 + 3 / 4) / 6 + (2 + 1 / 2 + 2 / 3) / 4) / 2)
    assert report["mAP@10"] == report["seed_mAP@10"]
    assert report["mAP@100"] == report["seed_mAP@100"]
    assert report["seed_mAP@10"] == pytest.approx(((1 + 2 / 2 + 3 / 4) / 3 + (1 + 2 / 3) / 2) / 2)
    for key in ("mAP", "mAP@10", "mAP@100", "seed_mAP", "mP@1", "mP@5", "mP@10"):
        assert 0 <= report[key] <= 1, key
        assert key in report["definitions"]
    assert report["n_images"] == 8 and report["n_queries"] == 3 and report["n_queries_scored"] == 2
    assert report["protocol"] == "original"
    assert [q["query"] for q in report["per_query"]] == ["img0", "img4", "q-empty"]
    assert report["per_query"][2]["ap"] is None


def test_evaluation_report_rejects_unknown_protocol_and_foreign_ranks():
    ds = small_dataset()
    with pytest.raises(ValueError, match="no protocol 'hard'.*original"):
        evaluation_report(np.zeros((3, 8), dtype=int), ds, "hard")
    with pytest.raises(ValueError, match="image 8 but dataset 'toy' has 8 images"):
        evaluation_report(np.full((3, 8), 8), ds, "original")
