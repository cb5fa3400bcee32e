"""Data and descriptors: datasets and cache entries present; download and extract with progress.

Downloading and extracting import their heavy modules only when the user clicks.
Stopping (the Cancel button, the stop button, closing the tab) interrupts the run at
the next progress update: the cache writes entries atomically and keeps finished
chunks in a `.partial` folder, so a cancelled run leaves no half-written entry and
the next run resumes.
"""
import json
from pathlib import Path

import streamlit as st

from cbir.cache import CacheError, load_entry, read_manifest
from cbir.method import POOLINGS
from dashboard import gallery, loaders, sidebar, state

BENCHMARKS = ("paris6k", "rparis6k", "oxford5k", "roxford5k")
KINDS = BENCHMARKS + ("folder",)

sidebar.open_page("Data and descriptors", needs_data=False)
data_root, cache_root = state.data_root(), state.cache_root()


def inside_data_root(text: str) -> Path | None:
    """The folder named by the user, or None with an error shown if it leaves the data root."""
    path = Path(text).expanduser()
    path = path if path.is_absolute() else data_root / path
    if not gallery.inside(path, [data_root]):
        st.error(f"{path}: outside the data root {data_root.resolve()} (set CBIR_DATA_DIR to use another "
                 "folder); nothing was read or written.")
        return None
    return path


st.subheader(f"Data root `{data_root}`")
folders = sorted(p for p in data_root.iterdir() if p.is_dir()) if data_root.is_dir() else []
if folders:
    st.dataframe([{"folder": p.name, "path": str(p)} for p in folders], hide_index=True)
else:
    st.info(f"No dataset folders under {data_root.resolve()} yet.")

st.subheader(f"Cache `{cache_root}`")
found = loaders.datasets()
if not found:
    sidebar.explain_no_data()
for key, dataset in found.items():
    with st.expander(f"{dataset.name} ({key}): {dataset.status_line()}", expanded=len(found) == 1):
        rows = []
        for method in loaders.descriptor_methods(key):
            path = cache_root / key / method.slug()
            try:
                manifest = read_manifest(path)
                rows.append({"method": method.label(), "dim": manifest.get("dim"), "dtype": manifest.get("dtype"),
                             "created": manifest.get("created"), "entry": method.slug(), "status": "ok"})
            except CacheError as exc:
                rows.append({"method": method.label(), "entry": method.slug(), "status": str(exc)})
        st.dataframe(rows, hide_index=True, key=f"entries_{key}")
        if st.button("Verify checksums", key=f"verify_{key}"):
            for method in loaders.descriptor_methods(key):
                try:
                    load_entry(cache_root, dataset, method, verify=True)
                    st.success(f"{method.slug()}: valid")
                except CacheError as exc:
                    st.error(str(exc))

st.subheader("Download a benchmark")
with st.form("download"):
    name = st.selectbox("Benchmark", BENCHMARKS)
    folder = st.text_input("Into folder (under the data root)", value=name)
    go_download = st.form_submit_button("Download")
if go_download and (root := inside_data_root(folder)) is not None:
    with st.status(f"Downloading {name} into {root}...", expanded=True) as status:
        st.button("Cancel", key="cancel_download")
        try:
            from cbir.download import download
            summary = download(name, root, progressbar=False)
        except (OSError, ValueError, RuntimeError) as exc:
            status.update(label=f"Download failed: {exc}", state="error")
        else:
            st.code(json.dumps(summary, indent=1, default=str))
            status.update(label=f"{name} downloaded into {root}", state="complete")

st.subheader("Extract descriptors")
with st.form("extract"):
    kind = st.selectbox("Dataset kind", KINDS)
    folder = st.text_input("Dataset folder (under the data root)", value="paris6k")
    backbone = st.text_input("Backbone (timm name)", value="tf_efficientnet_lite0")
    poolings = st.multiselect("Poolings (one forward pass serves them all)", POOLINGS, default=["spoc", "rmac"])
    size = st.number_input("Max image side (px, only downscales)", 64, 2048, 1024, 32)
    go_extract = st.form_submit_button("Extract")
if go_extract and (root := inside_data_root(folder)) is not None:
    if loaders.bundle_manifest() is not None:
        st.error(f"{cache_root} is a bundle, served read-only: set CBIR_CACHE_DIR to a cache folder to extract.")
    elif not poolings:
        st.error("Choose at least one pooling.")
    elif not root.exists():
        st.error(f"{root}: no such folder; download the benchmark first.")
    else:
        with st.status(f"Extracting {', '.join(poolings)} on {root}...", expanded=True) as status:
            st.button("Cancel", key="cancel_extract")
            bar = st.progress(0.0, text="loading the dataset")

            def progress(done: int, total: int, stage: str) -> None:
                bar.progress(done / max(total, 1), text=f"{stage}: {done} / {total}")

            try:
                from cbir.data import load_dataset
                from cbir.extraction import extract
                from cbir.method import Method

                dataset = load_dataset(kind, root)
                st.write(f"{dataset.name}: {dataset.status_line()}")
                for bad in dataset.unreadable:
                    st.warning(f"skipped unreadable image {bad.get('name')}: {bad.get('error')}")
                entries = extract(dataset, [Method(backbone=backbone, pooling=p, size=int(size)) for p in poolings],
                                  cache_root, progress=progress)
            except ImportError as exc:
                status.update(label=f"Extraction needs torch and timm ({exc}): pip install torch timm",
                              state="error")
            except (OSError, ValueError, RuntimeError) as exc:
                status.update(label=f"Extraction failed: {exc}", state="error")
            else:
                status.update(label=f"Extracted {len(entries)} entries into {cache_root}", state="complete")
