"""What every page shares: page setup, the sidebar (dataset, protocol, methods) and the view.

`open_page` draws the sidebar and returns the `View`; with no dataset in the cache
it explains, on one screen, how to get one, and stops the page.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from cbir.bundle import BundleError
from cbir.data import Dataset
from cbir.method import Method
from cbir.study import NOT_COMPARABLE

from . import loaders, state

MAX_METHODS = 3
DIFFUSION = Method()


@dataclass
class View:
    key: str
    dataset: Dataset
    protocol: str
    methods: list[Method]
    options: dict[str, Method]  # every cached method by URL id, diffusion with the view's parameters

    @property
    def gnd(self) -> list[dict]:
        return self.dataset.gnd[self.protocol]

    @property
    def query_names(self) -> list[str]:
        return [q.name for q in self.dataset.queries]


def diffusion_limits(n_db: int) -> dict:
    """Slider ranges of the diffusion parameters; k must stay below the database size."""
    return {"alpha": (0.5, 0.999), "k": (2, max(2, min(100, n_db - 1))), "kq": (1, max(1, min(50, n_db))),
            "gamma": (1.0, 6.0)}


def diffusion_params(n_db: int) -> dict:
    """alpha, k, kq, gamma of the view (set by the diffusion lab's sliders or by a link)."""
    limits = diffusion_limits(n_db)
    params = {}
    for name, kind in (("alpha", float), ("k", int), ("kq", int), ("gamma", float)):
        lo, hi = limits[name]
        default = min(max(getattr(DIFFUSION, name), lo), hi)
        params[name] = kind(state.view_value(name, default, state.number(kind, lo, hi)))
        params[name] = min(max(params[name], lo), hi)
    return params


def explain_no_data() -> None:
    st.info(f"""**No descriptors yet.** The dashboard reads the cache in `{state.cache_root()}`
(set `CBIR_CACHE_DIR` to change it; images are looked for under `{state.data_root()}`, set by
`CBIR_DATA_DIR`). To fill it:

1. get a benchmark: `python -m cbir download paris6k --root {state.data_root() / 'paris6k'}`
   (or point at any folder of images with `--dataset folder`);
2. compute descriptors: `python -m cbir extract --dataset paris6k --root {state.data_root() / 'paris6k'}`
   (or use the **Data and descriptors** page, which does both with progress bars);
3. come back here: every page then shows that dataset.

The **Toy manifolds** page works without any data.""")


def open_page(title: str, needs_data: bool = True, diffusion_caption: bool = True) -> View | None:
    """Page config, title and sidebar; None (page stopped if `needs_data`) when the cache is empty.

    `diffusion_caption=False` for the page whose own sliders show (and change) those values.
    """
    st.set_page_config(page_title=f"{title} - cbir", layout="wide")
    st.title(title)
    try:
        found = loaders.datasets()
    except BundleError as exc:
        st.error(f"Refusing to serve this bundle: {exc}")
        if needs_data:
            st.stop()
        return None
    for problem in loaders.broken_datasets():
        st.error(f"Skipping a broken dataset description: {problem}. Delete that file and extract "
                 "again (it is rewritten), or restore it.")
    if not found and loaders.broken_datasets():
        if needs_data:
            st.stop()
        return None
    if not found:
        if needs_data:
            explain_no_data()
            st.stop()
        return None
    bundle = loaders.bundle_manifest()
    with st.sidebar:
        if bundle is not None:
            st.caption(f"Serving a bundle ({bundle['reduce']} descriptors, {bundle['thumb_size']} px "
                       "thumbnails): figures can differ from full-precision descriptors in the last "
                       "digits; searching with your own image or extracting needs the original "
                       "images and torch (requirements-extract.txt).")
        key = state.select("Dataset", "dataset", list(found), what="dataset",
                           format_func=lambda k: f"{found[k].name} ({k})")
        dataset = found[key]
        st.caption(dataset.status_line())
        protocol = state.select("Protocol", "protocol", list(dataset.protocols), what="protocol")
        params = diffusion_params(len(dataset.images))
        options = {i: m.with_rerank("diffusion", **params) if m.rerank == "diffusion" else m
                   for i, m in loaders.method_options(key).items()}
        if not options:
            st.warning(f"No descriptors for {key} in {state.cache_root()}: extract some on the "
                       "Data and descriptors page.")
        plain = [i for i, m in options.items() if m.rerank == "none"]
        first = next((i for i in plain if options[i].pooling == "rmac"), plain[0] if plain else None)
        default = [first, f"{first}+diffusion"] if first else []
        chosen = state.multiselect("Methods", "methods", list(options), what="method", default=default,
                                   max_selections=MAX_METHODS, format_func=lambda i: options[i].label())
        if diffusion_caption:
            st.caption("Diffusion: " + ", ".join(f"{k}={v:g}" for k, v in params.items())
                       + " (sliders on the Diffusion lab)")
        for name, value in params.items():
            state.publish(name, value)
    if dataset.partial:
        st.caption(f"{dataset.name}: {dataset.status_line()}. {NOT_COMPARABLE}")
    methods = [options[i] for i in chosen]
    view = View(key, dataset, protocol, methods, options)
    if not methods and needs_data:
        st.info("Choose at least one method in the sidebar.")
        st.stop()
    return view


def query_select(view: View, label: str = "Query") -> int:
    """The chosen query (its index in `dataset.queries`), kept in the URL by name."""
    names = view.query_names
    if not names:
        st.warning(f"{view.dataset.name} has no queries.")
        st.stop()
    name = state.select(label, "query", names, what="query", container=st.sidebar)
    return names.index(name)
