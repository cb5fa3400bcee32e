"""Issue 10: no wrong number, no traceback, no trusted tampering, on any cache, bundle or input."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cbir.cache import CacheError, dataset_key, entry_dir, list_entries, load_entry, save_entry
from cbir.data import check_image, load_dataset, open_image
from cbir.extraction import load_image
from cbir.method import Method

from dashboard_fixture import build
from synthetic import make_paris_like

RMAC, GEM = Method(pooling="rmac"), Method(pooling="gem")


@pytest.fixture
def cache(tmp_path):
    _, cache_dir, dataset = build(tmp_path)
    return cache_dir, dataset


def rewrite_manifest(entry_path, change) -> None:
    """Apply `change` to the manifest and write it back (a tampering that keeps JSON valid)."""
    path = entry_path / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


# --- silently wrong numbers ---------------------------------------------------------------

def grey_ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    ramp = grey_ramp()
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "wide.png")
    Image.fromarray(ramp).save(tmp_path / "narrow.png")
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    for read in (open_image, lambda p: load_image(p, 1024)):
        wide = np.asarray(read(tmp_path / "wide.png"), np.int16)
        assert np.abs(wide - np.asarray(read(tmp_path / "narrow.png"), np.int16)).max() <= 1
        assert (wide == 255).mean() < 0.05


def test_floating_point_pixels_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((40, 40), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif: floating-point pixels"):
        open_image(tmp_path / "float.tif")
    Image.fromarray(np.full((40, 40), 100_000, np.int32)).save(tmp_path / "wide.tif")
    assert check_image(tmp_path / "wide.tif") == (None, "I pixel values outside 0-65535; convert it to 8 or 16 bits")
    assert check_image(tmp_path / "float.tif")[1].startswith("floating-point pixels")  # skipped at load time


def test_tiny_image_is_skipped_with_its_reason(tmp_path):
    root = make_paris_like(tmp_path / "paris")
    tiny = root / "paris" / "eiffel" / "paris_eiffel_000004.jpg"
    Image.new("RGB", (1, 1), (90, 90, 90)).save(tiny)
    dataset = load_dataset("paris6k", root)
    assert "paris_eiffel_000004" not in dataset.images
    [skipped] = dataset.unreadable
    assert skipped["name"] == "paris_eiffel_000004" and "too small: 1x1 px" in skipped["error"]


@pytest.mark.parametrize("row", [np.zeros(32), np.full(32, 0.97 / np.sqrt(32)), np.full(32, np.nan)])
def test_a_descriptor_that_is_not_unit_is_refused_when_stored(cache, row):
    cache_dir, dataset = cache
    entry = load_entry(cache_dir, dataset, RMAC)
    db = entry.db.copy()
    db[3] = row
    with pytest.raises(ValueError, match=f"descriptor of image {dataset.images[3]} (has norm|is not finite)"):
        save_entry(cache_dir, dataset, GEM, db, entry.queries)
    assert not entry_dir(cache_dir, dataset_key(dataset), GEM).exists()


def test_an_entry_in_another_methods_folder_is_not_used_under_that_name(cache):
    cache_dir, dataset = cache
    key = dataset_key(dataset)
    shutil.copytree(entry_dir(cache_dir, key, RMAC), entry_dir(cache_dir, key, GEM))
    with pytest.raises(CacheError, match="holds Lite0 R-MAC, not Lite0 GeM"):
        load_entry(cache_dir, dataset, GEM)
    assert GEM not in list_entries(cache_dir, key)


def test_a_nan_row_with_a_recomputed_checksum_is_refused_naming_the_file(cache):
    cache_dir, dataset = cache
    path = entry_dir(cache_dir, dataset_key(dataset), RMAC)
    db = np.load(path / "db.npy")
    db[5] = np.nan
    np.save(path / "db.npy", db)
    digest = hashlib.sha256((path / "db.npy").read_bytes()).hexdigest()
    rewrite_manifest(path, lambda m: {**m, "files": {**m["files"], "db.npy": digest}})
    with pytest.raises(CacheError, match=r"db.npy: row 5 is not finite"):
        load_entry(cache_dir, dataset, RMAC)


# --- tracebacks become one-line messages ------------------------------------------------------

def cli(argv, capsys) -> tuple[int, str]:
    from cbir.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    """The single `error:` line (progress bars may precede it), and no traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]) and "Traceback" not in err, err
    return lines[0]


BROKEN_MANIFESTS = {
    "null": lambda m: None,
    "list": lambda m: [m],
    "files null": lambda m: {**m, "files": None},
    "no files": lambda m: {k: v for k, v in m.items() if k != "files"},
    "files of numbers": lambda m: {**m, "files": {"db.npy": 1, "queries.npy": 2}},
    "sizes null": lambda m: {**m, "sizes": None},
}


@pytest.mark.parametrize("damage", list(BROKEN_MANIFESTS))
def test_a_broken_manifest_is_a_cache_error_naming_it(cache, damage):
    cache_dir, dataset = cache
    path = entry_dir(cache_dir, dataset_key(dataset), RMAC)
    rewrite_manifest(path, BROKEN_MANIFESTS[damage])
    with pytest.raises(CacheError, match="manifest.json: "):
        load_entry(cache_dir, dataset, RMAC)
    assert RMAC not in list_entries(cache_dir, dataset_key(dataset))


@pytest.mark.parametrize("damage", ["directory", "fifo", "symlink outside", "longer"])
def test_an_array_that_is_not_the_stated_regular_file_is_refused(cache, tmp_path, damage):
    import os

    cache_dir, dataset = cache
    path = entry_dir(cache_dir, dataset_key(dataset), RMAC) / "db.npy"
    original = path.read_bytes()
    path.unlink()
    if damage == "directory":
        path.mkdir()
    elif damage == "fifo":
        os.mkfifo(path)
    elif damage == "symlink outside":
        (tmp_path / "elsewhere.npy").write_bytes(original)
        path.symlink_to(tmp_path / "elsewhere.npy")
    else:
        path.write_bytes(original + b"\0" * 64)
    expected = {"directory": "not a regular file", "fifo": "not a regular file",
                "symlink outside": "outside", "longer": "bytes, the manifest says"}[damage]
    with pytest.raises(CacheError, match=expected):
        load_entry(cache_dir, dataset, RMAC)


def test_cli_errors_on_a_damaged_cache_are_one_line_exit_2(cache, tmp_path, capsys):
    cache_dir, dataset = cache
    key = dataset_key(dataset)
    (entry_dir(cache_dir, key, RMAC) / "db.npy").unlink()
    (entry_dir(cache_dir, key, RMAC) / "db.npy").mkdir()
    code, err = cli(["bundle", "--dataset", "tiny", "--cache", str(cache_dir), "--out", str(tmp_path / "b"),
                     "--no-layouts"], capsys)
    assert code == 2 and "db.npy: not a regular file" in one_line_error(err)
    rewrite_manifest(entry_dir(cache_dir, key, Method(pooling="mac")), lambda m: None)
    code, err = cli(["report", "--dataset", "tiny", "--cache", str(cache_dir),
                     "--methods", Method(pooling="mac").slug()], capsys)
    assert code == 2 and "not in the cache" in one_line_error(err)


def test_a_full_disk_is_one_line_exit_2(cache, tmp_path, capsys, monkeypatch):
    import errno

    import cbir.bundle

    cache_dir, _ = cache

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b" / "db.npy"))
    monkeypatch.setattr(cbir.bundle, "save_entry", full)
    code, err = cli(["bundle", "--dataset", "tiny", "--cache", str(cache_dir), "--out", str(tmp_path / "b"),
                     "--no-layouts"], capsys)
    line = one_line_error(err)
    assert code == 2 and "db.npy: No space left on device; free disk space" in line
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_full_disk_when_storing_frees_the_resumable_chunks_and_retries(tmp_path, monkeypatch):
    """The chunks are all in memory then: keeping them would fill the disk on every rerun."""
    import errno

    pytest.importorskip("torch")
    pytest.importorskip("timm")
    import cbir.extraction
    from cbir.extraction import extract

    dataset = load_dataset("paris6k", make_paris_like(tmp_path / "paris", per_landmark=4))
    cache_dir, calls = tmp_path / "cache", []
    store = cbir.extraction.save_entry

    def full_once(*args, **kwargs):
        calls.append(sorted(p.name for p in (cache_dir / dataset_key(dataset) / ".partial").glob("*/chunk-*")))
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return store(*args, **kwargs)
    monkeypatch.setattr(cbir.extraction, "save_entry", full_once)
    method = Method(pooling="gem", size=64, weights="random")
    entry = extract(dataset, [method], cache_dir, workers=0, threads=1, chunk_size=4)[method]
    assert calls[0] and calls[1] == []  # chunks present at the failure, freed before the retry
    assert entry.db.shape == (len(dataset.images), 1280)


def write_many(args) -> int:
    """One writer process: `rounds` saves of the same entry, each with its own descriptors."""
    cache_dir, dataset_json, seed, rounds = args
    from cbir.data import Dataset

    dataset = Dataset.load(dataset_json)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        db = rng.normal(size=(len(dataset.images), 32)).astype(np.float32)
        queries = rng.normal(size=(len(dataset.queries), 32)).astype(np.float32)
        save_entry(cache_dir, dataset, RMAC, db / np.linalg.norm(db, axis=1, keepdims=True),
                   queries / np.linalg.norm(queries, axis=1, keepdims=True), extra={"writer": seed})
    return seed


def test_concurrent_saves_of_one_entry_all_succeed_and_leave_one_whole_entry(cache, tmp_path):
    import multiprocessing

    cache_dir, dataset = cache
    dataset.save(tmp_path / "dataset.json")
    writers, rounds = 4, 15
    with multiprocessing.get_context("fork").Pool(writers) as pool:
        done = pool.map(write_many, [(cache_dir, tmp_path / "dataset.json", s, rounds) for s in range(writers)])
    assert done == list(range(writers))
    entry = load_entry(cache_dir, dataset, RMAC)
    assert entry.manifest["writer"] in done
    assert not [p.name for p in entry.path.parent.iterdir() if p.name.startswith(".")]


def test_a_garbage_dataset_description_is_named_on_the_dashboard(cache, tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    cache_dir, dataset = cache
    broken = cache_dir / "paris6k-00000000" / "dataset.json"
    broken.parent.mkdir()
    broken.write_text("\x00garbage")
    monkeypatch.setenv("CBIR_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "data"))
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any(str(broken) in e.value for e in at.error)
    assert not any("No descriptors yet" in i.value for i in at.info)
    assert at.dataframe  # the valid dataset is still shown
    (cache_dir / dataset_key(dataset) / "dataset.json").write_text("[]")
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=60).run()
    assert not at.exception and len(at.error) == 2
    assert not any("No descriptors yet" in i.value for i in at.info)


# --- stale temporaries and partial runs ---------------------------------------------------------

def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def lock_holder(directory):
    """A live process holding `directory`'s writer lock until its stdin closes."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys; from cbir.files import hold_lock; hold_lock(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.read()"), str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_temporaries_of_dead_writers_are_reclaimed_never_those_of_live_ones(cache):
    import os
    import time

    from cbir.files import LOCK_NAME

    cache_dir, dataset = cache
    parent = cache_dir / dataset_key(dataset)
    slug = RMAC.slug()
    dead, live_pid = parent / f".{slug}.{dead_pid()}-abc.tmp", parent / f".{slug}.1-live.tmp"
    dead_file = parent / f".dataset.json.{dead_pid()}-xyz.tmp"
    locked_dir = parent / f".{slug}.{dead_pid()}-held.tmp"
    for d in (dead, live_pid, locked_dir):
        d.mkdir()
        (d / "db.npy").write_bytes(b"partial")
    dead_file.write_text("{")
    (locked_dir / LOCK_NAME).touch()
    legacy_old, legacy_new = parent / f".{slug}.k3j2h1g0.tmp", parent / f".{slug}.a1b2c3d4.tmp"
    for d in (legacy_old, legacy_new):
        d.mkdir()
    day_ago = time.time() - 25 * 3600
    os.utime(legacy_old, (day_ago, day_ago))
    holder = lock_holder(locked_dir)  # e.g. a writer on another host sharing the folder
    try:
        entry = load_entry(cache_dir, dataset, RMAC)
        save_entry(cache_dir, dataset, RMAC, entry.db, entry.queries)
        assert not dead.exists() and not dead_file.exists() and not legacy_old.exists()
        assert live_pid.exists() and locked_dir.exists()  # pid 1 is alive; the lock is held
        assert legacy_new.exists()  # named without a pid by an older version: kept a day
    finally:
        holder.stdin.close()
        holder.wait()
    save_entry(cache_dir, dataset, RMAC, entry.db, entry.queries)
    assert not locked_dir.exists() and live_pid.exists()


def test_partial_runs_abandoned_a_day_are_reclaimed_unless_live(tmp_path):
    import os
    import time

    from cbir.cache import PARTIAL_TTL_SECONDS, PartialRun, partial_dir

    _, _, dataset = build(tmp_path)
    old, held, recent = (partial_dir(tmp_path, dataset, name) for name in ("old", "held", "recent"))
    for run in (old, held, recent):
        PartialRun(run, {"run": run.name}).close()
        (run / "chunk-000000.npz").write_bytes(b"chunk")
    stale = time.time() - PARTIAL_TTL_SECONDS - 60
    for run in (old, held):
        for path in [run, *run.iterdir()]:
            os.utime(path, (stale, stale))
    holder = lock_holder(held)
    try:
        PartialRun(partial_dir(tmp_path, dataset, "new"), {"run": "new"}).close()
        assert not old.exists() and held.exists() and recent.exists()
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_run_another_process_computes_is_refused_not_shared(tmp_path):
    from cbir.cache import PartialRun, partial_dir

    _, _, dataset = build(tmp_path)
    run = partial_dir(tmp_path, dataset, "busy")
    interrupted = PartialRun(run, {"run": 1})
    del interrupted  # an interrupted pass drops its run: the lock goes with it
    holder = lock_holder(run)
    try:
        with pytest.raises(RuntimeError, match="another process is computing these descriptors"):
            PartialRun(run, {"run": 1})
    finally:
        holder.stdin.close()
        holder.wait()


# --- bundles: described completely, verified, served read-only -------------------------------

@pytest.fixture
def bundle(cache, tmp_path):
    from cbir.bundle import build_bundle

    cache_dir, dataset = cache
    out = tmp_path / "bundle"
    build_bundle(cache_dir, dataset, [Method(pooling="mac"), RMAC], out, layouts=False, grid_protocols=())
    return out


def edit_bundle(out, change, reseal: bool = False) -> None:
    """Edit bundle.json; with `reseal` recompute its manifest_sha256 (a careful tamperer)."""
    from cbir.bundle import manifest_digest

    path = out / "bundle.json"
    manifest = change(json.loads(path.read_text()))
    if reseal and isinstance(manifest, dict):
        manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def db_name(out) -> str:
    return next(out.glob(f"*/{RMAC.slug()}/db.npy")).relative_to(out).as_posix()


def without(name):
    return lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != name}}


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def symlinked(path, target) -> None:
    """Move the file to `target` and leave a symbolic link to it in its place."""
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)


BUNDLE_TAMPERINGS = {
    "unlisted and edited array": (lambda out: (edit_bundle(out, without(db_name(out)), reseal=True),
                                               flip_last_byte(out / db_name(out))), "not listed in bundle.json"),
    "table entry removed, not resealed": (lambda out: edit_bundle(out, without(db_name(out))), "edited"),
    "empty table": (lambda out: edit_bundle(out, lambda m: {**m, "files": {}}, reseal=True), "no file table"),
    "files null": (lambda out: edit_bundle(out, lambda m: {**m, "files": None}, reseal=True), "no file table"),
    "entry without bytes": (lambda out: edit_bundle(out, lambda m: {**m, "files": {
        k: {"sha256": v["sha256"]} for k, v in m["files"].items()}}, reseal=True), "needs a sha256 string and a bytes"),
    "reduce field edited": (lambda out: edit_bundle(out, lambda m: {**m, "reduce": "pca:8"}), "edited"),
    "manifest null": (lambda out: (out / "bundle.json").write_text("null"), "bundle format None"),
    "extra method folder": (lambda out: shutil.copytree(out / db_name(out).rsplit("/", 2)[0] / Method(pooling="mac").slug(),
                                                        out / db_name(out).rsplit("/", 2)[0] / GEM.slug()),
                            "not listed in bundle.json"),
    "array replaced by a symlink": (lambda out: symlinked(out / db_name(out), out.parent / "elsewhere.npy"),
                                    "outside"),
    "array longer": (lambda out: (out / db_name(out)).write_bytes((out / db_name(out)).read_bytes() + b"\0"),
                     "bytes, the manifest says"),
}


@pytest.mark.parametrize("damage", list(BUNDLE_TAMPERINGS))
def test_a_tampered_bundle_is_refused_naming_the_problem(bundle, damage):
    from cbir.bundle import BundleError, verify_bundle

    tamper, expected = BUNDLE_TAMPERINGS[damage]
    verify_bundle(bundle)
    tamper(bundle)
    with pytest.raises(BundleError, match=expected):
        verify_bundle(bundle)


def serve(out, monkeypatch, tmp_path, page=None):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CBIR_CACHE_DIR", str(out))
    monkeypatch.setenv("CBIR_DATA_DIR", str(tmp_path / "no-data"))
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=60)
    if page:
        at.switch_page(page)
    return at.run()


def test_a_served_bundle_is_read_only_and_rechecked_before_use(bundle, monkeypatch, tmp_path):
    from cbir.bundle import present_files, verify_bundle

    before = {name: (bundle / name).read_bytes() for name in present_files(bundle)}
    for page in (None, "pages/3_Diffusion_lab.py", "pages/4_Curves.py"):
        at = serve(bundle, monkeypatch, tmp_path, page)
        assert not at.exception and not at.error, [e.value for e in at.error]
    assert {name: (bundle / name).read_bytes() for name in present_files(bundle)} == before
    verify_bundle(bundle)  # the next start still accepts it

    flip_last_byte(bundle / db_name(bundle))  # changed after the first check, while served
    at = serve(bundle, monkeypatch, tmp_path, "pages/4_Curves.py")
    assert not at.exception
    assert any("Refusing to serve this bundle" in e.value and "db.npy" in e.value for e in at.error)


# --- inputs ------------------------------------------------------------------------------------

def test_dataset_paths_resolving_outside_their_root_are_refused(tmp_path):
    from synthetic import make_class_folder, make_csv_manifest

    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(outside)
    folder = make_class_folder(tmp_path / "folder")
    (folder / "cats" / "escape.jpg").symlink_to(outside)
    with pytest.raises(ValueError, match="escape.jpg: resolves to .*secret.jpg, outside"):
        load_dataset("folder", folder)
    manifest = make_csv_manifest(tmp_path / "csv")
    (manifest.parent / "link").symlink_to(tmp_path, target_is_directory=True)
    with open(manifest, "a") as f:
        f.write("link/secret.jpg,cats,0\n")
    with pytest.raises(ValueError, match="link/secret.jpg: resolves to .*secret.jpg, outside"):
        load_dataset("csv", manifest)


def test_a_query_naming_an_absent_image_is_reported_by_file_and_line(tmp_path, capsys):
    root = make_paris_like(tmp_path / "paris")
    (root / "paris" / "eiffel" / "paris_eiffel_000000.jpg").unlink()  # eiffel's query image
    dataset = load_dataset("paris6k", root)
    [dropped] = dataset.dropped_queries
    assert dropped["name"] == "paris_eiffel_000000"
    assert dropped["source"].endswith("eiffel_1_query.txt:1") and "not present" in dropped["reason"]
    from cbir.cli import main

    assert main(["info", "--dataset", "paris6k", "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["dropped_queries"] == [dropped]


def test_a_ground_truth_file_that_is_not_text_is_named(tmp_path, capsys):
    root = make_paris_like(tmp_path / "paris")
    (root / "paris_120310" / "louvre_1_ok.txt").write_bytes(b"\xff\xfe\x00garbage")
    code, err = cli(["info", "--dataset", "paris6k", "--root", str(root)], capsys)
    assert code == 2 and "louvre_1_ok.txt: not a text file" in one_line_error(err)


def test_evaluate_names_the_images_and_queries_it_skipped(tmp_path, capsys):
    from synthetic import truncate_file

    root = make_paris_like(tmp_path / "paris")
    truncate_file(root / "paris" / "louvre" / "paris_louvre_000003.jpg", 0.3)
    (root / "paris" / "eiffel" / "paris_eiffel_000000.jpg").unlink()
    dataset = load_dataset("paris6k", root)
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(len(dataset.images), 16)), rng.normal(size=(len(dataset.queries), 16))
    save_entry(tmp_path / "cache", dataset, RMAC, (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32),
               (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    from cbir.cli import main

    assert main(["evaluate", "--dataset", "paris6k", "--root", str(root), "--cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [s["name"] for s in report["skipped"]] == ["paris_louvre_000003"]
    assert [s["name"] for s in report["skipped_queries"]] == ["paris_eiffel_000000"]
    assert "skipped unreadable image paris_louvre_000003" in captured.err
    assert "paris_eiffel_000000 (" in captured.err and "eiffel_1_query.txt:1" in captured.err


def test_upload_messages_name_the_file_not_the_buffer():
    from dashboard.upload import read_upload

    for data in (b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40):
        with pytest.raises(ValueError) as info:
            read_upload(data, "holiday.png")
        assert str(info.value).startswith("holiday.png: ") and "BytesIO" not in str(info.value)


def test_created_files_respect_the_umask(cache, tmp_path):
    import os
    import stat

    from cbir.cache import atomic_write_text

    cache_dir, dataset = cache
    previous = os.umask(0o027)
    try:
        entry = load_entry(cache_dir, dataset, RMAC)
        path = save_entry(tmp_path / "fresh", dataset, RMAC, entry.db, entry.queries)
        atomic_write_text(tmp_path / "report.md", "# report\n")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.iterdir(), tmp_path / "report.md",
                                                             path.parent / "dataset.json"]}
    assert modes[path.name] == 0o750
    assert {m for name, m in modes.items() if name != path.name} == {0o640}
