"""What every page shares: page setup, the sidebar (dataset, protocol, methods) and the view.

`open_page` draws the sidebar and returns the `View`; with no dataset in the cache
it explains, on one screen, how to get one, and stops the page.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from cbir.bundle import BundleError
from cbir.data import Dataset
from cbir.method import GRAPH_RERANKINGS, Method
from cbir.study import NOT_COMPARABLE
from cbir.topkstore import StoredEvaluation

from . import loaders, state, stored_topk

MAX_METHODS = 3
DIFFUSION = Method()


@dataclass
class View:
    key: str
    dataset: Dataset
    protocol: str
    methods: list[Method]
    options: dict[str, Method]  # every cached method by URL id, diffusion with the view's parameters
    source: str = "cache"  # "demo" when serving the embedded demo
    distractors: StoredEvaluation | None = None  # a stored evaluation against distractors (top-K lists only)

    @property
    def name(self) -> str:
        """What is evaluated, as every page names it: "rParis6k + R1M", or the dataset's name."""
        return self.distractors.name if self.distractors else self.dataset.display_name()

    @property
    def url_key(self) -> str:
        """The sidebar's Dataset choice as links carry it."""
        return self.distractors.key if self.distractors else self.key

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


PAGES = (("app.py", "Overview"), ("pages/2_Query_explorer.py", "Query explorer"),
         ("pages/3_Diffusion_lab.py", "Diffusion lab"), ("pages/4_Curves.py", "Curves"),
         ("pages/5_Manifolds.py", "Manifolds"), ("pages/6_Toy_manifolds.py", "Toy manifolds"),
         ("pages/7_Data_and_descriptors.py", "Data and descriptors"))
SOURCE_NAMES = {"cache": "Your cache", "demo": "Embedded demo (Paris6k-250)"}
SHORT_DEMO_NOTICE = ("**Demo**: 250 of the 6392 Paris6k images, 12 of its 55 queries; EfficientNet-Lite0/1/2, "
                     "float16. Not comparable with full-benchmark figures. The full benchmark: **Data and "
                     "descriptors** page.")


def fsr_rank(n_db: int) -> int:
    """The FSR rank of the view (the Diffusion lab's choice or a link), at most the database size."""
    default = min(DIFFUSION.fsr_rank, n_db)
    return min(int(state.view_value("rank", default, state.number(int, 1, n_db))), n_db)


def explain_no_data() -> None:
    st.info(f"""**No descriptors yet.** The dashboard reads the cache in `{state.user_cache_root()}`
(set `CBIR_CACHE_DIR` to change it; images are looked for under `{state.data_root()}`, set by
`CBIR_DATA_DIR`). To fill it:

1. get a benchmark: `python -m cbir download paris6k --root {state.data_root() / 'paris6k'}`
   (or point at any folder of images with `--dataset folder`);
2. compute descriptors: `python -m cbir extract --dataset paris6k --root {state.data_root() / 'paris6k'}`
   (or use the **Data and descriptors** page, which does both with progress bars);
3. come back here: every page then shows that dataset.

The **Toy manifolds** page works without any data.""")


def navigation() -> None:
    """The page links ("Overview" for app.py; Streamlit's own list would call it "app")."""
    with st.sidebar:
        for path, label in PAGES:
            st.page_link(path, label=label)
        st.divider()


def candidate_roots() -> dict[str, Path]:
    """The user's cache, then the embedded demo if there is one."""
    from cbir.demo import demo_dir

    candidates = {"cache": state.user_cache_root()}
    demo = demo_dir()
    if demo is not None and demo.exists() and demo.resolve() != state.user_cache_root().resolve():
        candidates["demo"] = demo
    return candidates


def sources() -> tuple[dict[str, Path], bool]:
    """The caches the user can choose from, in order: their own when it holds data, then the
    embedded demo; and whether a broken dataset description was found (and named). A
    damaged bundle or demo is reported and left out, never served."""
    found, broken = {}, False
    for name, root in candidate_roots().items():
        try:
            if loaders.datasets_at(root):
                found[name] = root
            for problem in loaders.broken_datasets(root):
                broken = True
                st.error(f"Skipping a broken dataset description: {problem}. Delete that file and extract "
                         "again (it is rewritten), or restore it.")
        except BundleError as exc:
            what = "the embedded demo" if name == "demo" else "this bundle"
            st.error(f"Refusing to serve {what}: {exc}. Nothing from it is shown."
                     + (" Rebuild it with `python -m cbir demo --root <Paris6k-250 folder>`, or restore "
                        "it with `git checkout demo/`." if name == "demo" else ""))
    return found, broken


def demo_notice() -> str:
    from cbir.demo import DESCRIPTION
    return (f"{DESCRIPTION} For the full benchmark (6392 images, 55 queries), download and extract it on "
            "the **Data and descriptors** page.")


def open_page(title: str, needs_data: bool = True, diffusion_caption: bool = True) -> View | None:
    """Page config, title and sidebar; None (page stopped if `needs_data`) when there is no data.

    `diffusion_caption=False` for the page whose own sliders show (and change) those values.
    """
    target = st.session_state.pop(state.OPEN_PAGE, None)
    if target:
        st.switch_page(target)
    loaders.new_run()
    st.set_page_config(page_title=f"{title} - cbir", layout="wide")
    navigation()
    st.title(title)
    found_sources, broken = sources()
    if not found_sources and broken:  # named above; "no descriptors yet" would be false
        if needs_data:
            st.stop()
        return None
    if not found_sources:
        if needs_data:
            explain_no_data()
            st.stop()
        return None
    with st.sidebar:
        source = state.select("Data", "source", list(found_sources), what="data source",
                              format_func=SOURCE_NAMES.get) if len(found_sources) > 1 else next(iter(found_sources))
    state.serve(found_sources[source])
    found = loaders.datasets()
    bundle = loaders.bundle_manifest()
    with st.sidebar:
        if source == "demo":
            st.info(SHORT_DEMO_NOTICE)
        evaluations, problems = stored_topk.evaluations()
        for problem in problems:
            st.error(f"Stored distractor evaluation left out: {problem}")
        for evaluation in [e for e in evaluations.values() if e.dataset_key not in found]:
            st.error(f"Stored distractor evaluation {evaluation.name} left out: its dataset "
                     f"{evaluation.dataset_key} is not described in {state.cache_root()}")
        evaluations = {k: e for k, e in evaluations.items() if e.dataset_key in found}
        names = {**dataset_names(found), **{k: e.name for k, e in evaluations.items()}}
        choice = state.select("Dataset", "dataset", [*found, *evaluations], what="dataset", format_func=names.get)
        evaluation = evaluations.get(choice)
        key = evaluation.dataset_key if evaluation else choice
        dataset = found[key]
        st.caption(dataset.status_line() + ("; stored top-K lists against the distractors (no descriptors "
                                            "loaded)" if evaluation else ""))
        if bundle is not None and source != "demo":
            st.caption(f"Serving a bundle ({bundle['reduce']} descriptors, {bundle['thumb_size']} px thumbnails): "
                       + ("its figures were computed on the full-precision descriptors, and are served from the "
                          "stored top-K lists" if evaluation else "figures can differ from full-precision "
                          "descriptors in the last digits")
                       + "; extracting needs the original images and torch (requirements-extract.txt).")
        protocol = state.select("Protocol", "protocol", evaluation.protocols if evaluation else
                                list(dataset.protocols), what="protocol")
        params = diffusion_params(len(dataset.images))
        graph_params = {**params, "fsr_rank": fsr_rank(len(dataset.images))}
        if evaluation:
            options = {loaders.method_id(m): m for m in evaluation.methods(protocol)}
        else:
            options = {i: m.with_rerank(m.rerank, **graph_params) if m.rerank in GRAPH_RERANKINGS else m
                       for i, m in loaders.method_options(key).items()}
        if not options:
            st.warning(f"No descriptors for {names[choice]} in {state.cache_root()}: extract some on the "
                       "Data and descriptors page.")
        plain = [i for i, m in options.items() if m.rerank == "none"]
        first = next((i for i in plain if options[i].pooling == "rmac"), plain[0] if plain else None)
        default = [first] if evaluation else [first, f"{first}+diffusion"] if first else []
        chosen = state.multiselect("Methods", "methods", list(options), what="method", default=default,
                                   max_selections=MAX_METHODS, format_func=lambda i: options[i].label())
        if diffusion_caption and not evaluation:
            st.caption("Diffusion and FSR: " + ", ".join(f"{k}={v:g}" for k, v in graph_params.items())
                       + " (sliders on the Diffusion lab)")
        for name, value in params.items():
            state.publish(name, value)
    if dataset.partial:
        st.caption(f"Partial copy ({dataset.status_line()}). {NOT_COMPARABLE}")
    methods = [options[i] for i in chosen]
    view = View(key, dataset, protocol, methods, options, source, evaluation)
    if not methods and needs_data:
        st.info("Choose at least one method in the sidebar.")
        st.stop()
    return view


def dataset_names(found: dict[str, Dataset]) -> dict[str, str]:
    """Display name per dataset key; copies with the same name are told apart by their folder."""
    names = {key: d.display_name() for key, d in found.items()}
    for key, dataset in found.items():
        if list(names.values()).count(names[key]) > 1:
            names[key] = f"{names[key]} in {dataset.root or key}"
    return names


def query_select(view: View, label: str = "Query") -> int:
    """The chosen query (its index in `dataset.queries`), kept in the URL by name."""
    names = view.query_names
    if not names:
        st.warning(f"{view.dataset.name} has no queries.")
        st.stop()
    name = state.select(label, "query", names, what="query", container=st.sidebar)
    return names.index(name)
