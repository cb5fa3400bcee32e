import json
import os
import pickle
import shutil

import numpy as np
import pytest

from cbir.cli import main
from cbir.data import (Dataset, check_image, dataset_summary, load_dataset, load_ground_truth_pickle,
                       open_image)
from synthetic import (make_class_folder, make_csv_manifest, make_paris_like, make_revisited_like,
                       truncate_file, write_gnd_pickle, write_jpeg, landmark_image)

PARIS250_QUERIES = ["paris_defense_000056", "paris_defense_000254", "paris_defense_000038",
                    "paris_eiffel_000266", "paris_invalides_000072", "paris_invalides_000360",
                    "paris_louvre_000081", "paris_louvre_000135", "paris_louvre_000050",
                    "paris_louvre_000035", "paris_moulinrouge_000868", "paris_moulinrouge_000004"]


def same_dataset(a: Dataset, b: Dataset) -> None:
    assert a.images == b.images and a.paths == b.paths and a.labels == b.labels
    assert a.queries == b.queries
    assert a.unreadable == b.unreadable
    assert a.protocols == b.protocols
    for p in a.protocols:
        assert len(a.gnd[p]) == len(b.gnd[p])
        for ga, gb in zip(a.gnd[p], b.gnd[p]):
            np.testing.assert_array_equal(ga["ok"], gb["ok"])
            np.testing.assert_array_equal(ga["junk"], gb["junk"])


def linked_copy(src, dst, parts):
    """A copy by hard links (a symlink resolving outside the dataset folder is refused)."""
    dst.mkdir()
    for part in parts:
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, copy_function=os.link)
        else:
            os.link(src / part, dst / part)
    return dst


# --- the real Paris6k subset -----------------------------------------------------

def test_info_on_paris250_reports_250_images_and_12_queries(paris250, capsys):
    assert main(["info", "--dataset", "paris6k", "--root", str(paris250)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_images"] == 250 and info["n_queries"] == 12
    assert info["n_images_total"] == 6392 and info["n_queries_total"] == 55
    assert info["missing_images"] == 6392 - 250 == len(info["missing"])
    assert info["unreadable"] == [] and info["protocols"] == ["original"]
    assert info["status"] == "250 of 6392 images, 12 of 55 queries"


def test_paris250_txt_and_pickle_ground_truth_agree(paris250, tmp_path):
    txt = load_dataset("paris6k", linked_copy(paris250, tmp_path / "txt", ["paris", "paris_120310"]))
    pkl = load_dataset("paris6k", linked_copy(paris250, tmp_path / "pkl", ["paris", "gnd_paris6k.pkl"]))
    both = load_dataset("paris6k", paris250)
    same_dataset(txt, pkl)
    same_dataset(txt, both)
    assert pkl.n_images_total == both.n_images_total == 6392
    # txt only: the total is every name the 220 files mention plus the 3 unlabelled images on disk
    assert txt.n_images_total == len(set(txt.missing) | set(txt.images)) == 3402
    assert txt.n_queries_total == pkl.n_queries_total == 55
    assert sorted(q.name for q in txt.queries) == sorted(PARIS250_QUERIES)


def test_paris250_queries_are_their_own_positives(paris250):
    ds = load_dataset("paris6k", paris250)
    for q, gnd in zip(ds.queries, ds.gnd["original"]):
        assert ds.images[q.index] == q.name and ds.paths[q.index] == q.path
        assert q.index in gnd["ok"] and q.index not in gnd["junk"]
        assert not set(gnd["ok"]) & set(gnd["junk"])
        assert all(ds.labels[i] == ds.labels[q.index] for i in gnd["ok"])
    first = ds.queries[0]
    assert first.name == "paris_defense_000056" and first.bbox == (8.0, 104.0, 707.0, 913.0)


def test_paris250_pickle_holds_only_plain_containers(paris250):
    data = load_ground_truth_pickle(paris250 / "gnd_paris6k.pkl")
    assert len(data["imlist"]) == 6392 and len(data["qimlist"]) == 55
    assert all(data["qidx"][i] in data["gnd"][i]["ok"] for i in range(55))


# --- synthetic Paris-like layout ---------------------------------------------------

def test_paris_like_layout_is_read_with_good_ok_junk_and_missing(tmp_path):
    root = make_paris_like(tmp_path, distractors=2)
    ds = load_dataset("paris6k", root)
    assert ds.name == "paris6k" and ds.display_name() == "Paris6k (20 of 26 images)"  # names the cache key
    assert len(ds.images) == 20 and len(ds.queries) == 3
    assert ds.n_images_total == 26 and ds.n_queries_total == 3
    assert ds.missing == sorted(f"paris_{lm}_{i:06d}" for lm in ("defense", "eiffel", "louvre") for i in (6, 7))
    assert ds.labels.count("general") == 2 and ds.labels.count("eiffel") == 6
    q = ds.queries[1]
    assert q.name == "paris_eiffel_000000" and q.path == "paris/eiffel/paris_eiffel_000000.jpg"
    assert q.bbox == pytest.approx((9.6, 7.2, 86.4, 64.8))
    gnd = ds.gnd["original"][1]
    assert [ds.images[i] for i in gnd["ok"]] == [f"paris_eiffel_{i:06d}" for i in range(5)]
    assert [ds.images[i] for i in gnd["junk"]] == ["paris_eiffel_000005"]
    assert ds.status_line() == "20 of 26 images, 3 of 3 queries"


def test_queries_whose_image_is_missing_are_dropped(tmp_path):
    ds = load_dataset("paris6k", make_paris_like(tmp_path, missing_queries=2))
    assert len(ds.queries) == 3 and ds.n_queries_total == 5 and ds.partial
    assert "paris_defense_900000" in ds.missing


def test_pickle_and_txt_agree_on_synthetic_data(tmp_path):
    root = make_paris_like(tmp_path / "a", queries_per_landmark=2, distractors=1)
    txt = load_dataset("paris6k", root)
    write_gnd_pickle(root, extra_names=4)
    both = load_dataset("paris6k", root)
    for part in (root / "paris_120310").iterdir():
        part.unlink()
    (root / "paris_120310").rmdir()
    pkl = load_dataset("paris6k", root)
    same_dataset(txt, pkl)
    same_dataset(txt, both)
    assert pkl.n_images_total == txt.n_images_total + 4


def test_flat_jpg_layout_reads_like_landmark_folders(tmp_path):
    nested = load_dataset("paris6k", make_paris_like(tmp_path / "n"))
    root = make_paris_like(tmp_path / "f")
    (root / "jpg").mkdir()
    for path in (root / "paris").glob("*/*.jpg"):
        path.rename(root / "jpg" / path.name)
    flat = load_dataset("paris6k", root)
    assert flat.images == nested.images and flat.labels == nested.labels
    assert flat.paths[0].startswith("jpg/")


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    root = make_paris_like(tmp_path)
    truncate_file(root / "paris/eiffel/paris_eiffel_000000.jpg", 0.5)   # a query
    (root / "paris/louvre/paris_louvre_000002.jpg").write_bytes(b"")
    ds = load_dataset("paris6k", root)
    assert {u["name"] for u in ds.unreadable} == {"paris_eiffel_000000", "paris_louvre_000002"}
    assert all(u["error"] for u in ds.unreadable)
    assert "paris_eiffel_000000" not in ds.images and len(ds.images) == 16
    assert [q.name for q in ds.queries] == ["paris_defense_000000", "paris_louvre_000000"]
    louvre = ds.gnd["original"][1]
    assert [ds.images[i] for i in louvre["ok"]] == [f"paris_louvre_{i:06d}" for i in (0, 1, 3, 4)]
    assert ds.n_images_total - len(ds.images) == len(ds.missing) + len(ds.unreadable)


def test_image_checks_catch_truncation_and_open_image_names_the_file(tmp_path):
    path = write_jpeg(tmp_path / "x.jpg", landmark_image(0, (200, 150), np.random.default_rng(0)))
    assert check_image(path) == ((200, 150), None)
    assert open_image(path).size == (200, 150)
    truncate_file(path, 0.9)
    size, error = check_image(path)
    assert size is None and "truncated" in error
    with pytest.raises(ValueError, match=r"x\.jpg: unreadable image"):
        open_image(path)


def test_missing_ground_truth_file_names_it(tmp_path):
    root = make_paris_like(tmp_path)
    (root / "paris_120310" / "eiffel_1_ok.txt").unlink()
    with pytest.raises(FileNotFoundError, match="eiffel_1_ok.txt"):
        load_dataset("paris6k", root)


def test_no_ground_truth_at_all_names_the_expected_folder(tmp_path):
    root = make_paris_like(tmp_path)
    for part in (root / "paris_120310").iterdir():
        part.unlink()
    (root / "paris_120310").rmdir()
    with pytest.raises(FileNotFoundError, match="paris_120310"):
        load_dataset("paris6k", root)


@pytest.mark.parametrize("line", ["paris_defense_000000 1 2 3\n", "paris_defense_000000 1 2 x 40\n",
                                  "paris_defense_000000 1 2 30 40\nextra 1 2 3 4\n", "\n"])
def test_malformed_query_line_is_rejected_with_file_name(tmp_path, line):
    root = make_paris_like(tmp_path)
    (root / "paris_120310" / "defense_1_query.txt").write_text(line)
    with pytest.raises(ValueError, match="defense_1_query.txt"):
        load_dataset("paris6k", root)


def test_box_outside_the_image_is_an_error_but_rounding_is_clipped(tmp_path):
    root = make_paris_like(tmp_path)      # images are 96 x 72
    query = root / "paris_120310" / "defense_1_query.txt"
    query.write_text("paris_defense_000000 -0.5 2 96.8 72.4\n")
    assert load_dataset("paris6k", root).queries[0].bbox == (0.0, 2.0, 96.0, 72.0)
    query.write_text("paris_defense_000000 10 10 150 60\n")
    with pytest.raises(ValueError, match=r"defense_1_query.txt:1: box .* outside its 96x72 image"):
        load_dataset("paris6k", root)
    query.write_text("paris_defense_000000 50 10 40 60\n")
    with pytest.raises(ValueError, match="empty"):
        load_dataset("paris6k", root)


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running_it(tmp_path):
    root = make_paris_like(tmp_path / "data")
    marker = tmp_path / "pwned"
    write_gnd_pickle(root)
    data = {"imlist": [], "qimlist": [], "gnd": [], "payload": Hostile(marker)}
    (root / "gnd_paris6k.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"gnd_paris6k.pkl: .*forbidden global (posix|os|nt)\.system"):
        load_dataset("paris6k", root)
    assert not marker.exists()


def test_garbage_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "gnd_rparis6k.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="gnd_rparis6k.pkl: not a valid ground-truth pickle"):
        load_dataset("rparis6k", tmp_path)


def test_pickle_with_numpy_arrays_is_accepted(tmp_path):
    path = tmp_path / "g.pkl"
    data = {"imlist": ["a", "b"], "qimlist": ["q"],
            "gnd": [{"ok": np.array([0, 1]), "junk": np.array([], dtype=np.int64),
                     "bbx": np.array([1.0, 2.0, 3.0, 4.0])}]}
    path.write_bytes(pickle.dumps(data))
    loaded = load_ground_truth_pickle(path)
    np.testing.assert_array_equal(loaded["gnd"][0]["ok"], [0, 1])


# --- Oxford5k and the revisited protocols ------------------------------------------

def test_oxford_original_strips_the_oxc1_prefix(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"all_souls_{i:06d}" for i in range(4)] + ["radcliffe_camera_000001"]
    for i, n in enumerate(names):
        write_jpeg(tmp_path / "oxbuild_images" / f"{n}.jpg", landmark_image(i // 4, (80, 60), rng))
    gt = tmp_path / "gt_files_170407"
    gt.mkdir()
    (gt / "all_souls_1_query.txt").write_text("oxc1_all_souls_000000 136.5 34.1 70.0 55.2\n")
    (gt / "all_souls_1_good.txt").write_text("all_souls_000000\nall_souls_000001\n")
    (gt / "all_souls_1_ok.txt").write_text("all_souls_000002\n")
    (gt / "all_souls_1_junk.txt").write_text("all_souls_000003\nall_souls_000099\n")
    with pytest.raises(ValueError, match="outside"):
        load_dataset("oxford5k", tmp_path)
    (gt / "all_souls_1_query.txt").write_text("oxc1_all_souls_000000 6.5 4.1 70.0 55.2\n")
    ds = load_dataset("oxford5k", tmp_path)
    assert ds.queries[0].name == "all_souls_000000" and ds.queries[0].index == 0
    assert ds.labels == ["all_souls"] * 4 + ["radcliffe_camera"]
    np.testing.assert_array_equal(ds.gnd["original"][0]["ok"], [0, 1, 2])
    assert ds.missing == ["all_souls_000099"]


def test_revisited_protocols_follow_the_reference_definitions(tmp_path):
    root = make_revisited_like(tmp_path)
    ds = load_dataset("rparis6k", root)
    assert ds.protocols == ("easy", "medium", "hard")
    assert len(ds.images) == 24 and ds.n_images_total == 27 and len(ds.queries) == 6
    assert ds.missing == ["paris_defense_000008", "paris_eiffel_000008", "paris_louvre_000008"]
    q = ds.queries[2]
    assert q.index == -1 and q.path == "jpg/paris_eiffel_500000.jpg" and q.name not in ds.images
    assert ds.query_label(2) == "eiffel" and ds.labels[-1] == "louvre"
    names = {p: {k: [ds.images[i] for i in v] for k, v in ds.gnd[p][2].items()} for p in ds.protocols}
    easy = [f"paris_eiffel_{i:06d}" for i in (0, 1, 2)]
    hard = [f"paris_eiffel_{i:06d}" for i in (3, 4)]
    junk = ["paris_eiffel_000005"]
    assert names["easy"] == {"ok": easy, "junk": hard + junk}
    assert names["medium"] == {"ok": easy + hard, "junk": junk}
    assert names["hard"] == {"ok": hard, "junk": easy + junk}


def test_revisited_without_its_pickle_is_a_clear_error(tmp_path):
    make_paris_like(tmp_path)
    with pytest.raises(FileNotFoundError, match="gnd_rparis6k.pkl"):
        load_dataset("rparis6k", tmp_path)


# --- folders and csv manifests --------------------------------------------------------

def test_class_folder_relevance_is_same_class_and_the_query_is_junk(tmp_path):
    ds = load_dataset("folder", make_class_folder(tmp_path, per_class=3))
    assert len(ds.images) == 9 and len(ds.queries) == 9 and ds.protocols == ("class",)
    assert ds.images[0] == "birds/birds_000.jpg" and ds.labels[0] == "birds"
    q, gnd = ds.queries[4], ds.gnd["class"][4]
    assert q.index == 4 and q.bbox is None and ds.query_label(4) == "cats"
    np.testing.assert_array_equal(gnd["ok"], [3, 5])
    np.testing.assert_array_equal(gnd["junk"], [4])
    per_class = load_dataset("folder", tmp_path, queries=1)
    assert [q.name for q in per_class.queries] == ["birds/birds_000.jpg", "cats/cats_000.jpg",
                                                   "dogs/dogs_000.jpg"]
    chosen = load_dataset("folder", tmp_path, queries=["dogs/dogs_002.jpg"])
    assert [q.index for q in chosen.queries] == [8]
    with pytest.raises(ValueError, match="not in the dataset"):
        load_dataset("folder", tmp_path, queries=["nope.jpg"])


def test_empty_class_folder_is_named(tmp_path):
    make_class_folder(tmp_path)
    (tmp_path / "zebras").mkdir()
    with pytest.raises(ValueError, match="zebras: class folder has no images"):
        load_dataset("folder", tmp_path)


def test_images_outside_class_folders_are_rejected(tmp_path):
    make_class_folder(tmp_path)
    write_jpeg(tmp_path / "stray.jpg", landmark_image(0, (32, 32), np.random.default_rng(0)))
    with pytest.raises(ValueError, match="one sub-folder per class"):
        load_dataset("folder", tmp_path)


def test_csv_manifest_with_query_flags_and_a_missing_file(tmp_path):
    manifest = make_csv_manifest(tmp_path)
    with open(manifest, "a") as f:
        f.write("images/cats/gone.jpg,cats,0\n")
    ds = load_dataset("csv", manifest)
    assert ds.root == str(tmp_path.resolve()) and ds.missing == ["images/cats/gone.jpg"]
    assert [q.name for q in ds.queries] == ["images/cats/cats_000.jpg", "images/dogs/dogs_000.jpg"]
    assert ds.image_path(0).is_file()
    np.testing.assert_array_equal(ds.gnd["class"][0]["ok"], [1, 2])
    assert ds.status_line() == "6 of 7 images, 2 of 2 queries"


@pytest.mark.parametrize("text, message", [
    ("file,class\na.jpg,x\n", "header must name columns path,label"),
    ("path,label,is_query\na.jpg,x,maybe\n", r"manifest.csv:2: is_query"),
    ("path,label\na.jpg,\n", r"manifest.csv:2: empty path or label"),
    ("path,label\na.jpg,x\na.jpg,y\n", r"manifest.csv:3: a.jpg listed twice"),
    ("path,label\n", "no images listed"),
    ("path,label\n../secret.jpg,x\n", r"manifest.csv:2: ../secret.jpg leaves the manifest's folder"),
    ("path,label\n/etc/passwd,x\n", r"manifest.csv:2: /etc/passwd leaves the manifest's folder"),
])
def test_bad_csv_manifests_name_the_line(tmp_path, text, message):
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_dataset("csv", tmp_path / "manifest.csv")


def test_unknown_dataset_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path)


# --- summaries and round trips ----------------------------------------------------------

def test_loaded_dataset_round_trips_through_json(tmp_path):
    ds = load_dataset("paris6k", make_paris_like(tmp_path / "d"))
    ds.save(tmp_path / "dataset.json")
    same_dataset(ds, Dataset.load(tmp_path / "dataset.json"))
    summary = dataset_summary(ds)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["missing_images"] == 6 and summary["protocols"] == ["original"]


def test_info_cli_turns_bad_input_into_exit_2(tmp_path, capsys):
    assert main(["info", "--dataset", "folder", "--root", str(tmp_path / "absent")]) == 2
    assert "error:" in capsys.readouterr().err
