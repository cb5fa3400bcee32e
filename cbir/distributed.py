"""Extraction on Ray Data, for collections one machine would take days over (R1M at 1024 px).

The local extractor's semantics, elsewhere: the missing chunks of a pass are a Ray
dataset (one row a chunk); Ray tasks read, decode and resize a chunk's images, and an
actor pool (one actor per GPU, or per CPU share) runs the model on them with the same
batching (`cbir.chunks`), so the descriptors are bitwise those of the in-process run on
the same device and runtime. The driver writes each returned chunk as a shard into the
cache's partial folder as it arrives; the entry is then assembled, checksummed and
published atomically by `cbir.extraction`. A killed job resumes from the shards it wrote,
and Ray re-runs the chunks of a worker that died.

Without an address a local Ray instance is started (`LOCAL_CPUS` CPUs), so it runs and is
tested on one machine. Ray is an optional dependency (requirements-scale.txt).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ENGINES = ("local", "ray")
LOCAL_CPUS = 2
# Scheduling shares, not limits: decoding tasks run beside the model actors. They differ so
# that Ray Data does not fuse decoding into the actors.
DECODE_CPUS = 0.25
ACTOR_CPUS = 0.5
# On a local instance, decoding tasks at once per model actor. Ray would otherwise start one per
# free quarter CPU share: on 2 cores four decoding processes preempt the forward's threads
# (each stall holds the other thread at the next barrier), and Ray ran at 0.64x the
# in-process extractor on Paris6k-250 photos against 0.98x at steady state with one per actor
# (bench/scale.py --photos). On a cluster (an address) Ray schedules decoding over its CPUs.
LOCAL_DECODE_TASKS_PER_ACTOR = 1


def import_ray():
    """Ray with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is a separate extra)
    except ImportError as exc:
        raise RuntimeError(f"--engine ray needs Ray Data ({exc}); install it: "
                           "pip install -r requirements-scale.txt") from None
    return ray


def start_ray(address: str | None):
    """The connected Ray module: to `address`, else a local instance (started once per process)."""
    ray = import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            package_parent = str(Path(__file__).resolve().parents[1])
            ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"env_vars": {"PYTHONPATH": package_parent}})
    return ray


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def decode_chunk(row: dict, size: int) -> dict:
    """A Ray task: the chunk's images decoded and resized as the local extractor does them."""
    from .extraction import load_image

    items = json.loads(row["items"])
    try:
        images = {f"i{k}": np.array(load_image(path, size, tuple(box) if box else None), dtype=np.uint8)
                  for k, (_, path, box) in enumerate(items)}
        error = ""
    except ValueError as exc:
        images, error = {}, f"{exc}; it is listed in the dataset, so the dataset changed on disk: reload it"
    return {"chunk": row["chunk"], "items": row["items"], "pixels": npz_bytes(images), "error": error}


class ChunkActor:
    """Holds the model; describes whole chunks (a Ray Data actor, one per GPU or CPU share)."""

    def __init__(self, spec: dict, heads, region_quota: int, n_db: int, threads: int):
        import torch

        from .chunks import ChunkDescriber
        from .runtime import make_forward, runtime_backbone, torch_threads_beside

        torch.set_num_threads(torch_threads_beside(spec["runtime"], threads))
        device = torch.device(spec["device"])
        backbone = runtime_backbone(spec["runtime"], spec["backbone_name"], spec["weights"], spec["weights_file"],
                                    device, Path(spec["cache_root"]), heads[0].method.size)
        forward = make_forward(spec["runtime"], backbone, device, cache_root=Path(spec["cache_root"]),
                               size=heads[0].method.size, precision=heads[0].method.precision, threads=threads)
        self.describer = ChunkDescriber(heads, backbone, forward, device, batch_pixels=spec["batch_pixels"],
                                        region_quota=region_quota, n_db=n_db)

    def __call__(self, batch: dict) -> dict:
        import torch

        out = {"chunk": [], "arrays": [], "n": [], "error": []}
        for chunk, items, pixels, error in zip(batch["chunk"], batch["items"], batch["pixels"], batch["error"]):
            arrays = b""
            if not error:
                indices = [item[0] for item in json.loads(items)]
                images = npz_arrays(pixels)
                with torch.inference_mode():
                    for k, index in enumerate(indices):
                        tensor = torch.from_numpy(images[f"i{k}"]).permute(2, 0, 1)
                        self.describer.add(index, tensor, k == len(indices) - 1)
                arrays = npz_bytes(self.describer.chunk_arrays(range(indices[0], indices[-1] + 1)))
            out["chunk"].append(int(chunk))
            out["arrays"].append(arrays)
            out["n"].append(0 if error else len(indices))
            out["error"].append(error)
        return {"chunk": np.array(out["chunk"]), "arrays": np.array(out["arrays"], dtype=object),
                "n": np.array(out["n"]), "error": np.array(out["error"])}


def default_actors(ray) -> int:
    """One model actor per GPU; without GPUs one per node, with that node's cores as threads: on
    one 2-core machine a single actor ran Paris6k-250 photos at 0.84x the in-process extractor,
    two splitting the cores at 0.56x (bench/scale.py --photos)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


@dataclass
class RayEngine:
    """`extract(..., engine=RayEngine(address, actors))`: the pass's missing chunks computed on Ray."""
    address: str | None = None
    actors: int | None = None  # None: `default_actors`
    threads: int | None = None
    spec: dict = field(default_factory=dict)
    name = "ray"

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--actors must be at least 1, got {self.actors}")
        import_ray()

    def for_group(self, **spec) -> "RayEngine":
        """This engine bound to one pass's backbone, weights, runtime and device."""
        return replace(self, spec=spec)

    def __call__(self, run, items, chunk_ids, *, heads, region_quota, n_db, progress, stage, resumed, total):
        ray = start_ray(self.address)
        chunk_size = self.spec["chunk_size"]
        rows = [{"chunk": c, "items": json.dumps([[i, *items[i]] for i in
                                                   range(c * chunk_size, min(len(items), (c + 1) * chunk_size))])}
                for c in chunk_ids]
        gpu = self.spec["device"] == "cuda"
        actors = self.actors or default_actors(ray)
        threads = self.threads or max(1, int(ray.cluster_resources().get("CPU", LOCAL_CPUS)) // actors)
        described = (ray.data.from_items(rows, override_num_blocks=len(rows))
                     .map(decode_chunk, fn_kwargs={"size": heads[0].method.size}, num_cpus=DECODE_CPUS,
                          concurrency=None if self.address else LOCAL_DECODE_TASKS_PER_ACTOR * actors)
                     .map_batches(ChunkActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                                  num_cpus=ACTOR_CPUS, num_gpus=1 if gpu else 0,
                                  fn_constructor_kwargs={"spec": {**self.spec, "cache_root": str(self.spec["cache_root"])},
                                                         "heads": heads, "region_quota": region_quota,
                                                         "n_db": n_db, "threads": threads}))
        done, last = resumed, time.perf_counter()
        for row in described.iter_rows():  # wall time between shards, so images/s is the job's
            if row["error"]:
                raise RuntimeError(row["error"])
            now = time.perf_counter()
            run.save_chunk(int(row["chunk"]), npz_arrays(row["arrays"]), now - last)
            last = now
            done += int(row["n"])
            if progress:
                progress(done, total, f"{stage} (ray, {actors} actors)")
