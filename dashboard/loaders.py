"""Cached access to the cache directory and to the `cbir` computations the pages draw.

Large read-only arrays (descriptors, rankings, diffusion graphs) live in
`st.cache_resource`: shared, never copied, never mutated. Small derived tables
(evaluation reports, the alpha x k grid) live in `st.cache_data`. Every cached
function takes a `stamp` (the manifest's modification time) so a re-extracted
entry is reloaded instead of served stale. No retrieval math here: it all comes
from `cbir.ranking`, `cbir.rerank`, `cbir.diffusion` and `cbir.metrics`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from cbir.cache import CacheError, Entry, checked_manifest, list_datasets, list_entries, load_entry
from cbir.data import Dataset
from cbir.evaluation import overview_methods
from cbir.method import Method
from cbir.topkstore import is_distractor_key

from .state import cache_root



def method_id(method: Method) -> str:
    """The method's name in URLs: the descriptor slug, plus `+<re-ranking>` if any."""
    return method.slug() if method.rerank == "none" else f"{method.slug()}+{method.rerank}"


def file_stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


CHECKED_THIS_RUN = "_bundles_checked_this_run"


def new_run() -> None:
    """Called first by every page (`sidebar.open_page`): bundles are compared again in this run."""
    st.session_state.pop(CHECKED_THIS_RUN, None)


def bundle_manifest() -> dict | None:
    """The verified manifest when the cache is a bundle (None for a plain cache)."""
    return _bundle_checked(cache_root())


def _bundle_checked(root: Path) -> dict | None:
    """The verified manifest of the bundle at `root` (None for a plain cache).

    Raises `cbir.bundle.BundleError` for a tampered or incomplete bundle. Once per rerun
    (not once per call: a page asks for it once per method) the size and mtime of every
    file (and the file list) are compared with those verified; any change verifies every
    checksum again, so what is served is what was verified.
    """
    from cbir.bundle import is_bundle, tree_stamp

    checked = st.session_state.setdefault(CHECKED_THIS_RUN, {})
    if str(root) not in checked:
        checked[str(root)] = _verified_bundle(str(root), tree_stamp(root)) if is_bundle(root) else None
    return checked[str(root)]


@st.cache_resource(max_entries=2, show_spinner="Verifying the bundle...")
def _verified_bundle(root: str, stamp: tuple) -> dict:
    from cbir.bundle import verify_bundle
    return verify_bundle(Path(root))


def datasets() -> dict[str, Dataset]:
    """Datasets described in the served cache, by dataset key (a bundle only once verified)."""
    return datasets_at(cache_root())


def broken_datasets(root: Path | None = None) -> list[str]:
    """One message per unreadable `dataset.json` in the cache at `root` (default: the served one)."""
    return _described(cache_root() if root is None else root)[1]


def datasets_at(root: Path) -> dict[str, Dataset]:
    """Datasets described in the cache or bundle at `root`; BundleError if it is a damaged bundle."""
    return _described(root)[0]


def _described(root: Path) -> tuple[dict[str, Dataset], list[str]]:
    _bundle_checked(root)
    stamp = tuple((p.parent.name, file_stamp(p)) for p in sorted(root.glob("*/dataset.json")))
    return _datasets(str(root), stamp)


@st.cache_resource(max_entries=4, show_spinner=False)
def _datasets(root: str, stamp: tuple) -> tuple[dict[str, Dataset], list[str]]:
    """Distractor sets are left out: they have no queries to show, and R1M's description
    alone (a million names) would take hundreds of MB."""
    broken: list[str] = []
    return list_datasets(Path(root), broken, skip=is_distractor_key), broken


def descriptor_methods(key: str) -> list[Method]:
    root = cache_root()
    stamp = tuple((p.parent.name, file_stamp(p)) for p in sorted((root / key).glob("*/manifest.json")))
    return _entries(str(root), key, stamp)


@st.cache_data(max_entries=16, show_spinner=False)
def _entries(root: str, key: str, stamp: tuple) -> list[Method]:
    return list_entries(Path(root), key)


def method_options(key: str) -> dict[str, Method]:
    """Every method the cache supports: each descriptor entry with each re-ranking (parameters
    capped to the database size, `cbir.evaluation.overview_methods`)."""
    n_images = len(datasets()[key].images)
    return {method_id(m): m for entry in descriptor_methods(key) for m in overview_methods(entry, n_images)}


def entry_identity(key: str, method: Method) -> tuple[str, str, str, int]:
    """(cache root, dataset key, descriptor slug, manifest mtime): what cached results depend on."""
    root = cache_root()
    slug = method.descriptor_key().slug()
    return str(root), key, slug, file_stamp(root / key / slug / "manifest.json")


def _descriptor(key: str, slug: str) -> Method:
    method = next((m for m in descriptor_methods(key) if m.slug() == slug), None)
    if method is None:
        raise CacheError(f"{cache_root() / key / slug}: no such cache entry")
    return method


def entry(key: str, method: Method) -> Entry:
    """The validated descriptors of `method` (float32); CacheError if the entry is defective."""
    return _entry(*entry_identity(key, method))


@st.cache_resource(max_entries=8, show_spinner="Loading descriptors...")
def _entry(root: str, key: str, slug: str, stamp: int) -> Entry:
    found = load_entry(Path(root), datasets()[key], _descriptor(key, slug))  # parsed from the hashed bytes
    return Entry(found.db.astype(np.float32, copy=False), found.queries.astype(np.float32, copy=False),
                 found.manifest, found.path)


def ranker(key: str, method: Method, k: int, gamma: float):
    """The diffusion graph of this method's database (built once per k, gamma)."""
    return _ranker(*entry_identity(key, method), k, gamma)


@st.cache_resource(max_entries=8, show_spinner="Building the diffusion graph...")
def _ranker(root: str, key: str, slug: str, stamp: int, k: int, gamma: float):
    from cbir.diffusion import DiffusionRanker
    from cbir.neighbours import neighbours_for
    found = entry(key, _descriptor(key, slug))
    return DiffusionRanker(found.db, k=k, gamma=gamma, neighbours=neighbours_for(found, k))


def spectral(key: str, method: Method, k: int, gamma: float, rank: int):
    """The FSR ranker of this method's database: the graph's top-`rank` eigenpairs, stored in the entry."""
    return _spectral(*entry_identity(key, method), k, gamma, rank)


@st.cache_resource(max_entries=8, show_spinner="Computing the graph's eigenpairs (once; stored in the cache)...")
def _spectral(root: str, key: str, slug: str, stamp: int, k: int, gamma: float, rank: int):
    from cbir.spectral import stored_spectral_ranker
    return stored_spectral_ranker(entry(key, _descriptor(key, slug)), k, gamma, rank)


def graph_ranker(key: str, method: Method):
    """What `cbir.rerank.rerank` reuses for `method`: its diffusion graph or FSR eigenpairs (None otherwise)."""
    if method.rerank == "diffusion":
        return ranker(key, method, method.k, method.gamma)
    if method.rerank == "fsr":
        return spectral(key, method, method.k, method.gamma, method.fsr_rank)
    return None


def ranks(key: str, method: Method) -> np.ndarray:
    """Full ranking (n_queries, n_db) of the database for every query under `method`."""
    return _ranks(*entry_identity(key, method), method)


@st.cache_resource(max_entries=32, show_spinner="Ranking...")
def _ranks(root: str, key: str, slug: str, stamp: int, method: Method) -> np.ndarray:
    from cbir.rerank import rerank
    found = entry(key, method)
    ranks = rerank(method, found.db, found.queries, ranker=graph_ranker(key, method))
    return ranks.astype(np.int32) if ranks.shape[1] < 2**31 else ranks  # half the memory of int64


def image_ranks(key: str, method: Method, index: int) -> np.ndarray:
    """Full ranking of the database for database image `index` used as the query (whole image)."""
    return _one_ranking(*entry_identity(key, method), method, "db", index)


def query_ranks(key: str, method: Method, q: int) -> np.ndarray:
    """Full ranking of the database for query `q` alone: a page showing one query never ranks
    all of them (thousands, when every image of a folder is a query). k-reciprocal re-ranks
    over all queries together, so its query ranking is that row of the all-query ranking
    (the one its reported AP comes from)."""
    if method.rerank == "kreciprocal":
        return ranks(key, method)[q]
    return _one_ranking(*entry_identity(key, method), method, "queries", q)


@st.cache_resource(max_entries=64, show_spinner="Ranking...")
def _one_ranking(root: str, key: str, slug: str, stamp: int, method: Method, side: str, index: int) -> np.ndarray:
    from cbir.rerank import rerank
    found = entry(key, method)
    rows = found.db if side == "db" else found.queries
    return rerank(method, found.db, rows[index:index + 1], ranker=graph_ranker(key, method))[0]


def report(key: str, method: Method, protocol: str) -> dict:
    """`cbir.metrics.evaluation_report` of the method's ranking under `protocol`."""
    return _report(*entry_identity(key, method), method, protocol)


@st.cache_data(max_entries=256, show_spinner=False)
def _report(root: str, key: str, slug: str, stamp: int, method: Method, protocol: str) -> dict:
    from cbir.metrics import evaluation_report
    return evaluation_report(ranks(key, method), datasets()[key], protocol)


def known_report(key: str, method: Method, protocol: str) -> dict | None:
    """The Overview's report of `method` as stored in the cache entry, or None if not computed yet."""
    from cbir.evaluation import report_path

    where = entry_identity(key, method)
    path = report_path(Path(where[0]) / key / where[2], method, protocol)
    return _known_report(*where, method, protocol, file_stamp(path))


@st.cache_data(max_entries=256, show_spinner=False)
def _known_report(root: str, key: str, slug: str, stamp: int, method: Method, protocol: str,
                  report_stamp: int) -> dict | None:
    from cbir.evaluation import read_stored_report
    return read_stored_report(Path(root) / key / slug, manifest(key, method), method, protocol)


def stored_report(key: str, method: Method, protocol: str, progress=None) -> dict:
    """`report`, read from the cache entry when computed before (a cold start then ranks
    nothing), else computed in query blocks (bounded memory, `progress(done, total, what)`)
    and stored there; kept in memory too, for a cache that cannot be written."""
    return _stored_report(*entry_identity(key, method), method, protocol, progress)


@st.cache_data(max_entries=256, show_spinner=False)
def _stored_report(root: str, key: str, slug: str, stamp: int, method: Method, protocol: str,
                   _progress=None) -> dict:
    from cbir.evaluation import blocked_report, stored_report as from_disk

    found = entry(key, method)
    dataset = datasets()[key]
    return from_disk(dataset, Path(root) / key / slug, manifest(key, method), method, protocol,
                     lambda: blocked_report(method, found.db, found.queries, dataset, protocol,
                                            ranker=graph_ranker(key, method), progress=_progress),
                     store=writable())


def manifest(key: str, method: Method) -> dict:
    """The entry's validated manifest (dimension, backbone, provenance) without loading its
    arrays; checksums are checked here unless a verified bundle already checked them."""
    return _manifest(*entry_identity(key, method), bundle_manifest() is None)


@st.cache_data(max_entries=64, show_spinner=False)
def _manifest(root: str, key: str, slug: str, stamp: int, verify: bool) -> dict:
    return checked_manifest(Path(root), datasets()[key], _descriptor(key, slug), verify)


def diffusion_grid(key: str, method: Method, protocol: str, kq: int, gamma: float) -> dict:
    """The mAP grid over (alpha, k) of `cbir.evaluation`: read from the entry, else computed and stored."""
    return _diffusion_grid(*entry_identity(key, method), protocol, kq, gamma)


@st.cache_data(max_entries=16, show_spinner="Computing the (alpha, k) grid of mAP (once; stored in the cache)...")
def _diffusion_grid(root: str, key: str, slug: str, stamp: int, protocol: str, kq: int, gamma: float) -> dict:
    from cbir.evaluation import stored_diffusion_grid
    return stored_diffusion_grid(datasets()[key], entry(key, _descriptor(key, slug)), protocol, kq=kq, gamma=gamma,
                                 store=writable())


def layouts(key: str, method: Method, k: int, gamma: float, alpha: float, compute: bool = False,
            recompute: bool = False, progress=None) -> dict[str, np.ndarray] | None:
    """The aligned before/after-diffusion layouts from the entry directory (`cbir.manifold`).

    Without `compute` or `recompute`, None when they are not stored yet: UMAP (seconds to
    minutes, and a slow import) runs only when the user asks for it.
    """
    from cbir.manifold import graph_key, layouts as computed, read_layouts

    found = entry(key, method)
    name = graph_key(k, gamma, alpha)
    in_memory = _computed_layouts()
    remembered = (*entry_identity(key, method), name)
    if not (compute or recompute):
        return read_layouts(found.db, found.path, name) or in_memory.get(remembered)
    result = computed(found.db, ranker(key, method, k, gamma).S, found.path, name, recompute=recompute,
                      progress=progress, alpha=alpha, store=writable())
    if not writable():
        in_memory[remembered] = result
    return result


@st.cache_resource(show_spinner=False)
def _computed_layouts() -> dict:
    """Layouts computed while serving a read-only bundle (they are never written into it)."""
    return {}


def writable() -> bool:
    """Whether results computed now may be stored in the cache: never into a served bundle."""
    return bundle_manifest() is None
