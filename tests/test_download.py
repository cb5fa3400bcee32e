import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cbir.cli import main
from cbir.data import load_dataset
from cbir.download import WORKDIR, download
from synthetic import make_paris_like, truncate_file, write_gnd_pickle


class Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-` unless `server.ranges` is False;
    `server.cut[name] = n` announces the full length but closes after n bytes (once)."""

    def do_GET(self):
        server = self.server
        name = self.path.lstrip("/")
        server.log.append((name, self.headers.get("Range")))
        if name not in server.files:
            self.send_error(404)
            return
        data = server.files[name]
        start = 0
        header = self.headers.get("Range")
        if header and server.ranges:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = server.cut.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("CBIR_DOWNLOAD_BASE", raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.cut, httpd.log, httpd.ranges = {}, {}, [], True
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def paris_archives(tmp_path, corrupt: str | None = None) -> dict[str, bytes]:
    """The four Paris6k downloads, built from a synthetic Paris-like folder: images split over
    paris_1 / paris_2 (each with a top `paris/` folder), flat txt ground truth, the pickle."""
    src = make_paris_like(tmp_path / "src")
    write_gnd_pickle(src)
    if corrupt:
        truncate_file(src / "paris" / corrupt, 0.5)
    images = {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted((src / "paris").rglob("*.jpg"))}
    return {
        "paris_1-v1.tgz": tgz({k: v for k, v in images.items() if "louvre" not in k}),
        "paris_2-v1.tgz": tgz({k: v for k, v in images.items() if "louvre" in k}),
        "paris_120310.tgz": tgz({p.name: p.read_bytes() for p in (src / "paris_120310").iterdir()}),
        "gnd_paris6k.pkl": (src / "gnd_paris6k.pkl").read_bytes(),
    }


def test_download_installs_the_layout_load_dataset_reads(server, tmp_path):
    server.files = paris_archives(tmp_path)
    root = tmp_path / "paris6k"
    report = download("paris6k", root, base_url=server.url, progressbar=False)
    assert set(report.values()) == {"installed"} and len(report) == 4
    ds = load_dataset("paris6k", root)
    assert len(ds.images) == 18 and len(ds.queries) == 3 and ds.unreadable == []
    assert (root / "paris" / "louvre" / "paris_louvre_000000.jpg").is_file()
    assert (root / "paris_120310" / "eiffel_1_query.txt").is_file()
    assert not list((root / WORKDIR).glob("*.tgz")) and not list(root.glob(".extract-*"))
    server.log.clear()
    again = download("paris6k", root, base_url=server.url, progressbar=False)
    assert set(again.values()) == {"already installed"} and server.log == []


def test_base_url_comes_from_the_environment_and_cli_prints_json(server, tmp_path, monkeypatch, capsys):
    server.files = paris_archives(tmp_path)
    monkeypatch.setenv("CBIR_DOWNLOAD_BASE", server.url + "/")
    assert main(["download", "paris6k", "--root", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out)["gnd_paris6k.pkl"] == "installed"
    assert {name for name, _ in server.log} == set(server.files)


@pytest.mark.parametrize("keep", [0.5, -6])
def test_truncated_archive_is_a_clear_error_and_leaves_nothing_behind(server, tmp_path, keep):
    server.files = paris_archives(tmp_path)
    good = server.files["paris_120310.tgz"]
    # -6: only the gzip trailer is lost; every tar member is still complete
    server.files["paris_120310.tgz"] = good[:int(len(good) * keep)] if keep > 0 else good[:keep]
    root = tmp_path / "d"
    with pytest.raises(RuntimeError, match="paris_120310.tgz .*truncated or corrupt"):
        download("paris6k", root, base_url=server.url, progressbar=False)
    assert not (root / "paris_120310").exists() and not list(root.glob(".extract-*"))
    assert not list((root / WORKDIR).glob("paris_120310.tgz*"))
    assert (root / WORKDIR / "paris_1-v1.tgz.done").exists()
    server.files["paris_120310.tgz"] = good
    server.log.clear()
    download("paris6k", root, base_url=server.url, progressbar=False)
    assert [name for name, _ in server.log] == ["paris_120310.tgz", "gnd_paris6k.pkl"]
    assert len(load_dataset("paris6k", root).queries) == 3


def test_cli_download_reports_a_truncated_archive_with_exit_2(server, tmp_path, capsys):
    server.files = paris_archives(tmp_path)
    server.files["paris_1-v1.tgz"] = server.files["paris_1-v1.tgz"][:200]
    code = main(["download", "paris6k", "--root", str(tmp_path / "d"), "--base-url", server.url])
    assert code == 2 and "truncated or corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_transfer_keeps_the_part_file_and_resumes(server, tmp_path, ranges):
    server.files = paris_archives(tmp_path)
    server.ranges = ranges
    server.cut["paris_1-v1.tgz"] = 1000
    root = tmp_path / "d"
    with pytest.raises(RuntimeError, match="interrupted.*run the download again to resume"):
        download("paris6k", root, base_url=server.url, progressbar=False)
    part = root / WORKDIR / "paris_1-v1.tgz.part"
    assert part.read_bytes() == server.files["paris_1-v1.tgz"][:1000]
    assert not (root / "paris").exists()
    server.log.clear()
    download("paris6k", root, base_url=server.url, progressbar=False)
    assert server.log[0] == ("paris_1-v1.tgz", "bytes=1000-")
    assert not part.exists()
    assert len(load_dataset("paris6k", root).images) == 18


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    server.files = paris_archives(tmp_path)
    root = tmp_path / "d"
    (root / WORKDIR).mkdir(parents=True)
    (root / WORKDIR / "paris_1-v1.tgz.part").write_bytes(server.files["paris_1-v1.tgz"])
    download("paris6k", root, base_url=server.url, progressbar=False)
    assert server.log[0][1] == f"bytes={len(server.files['paris_1-v1.tgz'])}-"
    assert len(load_dataset("paris6k", root).images) == 18


def test_archive_with_a_corrupt_jpeg_downloads_and_info_lists_it(server, tmp_path, capsys):
    server.files = paris_archives(tmp_path, corrupt="eiffel/paris_eiffel_000002.jpg")
    root = tmp_path / "d"
    download("paris6k", root, base_url=server.url, progressbar=False)
    assert main(["info", "--dataset", "paris6k", "--root", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in info["unreadable"]] == ["paris_eiffel_000002"]
    assert info["n_images"] == 17 and info["n_queries"] == 3


def test_archive_escaping_its_folder_is_refused(server, tmp_path):
    server.files = paris_archives(tmp_path)
    server.files["paris_1-v1.tgz"] = tgz({"../../escaped.txt": b"x"})
    root = tmp_path / "d"
    with pytest.raises(RuntimeError, match="unsafe archive member"):
        download("paris6k", root, base_url=server.url, progressbar=False)
    assert not (tmp_path / "escaped.txt").exists() and not list(tmp_path.rglob("escaped.txt"))


def test_hostile_ground_truth_pickle_is_deleted(server, tmp_path):
    server.files = paris_archives(tmp_path)
    server.files["gnd_paris6k.pkl"] = b"cos\nsystem\n(S'true'\ntR."
    root = tmp_path / "d"
    with pytest.raises(RuntimeError, match="gnd_paris6k.pkl: downloaded ground truth is unusable.*forbidden"):
        download("paris6k", root, base_url=server.url, progressbar=False)
    assert not (root / "gnd_paris6k.pkl").exists()
    assert not list((root / WORKDIR).glob("gnd_paris6k.pkl*"))


def test_missing_file_on_the_server_names_the_url(server, tmp_path):
    with pytest.raises(RuntimeError, match="paris_1-v1.tgz.*404"):
        download("paris6k", tmp_path, base_url=server.url, progressbar=False)


def test_unknown_benchmark_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no download for 'holidays'"):
        download("holidays", tmp_path)
