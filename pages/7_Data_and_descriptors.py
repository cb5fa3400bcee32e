"""Data and descriptors: datasets and cache entries present; download and extract with progress.

Downloading and extracting import their heavy modules only when the user clicks.
Stopping (the Cancel button, the stop button, closing the tab) interrupts the run at
the next progress update: the cache writes entries atomically and keeps finished
chunks in a `.partial` folder, so a cancelled run leaves no half-written entry and
the next run resumes. Training a head (cbir.heads) checkpoints every epoch: Cancel
keeps the last epoch and the same form resumes from it.
"""
import json
from pathlib import Path

import streamlit as st

from cbir.bundle import is_bundle
from cbir.cache import CacheError, load_entry, read_manifest
from cbir.heads import HEAD_KINDS
from cbir.method import POOLINGS, PRECISIONS
from cbir.runtime import RUNTIMES
from dashboard import gallery, loaders, sidebar, state, stored_topk

BENCHMARKS = ("paris6k", "rparis6k", "oxford5k", "roxford5k")
KINDS = BENCHMARKS + ("folder",)
TRAIN_KINDS = ("folder", "csv", "sfm120k") + BENCHMARKS

view = sidebar.open_page("Data and descriptors", needs_data=False)
data_root, cache_root = state.data_root(), state.user_cache_root()
served = state.cache_root()


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

if view is not None and view.source == "demo":
    st.subheader(f"Serving the embedded demo `{served}` (read-only)")
    st.info(f"{sidebar.demo_notice()} Extraction below writes into your cache `{cache_root}`, which then "
            "comes first in the sidebar (\"Data\").")
else:
    st.subheader(f"Cache `{served}`")
found = loaders.datasets() if view is not None else {}
if not found:
    sidebar.explain_no_data()
for key, dataset in found.items():
    with st.expander(f"{dataset.display_name()}: {dataset.status_line()}", expanded=len(found) == 1):
        rows = []
        for method in loaders.descriptor_methods(key):
            path = served / key / method.slug()
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
                    load_entry(served, dataset, method, verify=True)
                    st.success(f"{method.slug()}: valid")
                except CacheError as exc:
                    st.error(str(exc))
for evaluation in (stored_topk.evaluations()[0] if view is not None else {}).values():
    with st.expander(f"{evaluation.name}: stored top-K lists (`python -m cbir evaluate ... --distractors`)"):
        st.dataframe([{"method": method.label(), "protocol": protocol, "file": str(path)}
                      for (method, protocol), path in evaluation.files.items()], hide_index=True,
                     key=f"topk_{evaluation.key}")

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
    runtime = st.selectbox("Runtime", ("auto",) + RUNTIMES,
                           help="auto: OpenVINO on a CPU when installed (same float32 descriptors, faster), else torch")
    precision = st.selectbox("Precision", PRECISIONS, help="bf16 is faster and labelled in the method name")
    go_extract = st.form_submit_button("Extract")
if go_extract and (root := inside_data_root(folder)) is not None:
    if is_bundle(cache_root):
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
                methods = [Method(backbone=backbone, pooling=p, size=int(size), precision=precision) for p in poolings]
                entries = extract(dataset, methods, cache_root, progress=progress,
                                  runtime=None if runtime == "auto" else runtime)
            except ImportError as exc:
                status.update(label=f"Extraction needs torch and timm ({exc}): pip install torch timm",
                              state="error")
            except (OSError, ValueError, RuntimeError) as exc:
                status.update(label=f"Extraction failed: {exc}", state="error")
            else:
                status.update(label=f"Extracted {len(entries)} entries into {cache_root}", state="complete")

st.subheader("Train a retrieval head on frozen descriptors")
st.caption("A head (learned whitening, or a linear / MLP projection trained with the contrastive loss) "
           "learns from a labelled training set (folder: one sub-folder per class; csv: path,label). "
           "Evaluating it on images it was trained on is refused; choose the epoch on a validation split "
           "of the training classes only.")
with st.form("finetune"):
    train_kind = st.selectbox("Training dataset kind", TRAIN_KINDS)
    train_folder = st.text_input("Training dataset (folder, or the csv file, under the data root)", value="train")
    head_backbone = st.text_input("Backbone (timm name)", value="tf_efficientnet_lite0", key="head_backbone")
    head_pooling = st.selectbox("Pooling", POOLINGS, index=POOLINGS.index("gem"))
    head_size = st.number_input("Max image side (px)", 64, 2048, 1024, 32, key="head_size")
    head_kind = st.selectbox("Head", HEAD_KINDS, index=1)
    head_name = st.text_input("Head name", value="linear-train")
    epochs = st.number_input("Epochs", 1, 500, 30)
    margin = st.number_input("Contrastive margin", 0.05, 2.0, 0.7, 0.05)
    go_train = st.form_submit_button("Train")
if go_train and (train_root := inside_data_root(train_folder)) is not None:
    with st.status(f"Training {head_kind} head {head_name!r} on {train_root}...", expanded=True) as status:
        st.button("Cancel (keeps the last epoch)", key="cancel_finetune")
        bar = st.progress(0.0, text="descriptors of the training images")
        curve = st.empty()

        def extraction_progress(done: int, total: int, stage: str) -> None:
            bar.progress(done / max(total, 1), text=f"{stage}: {done} / {total}")

        def epoch_progress(epoch: int, total: int, history: dict) -> None:
            bar.progress(epoch / max(total, 1), text=f"epoch {epoch} / {total}: loss {history['loss'][-1]:.4f}, "
                                                     f"validation mAP {history['val_mAP'][-1]:.3f}")
            curve.line_chart({"loss": history["loss"], "validation mAP": history["val_mAP"][1:]})

        try:
            from cbir.data import load_dataset
            from cbir.heads import TrainOptions, finetune
            from cbir.method import Method

            head = finetune(load_dataset(train_kind, train_root),
                            Method(backbone=head_backbone, pooling=head_pooling, size=int(head_size)),
                            cache_root, head_name, TrainOptions(kind=head_kind, epochs=int(epochs), margin=margin),
                            progress=extraction_progress, epoch_progress=epoch_progress)
        except ImportError as exc:
            status.update(label=f"Training needs torch and timm ({exc}): pip install torch timm", state="error")
        except (OSError, ValueError, RuntimeError) as exc:
            status.update(label=f"Training failed: {exc}", state="error")
        else:
            history = head.manifest["history"]
            status.update(label=f"Head {head.name!r} stored in {cache_root}/heads (best epoch "
                                f"{history['best_epoch']}, validation mAP {max(history['val_mAP']):.3f}, "
                                f"{head.manifest['train_seconds']:.0f} s); evaluate it with --head {head.name}",
                          state="complete")
