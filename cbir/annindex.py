"""A persisted FAISS index over database + distractors, and the database-side kNN graph from it.

Diffusion needs every item's k = 50 nearest others. Over a benchmark plus a million
distractors exact search for them is 10^12 dot products per dimension, so an approximate
index (HNSW by default, IVF optional, or the exact `flat` for small sets and tests) is
built over the rows of the parts stacked in order (database first, then distractors) and
searched for each row. The rows are added 100k at a time, converted to float32 a block at
a time; when any part is float16 (the distractors usually are) an approximate index keeps
its vectors as float16 (faiss's fp16 scalar quantizer, exact for float16 rows), so neither
the parts nor the index exist whole in float32. The exact `flat` index keeps float32.

The graph is approximate: its recall@k against exact search is measured on a sample of
items and recorded with it. Index, graph and a sidecar `ann.json` (parameters, the source
descriptors' stamp, each file's size and sha256, build times, the recall) are one folder
written atomically beside the descriptors (`ann_dir`: the distractors' cache entry, named
after the database stacked with them). Before use the sidecar must match the parameters
asked for and the descriptors' stamp, and each file it names its checksum: a stale or
damaged folder is rebuilt, never used. A changed graph parameter (k, efSearch, nprobe)
reuses the stored index.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cache import CacheError, atomic_directory, sha256_file
from .ranking import without_self
from .topk import SEARCH_BLOCK, exact_topk

ANN_KINDS = ("hnsw", "ivf", "flat")
FORMAT = 1
INDEX_FILE, GRAPH_FILE, RECORD_FILE = "index.faiss", "graph.npz", "ann.json"
GRAPH_BLOCK = 8192  # rows searched at once for the graph


@dataclass(frozen=True)
class AnnParams:
    """How the index is built (`kind`, `hnsw_m`, `ef_construction`, `ivf_lists`, `seed`) and
    searched for the graph (`k`, `ef_search`, `nprobe`, `recall_sample` items measured)."""
    kind: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 64
    ivf_lists: int = 0  # 0: about sqrt(n), at most n / 39
    seed: int = 0
    k: int = 50
    ef_search: int = 128
    nprobe: int = 16
    recall_sample: int = 1000

    def __post_init__(self):
        if self.kind not in ANN_KINDS:
            raise ValueError(f"unknown index {self.kind!r}; choose one of {ANN_KINDS}")
        if min(self.hnsw_m, self.ef_construction, self.k, self.ef_search, self.nprobe, self.recall_sample) < 1 \
                or self.ivf_lists < 0:
            raise ValueError("hnsw_m, ef_construction, k, ef_search, nprobe and recall_sample must be at least 1, "
                             "ivf_lists at least 0")

    def index_params(self) -> dict:
        """The parameters the index itself depends on."""
        if self.kind == "hnsw":
            return {"kind": "hnsw", "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction}
        if self.kind == "ivf":
            return {"kind": "ivf", "ivf_lists": self.ivf_lists, "seed": self.seed}
        return {"kind": "flat"}

    def graph_params(self) -> dict:
        """The parameters the graph and its recall figure depend on, given the index."""
        search = {"hnsw": {"ef_search": self.ef_search}, "ivf": {"nprobe": self.nprobe}}.get(self.kind, {})
        return {"k": self.k, **search, "recall_sample": self.recall_sample, "seed": self.seed}

    def slug(self) -> str:
        """The index part as a folder-name part: `hnsw-M32-efc64`, `ivf-L0-s0`, `flat`."""
        if self.kind == "hnsw":
            return f"hnsw-M{self.hnsw_m}-efc{self.ef_construction}"
        if self.kind == "ivf":
            return f"ivf-L{self.ivf_lists}-s{self.seed}"
        return "flat"


def descriptor_stamp(*checksums: str, shapes: list[tuple[int, ...]]) -> str:
    """One stamp for the stacked parts: their checksums (e.g. the cache manifests' sha256 of
    db.npy) and shapes, in order."""
    h = hashlib.sha256()
    for checksum, shape in zip(checksums, shapes, strict=True):
        h.update(f"{checksum} {tuple(shape)};".encode())
    return h.hexdigest()


def array_stamp(*parts: np.ndarray) -> str:
    """`descriptor_stamp` of arrays not in the cache (sha256 of their dtype and bytes)."""
    sums = []
    for part in parts:
        h = hashlib.sha256(np.dtype(part.dtype).str.encode())
        for start in range(0, len(part), SEARCH_BLOCK):
            h.update(memoryview(np.ascontiguousarray(part[start:start + SEARCH_BLOCK])).cast("B"))
        sums.append(h.hexdigest())
    return descriptor_stamp(*sums, shapes=[p.shape for p in parts])


def stacked_rows(parts, ids: np.ndarray) -> np.ndarray:
    """float32 rows `ids` (global indices, in any order) of `parts` stacked in order, without stacking them."""
    ids = np.asarray(ids, np.int64)
    dim = np.shape(parts[0])[1]
    out = np.empty((len(ids), dim), np.float32)
    offset = 0
    for part in parts:
        inside = (ids >= offset) & (ids < offset + len(part))
        out[inside] = part[ids[inside] - offset]
        offset += len(part)
    if len(ids) and (ids.min() < 0 or ids.max() >= offset):
        raise ValueError(f"row indices must lie in [0, {offset}), got {ids.min()}..{ids.max()}")
    return out


def row_blocks(parts, block: int = SEARCH_BLOCK):
    """(global start, float32 rows) of the stacked parts, `block` rows at a time."""
    offset = 0
    for part in parts:
        for start in range(0, len(part), block):
            yield offset + start, np.ascontiguousarray(part[start:start + block], dtype=np.float32)
        offset += len(part)


def _check_parts(parts) -> tuple[int, int, bool]:
    """(rows, dimension, any part float16) of the parts; ValueError when they do not stack."""
    dims = {np.shape(p)[1] for p in parts if np.ndim(p) == 2}
    if len(dims) != 1 or any(np.ndim(p) != 2 for p in parts):
        raise ValueError(f"parts must be 2-D arrays of one dimension, got shapes {[np.shape(p) for p in parts]}")
    return sum(len(p) for p in parts), dims.pop(), any(np.asarray(p).dtype == np.float16 for p in parts)


def build_index(parts, params: AnnParams):
    """The faiss inner-product index over the stacked parts, and what was resolved (IVF cells,
    vector storage: float16 in an approximate index when any part is float16)."""
    import faiss

    n, dim, half = _check_parts(parts)
    half = half and params.kind != "flat"
    resolved = {"storage": "float16" if half else "float32"}
    if params.kind == "hnsw":
        if half:
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
    elif params.kind == "ivf":
        lists = params.ivf_lists or max(1, min(n // 39, int(np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        if half:
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(params.seed).choice(n, size=min(n, 64 * lists), replace=False))
        index.train(stacked_rows(parts, sample))
        resolved["ivf_lists"] = lists
    else:
        index = faiss.IndexFlatIP(dim)
    for _, rows in row_blocks(parts):
        index.add(rows)
    return index, resolved


def _set_search(index, params: AnnParams, k: int) -> None:
    import faiss

    if params.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = max(params.ef_search, k)
    elif params.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(params.nprobe, ivf.nlist)


def knn_graph(index, parts, params: AnnParams) -> tuple[np.ndarray, np.ndarray]:
    """`(sims, ids)` (n, k): every stacked row's k nearest others found by the index, by
    descending similarity; slots it could not fill hold -1 / -inf."""
    n, _, _ = _check_parts(parts)
    k = params.k
    if not 1 <= k < n:
        raise ValueError(f"graph k must lie in [1, n - 1] = [1, {n - 1}], got {k}")
    _set_search(index, params, k + 1)
    sims = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    for start, rows in row_blocks(parts, GRAPH_BLOCK):
        s, i = index.search(rows, k + 1)
        own = np.arange(start, start + len(rows))
        sims[own], ids[own] = without_self(s, i, own)
    sims[ids < 0] = -np.inf
    return sims, ids


def graph_recall(parts, ids: np.ndarray, sample: int, seed: int = 0) -> dict:
    """recall@k of neighbour lists `ids` (n, k) on `sample` items drawn at random: the share of
    each item's k exact nearest others (exact search over the stacked parts) that its list holds."""
    n, k = ids.shape
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    i, s = exact_topk(parts, stacked_rows(parts, chosen), k=k + 1)
    _, exact = without_self(s, i, chosen)
    found = [np.intersect1d(e, a[a >= 0]).size for e, a in zip(exact, ids[chosen])]
    return {"at": k, "value": float(np.sum(found) / (k * len(chosen))), "sample": int(len(chosen)), "seed": seed}


@dataclass
class AnnGraph:
    """The kNN graph of the stacked parts, from the persisted index, with its record (`ann.json`)."""
    sims: np.ndarray
    ids: np.ndarray
    record: dict
    status: str  # "loaded", "built", "rebuilt (why)" or "graph rebuilt from the stored index (why)"

    @property
    def recall(self) -> float:
        return self.record["graph"]["recall"]["value"]

    def describe(self) -> str:
        """"approximate kNN graph (HNSW M=32, efConstruction=64, efSearch=128; recall@50 0.973 on
        1000 sampled items)", or "exact kNN graph (flat index)"."""
        params = self.record["params"]
        recall = self.record["graph"]["recall"]
        measured = f"recall@{recall['at']} {recall['value']:.3f} on {recall['sample']} sampled items"
        if params["kind"] == "flat":
            return f"exact kNN graph (flat index; {measured})"
        if params["kind"] == "hnsw":
            how = (f"HNSW M={params['hnsw_m']}, efConstruction={params['ef_construction']}, "
                   f"efSearch={params['ef_search']}")
        else:
            how = f"IVF {self.record['index']['ivf_lists']} lists, nprobe={params['nprobe']}"
        return f"approximate kNN graph ({how}; {measured})"


def _source(parts, stamp: str) -> dict:
    n, dim, _ = _check_parts(parts)
    return {"stamp": stamp, "n": n, "dim": dim, "parts": [len(p) for p in parts]}


def read_record(directory: Path, parts, stamp: str, params: AnnParams) -> dict:
    """The sidecar once it describes an index of these parameters over these descriptors;
    CacheError saying why not (absent, unreadable, other parameters, stale descriptors)."""
    file = Path(directory) / RECORD_FILE
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        raise CacheError(f"{directory}: no index stored") from None
    except (OSError, ValueError) as exc:
        raise CacheError(f"{file}: unreadable ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CacheError(f"{file}: not an index record of format {FORMAT}")
    if record.get("source") != _source(parts, stamp):
        raise CacheError(f"{file}: stale, the index was built over other descriptors")
    stored = record.get("params")
    if not isinstance(stored, dict) or {k: stored.get(k) for k in params.index_params()} != params.index_params():
        raise CacheError(f"{file}: the index was built with other parameters")
    return record


def _verified(directory: Path, record: dict, part: str) -> Path:
    """The file of the record's `part` ("index" or "graph") once its size and sha256 match."""
    entry = record.get(part) or {}
    path = Path(directory) / str(entry.get("file"))
    if not path.is_file() or path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise CacheError(f"{path}: missing, truncated or modified (checksum mismatch)")
    return path


def load_graph(directory: Path, parts, stamp: str, params: AnnParams) -> AnnGraph:
    """The stored graph when it is valid for these descriptors and parameters; CacheError otherwise."""
    record = read_record(directory, parts, stamp, params)
    if {k: record["params"].get(k) for k in params.graph_params()} != params.graph_params():
        raise CacheError(f"{directory}: the graph was searched with other parameters")
    try:
        with np.load(_verified(directory, record, "graph"), allow_pickle=False) as stored:
            sims, ids = stored["sims"], stored["ids"]
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(f"{directory / GRAPH_FILE}: unreadable ({exc})") from exc
    if sims.shape != ids.shape or sims.shape != (record["source"]["n"], params.k):
        raise CacheError(f"{directory / GRAPH_FILE}: shape {sims.shape}, "
                         f"expected ({record['source']['n']}, {params.k})")
    return AnnGraph(sims, ids, record, "loaded")


def load_index(directory: Path, parts, stamp: str, params: AnnParams):
    """(faiss index, record) when the stored index is valid for these descriptors and index parameters."""
    import faiss

    record = read_record(directory, parts, stamp, params)
    path = _verified(directory, record, "index")
    try:
        return faiss.read_index(str(path)), record
    except RuntimeError as exc:
        raise CacheError(f"{path}: unreadable index ({' '.join(str(exc).split())[:200]})") from exc


def _save(directory: Path, index, record: dict, sims: np.ndarray, ids: np.ndarray) -> None:
    """Index, graph and sidecar as one folder, replaced whole (the sidecar names each file's checksum)."""
    import faiss

    with atomic_directory(Path(directory)) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        with open(tmp / GRAPH_FILE, "wb") as f:
            np.savez(f, sims=sims, ids=ids)
        for part, name in (("index", INDEX_FILE), ("graph", GRAPH_FILE)):
            record[part].update({"file": name, "bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)})
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))


def ensure_graph(directory: Path, parts, stamp: str, params: AnnParams = AnnParams(), progress=None) -> AnnGraph:
    """The kNN graph of the stacked parts: stored in `directory` when valid, else from the stored
    index (a graph parameter changed), else built with a new index; what is computed is stored
    (an unwritable folder only loses the copy on disk). `progress(done, total, stage)` is told
    of the three steps (index, neighbour search, recall) as they end."""
    stage = f"kNN graph over {_check_parts(parts)[0]} items (index, search, recall)"

    def say(done):
        if progress is not None:
            progress(done, 3, stage)

    try:
        return load_graph(directory, parts, stamp, params)
    except CacheError as exc:
        refused = str(exc)
    try:
        index, record = load_index(directory, parts, stamp, params)
        record["index"] = {k: v for k, v in record["index"].items() if k not in ("file", "bytes", "sha256")}
        status = f"graph rebuilt from the stored index ({refused})"
    except CacheError:
        status = "built" if refused.endswith("no index stored") else f"rebuilt ({refused})"
        say(0)
        start = time.perf_counter()
        index, resolved = build_index(parts, params)
        record = {"format": FORMAT, "source": _source(parts, stamp),
                  "index": {**resolved, "build_seconds": round(time.perf_counter() - start, 3)}}
    record["params"] = asdict(params)
    say(1)
    start = time.perf_counter()
    sims, ids = knn_graph(index, parts, params)
    seconds = time.perf_counter() - start
    say(2)
    record["graph"] = {"k": params.k, "search_seconds": round(seconds, 3),
                       "recall": graph_recall(parts, ids, params.recall_sample, params.seed)}
    record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    say(3)
    try:
        _save(directory, index, record, sims, ids)
    except OSError:
        pass
    return AnnGraph(sims, ids, record, status)
