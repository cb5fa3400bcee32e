"""Download the benchmarks from their official URLs into the layout `load_dataset` reads.

Files are fetched with pooch through a downloader that resumes an interrupted
transfer (a `.part` file continued with an HTTP Range request) and shows a tqdm bar.

Integrity decisions:
- a transfer that stops short of the announced size keeps its `.part` file, and
  the next run resumes it;
- an archive that arrived whole but does not decompress to the end (truncated or
  corrupt at the source) is deleted, since resuming cannot repair it; whatever it had
  extracted is removed with it (extraction goes to a temporary folder first);
- archives are extracted with tarfile's "data" filter (no absolute paths, no links
  out of the folder, no device files); once extracted, an archive is deleted and a
  marker in `<root>/.cbir-download/` records that it is done.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .cache import atomic_write_text
from .data import load_ground_truth_pickle

PARIS = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
OXFORD = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
CNNIR = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/"
REVISITOP = "http://cmp.felk.cvut.cz/revisitop/data/datasets/"
R1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/"
R1M_ARCHIVES = 100
BASE_ENV = "CBIR_DOWNLOAD_BASE"
WORKDIR = ".cbir-download"


@dataclass(frozen=True)
class Asset:
    """One downloadable file: an archive extracted into `target` (a folder under the root),
    or a plain file saved as `target`."""
    url: str
    target: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return self.filename.endswith((".tgz", ".tar.gz", ".tar"))


PARIS_IMAGES = [Asset(PARIS + "paris_1-v1.tgz", "paris"), Asset(PARIS + "paris_2-v1.tgz", "paris")]
OXFORD_IMAGES = [Asset(OXFORD + "oxbuild_images-v1.tgz", "oxbuild_images")]
ASSETS = {
    "paris6k": PARIS_IMAGES + [Asset(PARIS + "paris_120310.tgz", "paris_120310"),
                               Asset(CNNIR + "paris6k/gnd_paris6k.pkl", "gnd_paris6k.pkl")],
    "rparis6k": PARIS_IMAGES + [Asset(REVISITOP + "rparis6k/gnd_rparis6k.pkl", "gnd_rparis6k.pkl")],
    "oxford5k": OXFORD_IMAGES + [Asset(OXFORD + "gt_files_170407.tgz", "gt_files_170407"),
                                 Asset(CNNIR + "oxford5k/gnd_oxford5k.pkl", "gnd_oxford5k.pkl")],
    "roxford5k": OXFORD_IMAGES + [Asset(REVISITOP + "roxford5k/gnd_roxford5k.pkl", "gnd_roxford5k.pkl")],
}
# revisitop's 1M distractors (`cbir.distractors`): the image list, then 100 archives into jpg/.
ASSETS["revisitop1m"] = [Asset(R1M + "revisitop1m.txt", "revisitop1m.txt")] + [
    Asset(f"{R1M}jpg/revisitop1m.{n}.tar.gz", "jpg") for n in range(1, R1M_ARCHIVES + 1)]


class ResumableDownloader:
    """A pooch downloader that continues `<file>.part` with an HTTP Range request.

    pooch hands every attempt a fresh temporary file, so the bytes received so far live
    in a stable `.part` file beside it and are moved onto pooch's file once complete.
    """

    def __init__(self, part: Path, progressbar: bool = True, timeout: float = 60.0):
        self.part = Path(part)
        self.progressbar = progressbar
        self.timeout = timeout

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        import requests
        import urllib3

        if check_only:
            return requests.head(url, allow_redirects=True, timeout=self.timeout).status_code == 200
        have = self.part.stat().st_size if self.part.exists() else 0
        try:
            total = self._fetch(requests, url, have)
        except requests.HTTPError as exc:
            raise RuntimeError(f"{url}: {exc}") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            got = self.part.stat().st_size if self.part.exists() else 0
            raise RuntimeError(f"{url}: download interrupted after {got} bytes ({exc}); "
                               f"{self.part} is kept, run the download again to resume") from exc
        got = self.part.stat().st_size
        if total is not None and got != total:
            raise RuntimeError(f"{url}: received {got} of {total} bytes; {self.part} is kept, "
                               f"run the download again to resume")
        shutil.move(self.part, output_file)

    def _fetch(self, requests, url: str, have: int) -> int | None:
        """Append the missing bytes to the part file; returns the full size if the server said it.

        Bytes are written as sent (no Content-Encoding decoding: some servers label .tgz
        files gzip-encoded), so sizes and Range offsets refer to the file itself."""
        from tqdm import tqdm

        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416:
                complete = response.headers.get("Content-Range", "") == f"bytes */{have}"
                if complete:
                    return have
                self.part.unlink()
                return self._fetch(requests, url, 0)
            response.raise_for_status()
            resumed = response.status_code == 206 and response.headers.get(
                "Content-Range", "").startswith(f"bytes {have}-")
            if resumed:
                total = int(response.headers["Content-Range"].rsplit("/", 1)[-1])
            else:
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
                have = 0
            with open(self.part, "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=self.part.name[:-len(".part")], disable=not self.progressbar) as bar:
                for chunk in response.raw.stream(1 << 16, decode_content=False):
                    f.write(chunk)
                    bar.update(len(chunk))
        return total


def asset_url(asset: Asset, base_url: str | None) -> str:
    base = base_url or os.environ.get(BASE_ENV)
    return f"{base.rstrip('/')}/{asset.filename}" if base else asset.url


def fetch(asset: Asset, workdir: Path, base_url: str | None, progressbar: bool) -> Path:
    """The asset's file in `workdir`, downloaded (or resumed) unless already complete."""
    import pooch

    workdir.mkdir(parents=True, exist_ok=True)
    part = workdir / f"{asset.filename}.part"
    return Path(pooch.retrieve(asset_url(asset, base_url), known_hash=None, fname=asset.filename,
                               path=workdir, downloader=ResumableDownloader(part, progressbar)))


def archive_content(folder: Path, target: str) -> Path:
    """The extracted tree to merge into `target`: the archive's single top folder if it is
    named like the target (`paris/` in paris_1.tgz), else everything it holds."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name == Path(target).name:
        return entries[0]
    return folder


def extract(archive: Path, root: Path, target: str, url: str) -> None:
    """Extract safely into a temporary folder, then move the files into `root/target`.

    The compressed stream is read to its end after the last member, so its checksum is
    verified even when the truncation only hit the padding. A truncated or corrupt
    archive is deleted and raises RuntimeError; nothing of it stays.
    """
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".extract-{archive.name}."))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
                while tar.fileobj.read(1 << 20):
                    pass
        except tarfile.FilterError as exc:
            archive.unlink(missing_ok=True)
            raise RuntimeError(f"{archive} (from {url}): unsafe archive member ({exc}); "
                               f"refused and deleted") from exc
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            archive.unlink(missing_ok=True)
            raise RuntimeError(f"{archive} (from {url}): archive is truncated or corrupt ({exc}); "
                               f"deleted it and its partial extraction, run the download again") from exc
        content = archive_content(tmp, target)
        destination = root / target
        for path in sorted(content.rglob("*")):
            if path.is_file():
                moved = destination / path.relative_to(content)
                moved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, moved)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(asset: Asset, file: Path, root: Path, url: str) -> None:
    """Put a fetched file in place: extract an archive, or check and move a ground-truth pickle."""
    if asset.is_archive:
        extract(file, root, asset.target, url)
        file.unlink()
        return
    if file.suffix == ".pkl":
        try:
            load_ground_truth_pickle(file)
        except ValueError as exc:
            file.unlink()
            raise RuntimeError(f"{url}: downloaded ground truth is unusable ({exc}); deleted it") from exc
    os.replace(file, root / asset.target)


def download(name: str, root: Path, base_url: str | None = None, progressbar: bool = True) -> dict:
    """Fetch and install benchmark `name` (paris6k, rparis6k, oxford5k, roxford5k, or the
    distractors revisitop1m) under `root`.

    `base_url` (or the CBIR_DOWNLOAD_BASE environment variable) replaces the official hosts:
    every file is then fetched as `<base>/<file name>`. Re-running skips finished files and
    resumes an interrupted one. Returns {file name: "installed" | "already installed"}.
    """
    if name not in ASSETS:
        raise ValueError(f"no download for {name!r}; choose one of {sorted(ASSETS)}")
    root = Path(root).expanduser().resolve()
    workdir = root / WORKDIR
    report = {}
    for asset in ASSETS[name]:
        done = workdir / f"{asset.filename}.done"
        if done.exists():
            report[asset.filename] = "already installed"
            continue
        url = asset_url(asset, base_url)
        install(asset, fetch(asset, workdir, base_url, progressbar), root, url)
        atomic_write_text(done, f"{url}\n")
        report[asset.filename] = "installed"
    return report
