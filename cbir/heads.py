"""Retrieval heads trained on frozen, cached descriptors: the study's fine-tuning, made cheap.

- `lw`: supervised learned whitening from matching pairs (Radenovic et al., the
  cnnimageretrieval `whitenlearn`): whiten the differences of matching pairs
  (P = inverse Cholesky factor of their covariance), then rotate by the PCA of the
  whitened, centred training data. Closed form. With fewer pairs than dimensions the
  pair covariance is singular, so it is shrunk towards a multiple of the identity
  (`shrinkage`; 0 is the exact closed form).
- `linear` / `mlp`: a projection trained with cnnimageretrieval's contrastive loss
  (`0.5 D^2` for the positive, `0.5 max(margin - D, 0)^2` per negative) on tuples
  (anchor, positive, hard negatives); the negatives are re-mined from the current
  head each epoch. `linear` starts from `lw` unless told otherwise.

Every head ends with L2. For R-MAC it applies to each regional MAC before the sum
(as regional whitening does), so it is trained through the aggregation; `lw` for
R-MAC learns its pair statistics from whole-image MACs (the last region) and its
rotation from all training regions. Model choice (best epoch, early stop) uses a
validation split of the training images' classes; the test set is never seen.
Heads live in `<cache>/heads/<name>/` (head.npz + manifest.json with checksums and
provenance; cbir.headstore loads and applies them, with numpy); training checkpoints
every epoch under `<cache>/heads/.partial/`. torch is imported only to train.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import atomic_directory, atomic_write_bytes, atomic_write_text, sha256_file
from .data import Dataset
from .headstore import (FORMAT, PARAMS_FILE, Head, check_name, check_overlap, head_dir, load_head,
                        training_record)
from .method import Method

HEAD_KINDS = ("lw", "linear", "mlp")
UNFREEZE = ("none", "last-stage")


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of a head; all of them are stored with it."""
    kind: str = "linear"
    epochs: int = 30
    margin: float = 0.7
    lr: float = 1e-4
    weight_decay: float = 1e-6
    batch: int = 16
    negatives: int = 5
    dim: int | None = None
    hidden: int = 1024
    shrinkage: float = 0.1
    init: str = "lw"
    val_fraction: float = 0.2
    patience: int = 10
    seed: int = 0
    unfreeze: str = "none"

    def check(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head {self.kind!r}; choose one of {HEAD_KINDS}")
        if self.init not in ("lw", "random"):
            raise ValueError(f"head init must be lw or random, got {self.init!r}")
        if self.epochs < 0 or self.batch < 1 or self.negatives < 1 or self.patience < 1:
            raise ValueError("epochs must be >= 0; batch, negatives and patience >= 1")
        if not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must lie in [0, 1], got {self.shrinkage}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"validation fraction must lie in (0, 1), got {self.val_fraction}")
        if self.unfreeze not in UNFREEZE:
            raise ValueError(f"unfreeze must be one of {UNFREEZE}, got {self.unfreeze!r}")
        if self.margin <= 0 or self.lr <= 0:
            raise ValueError("margin and learning rate must be positive")


# --- the closed form --------------------------------------------------------------

def matching_pairs(labels) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair (i < j) of items with the same label."""
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    return i[same], j[same]


def learn_lw(X: np.ndarray, qidx: np.ndarray, pidx: np.ndarray, shrinkage: float = 0.0,
             rotate_on: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) of Radenovic et al.'s learned whitening; apply as `(x - mean) @ projection.T`.

    mean = mean of the pair anchors X[qidx]; P = inv(chol(S)) for S the covariance of
    the pair differences X[qidx] - X[pidx] (shrunk: (1 - s) S + s tr(S)/d I); then the
    rows of P are rotated onto the principal axes of P (rotate_on - mean), `rotate_on`
    defaulting to X, in decreasing order of variance.
    """
    X = np.asarray(X, np.float64)
    if len(qidx) == 0:
        raise ValueError("learned whitening needs at least one matching pair (two items of one class)")
    mean = X[qidx].mean(axis=0)
    diff = X[qidx] - X[pidx]
    S = diff.T @ diff / len(diff)
    d = S.shape[0]
    if shrinkage:
        S = (1 - shrinkage) * S + shrinkage * np.trace(S) / d * np.eye(d)
    try:
        P = np.linalg.inv(np.linalg.cholesky(S))
    except np.linalg.LinAlgError:
        raise ValueError(f"the covariance of {len(diff)} matching-pair differences in {d} dimensions is "
                         "singular: raise the shrinkage (e.g. 0.1) or use more pairs") from None
    Y = (np.asarray(X if rotate_on is None else rotate_on, np.float64) - mean) @ P.T
    eigval, eigvec = np.linalg.eigh(Y.T @ Y)
    order = np.argsort(eigval)[::-1]
    return mean, eigvec[:, order].T @ P


# --- training ------------------------------------------------------------------------

def validation_split(labels, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of validation items: `fraction` of each class with at least 3 items (at least 1)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 7])
    val = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) >= 3:
            val[rng.choice(members, size=max(1, int(round(fraction * len(members)))), replace=False)] = True
    return val


def class_map(descriptors: np.ndarray, labels: np.ndarray, query_mask: np.ndarray) -> float:
    """mAP (reference AP) of the masked items as queries against all items, relevance = same
    label, the query itself left out."""
    from .metrics import compute_map

    queries = np.flatnonzero(query_mask)
    ranks = np.argsort(-(descriptors[queries] @ descriptors.T), axis=1, kind="stable")
    gnd = [{"ok": np.flatnonzero((labels == labels[q]) & (np.arange(len(labels)) != q)), "junk": [q]}
           for q in queries]
    return float(compute_map(ranks, gnd)["map"])


class Items:
    """Training vectors grouped by image: one per image (pooled) or all its regions (R-MAC)."""

    def __init__(self, vectors: np.ndarray, owner: np.ndarray, n: int):
        import torch

        order = np.argsort(owner, kind="stable")
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors[order], np.float32))
        self.owner = np.asarray(owner)[order]
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(self.owner, minlength=n))])
        self.n = n

    def describe(self, net, idx: np.ndarray):
        """Descriptors of images `idx` (in that order) through `net`, differentiable."""
        import torch

        counts = np.diff(self.offsets)[idx]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        out = torch.nn.functional.normalize(net(self.vectors[rows]), dim=1)
        if np.all(counts == 1):
            return out
        # Summing by an indicator matrix: index_add_ is 100x slower on small CPU tensors.
        members = torch.zeros(len(idx), len(rows))
        members[torch.from_numpy(np.repeat(np.arange(len(idx)), counts)), torch.arange(len(rows))] = 1
        return torch.nn.functional.normalize(members @ out, dim=1)


def build_net(options: TrainOptions, d_in: int, lw: tuple[np.ndarray, np.ndarray] | None):
    import torch
    from torch import nn

    d_out = options.dim or d_in
    if lw is not None and d_out > lw[1].shape[0]:
        raise ValueError(f"head dimension {d_out} exceeds the {lw[1].shape[0]} learned-whitening components")
    if options.kind == "mlp":
        net = nn.Sequential(nn.Linear(d_in, options.hidden), nn.ReLU(), nn.Linear(options.hidden, d_out))
    else:
        net = nn.Sequential(nn.Linear(d_in, d_out))
    if lw is not None and options.kind != "mlp":
        mean, projection = lw
        with torch.no_grad():
            net[0].weight.copy_(torch.from_numpy(projection[:d_out]))
            net[0].bias.copy_(torch.from_numpy(-(projection[:d_out] @ mean)))
    return net


def contrastive_loss(anchor, others, margin: float):
    """cnnimageretrieval's ContrastiveLoss per tuple: others[:, 0] positive, others[:, 1:] negatives."""
    import torch

    dist = torch.linalg.vector_norm(others - anchor[:, None, :], dim=2)
    loss = 0.5 * dist[:, 0] ** 2 + 0.5 * torch.clamp(margin - dist[:, 1:], min=0).pow(2).sum(dim=1)
    return loss.mean()


def mine_tuples(descriptors: np.ndarray, labels: np.ndarray, train: np.ndarray, negatives: int,
                rng: np.random.Generator) -> np.ndarray:
    """(n_anchor, 2 + negatives) rows (anchor, a random positive, the hardest negatives) over the
    training split, anchors shuffled; anchors without a positive are skipped."""
    members = np.flatnonzero(train)
    sims = descriptors[members] @ descriptors[members].T
    rows = []
    for a in rng.permutation(len(members)):
        same = labels[members] == labels[members[a]]
        positives = np.flatnonzero(same & (np.arange(len(members)) != a))
        others = np.flatnonzero(~same)
        if len(positives) == 0 or len(others) == 0:
            continue
        hardest = others[np.argsort(-sims[a, others], kind="stable")[:negatives]]
        if len(hardest) < negatives:
            hardest = np.resize(hardest, negatives)
        rows.append(np.concatenate([[a, rng.choice(positives)], hardest]))
    return members[np.asarray(rows, dtype=np.int64)] if rows else np.zeros((0, 2 + negatives), np.int64)


def _fingerprint(options: TrainOptions, method: Method, training: dict) -> str:
    blob = json.dumps([options.__dict__, method.to_dict(), training["images_sha1"],
                       training["content_sha1"]], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _checkpoint_path(cache_root: Path, name: str, fingerprint: str) -> Path:
    return Path(cache_root) / "heads" / ".partial" / f"{check_name(name)}-{fingerprint}" / "checkpoint.pt"


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # a checkpoint from another version or damaged: start over, never mix
        path.unlink(missing_ok=True)
        return None


def train_head(vectors: np.ndarray, owner: np.ndarray, labels, options: TrainOptions, *, pair_vectors=None,
               checkpoint: Path | None = None, progress=None, cancel=None, threads: int = 1) -> tuple[dict, dict]:
    """Train a head on frozen vectors of len(labels) images; (numpy params, history).

    `vectors` are one row per image (owner = arange) or every region of each image
    (`owner[r]` = its image). `pair_vectors` (one row per image) are what the closed form
    learns its pair statistics from (default: the images' descriptors, regions aggregated).
    With a `checkpoint` path, every epoch is saved atomically and a run finding a
    checkpoint resumes after its last epoch, ending with the same head (fixed seed).
    `progress(epoch, epochs, history)` is called after each epoch; it may raise to
    stop (as may setting `cancel`); the last checkpoint stays. One torch thread by default:
    the matrices are small, and on a busy machine thread barriers cost more than they give.
    """
    from .extraction import torch_threads

    with torch_threads(threads):
        return _train(vectors, owner, labels, options, pair_vectors, Path(checkpoint) if checkpoint else None,
                      progress, cancel)


def _train(vectors, owner, labels, options: TrainOptions, pair_vectors, checkpoint, progress, cancel):
    import torch

    options.check()
    labels = np.asarray(labels)
    val = validation_split(labels, options.val_fraction, options.seed)
    from .regionstore import aggregate

    plain = aggregate(vectors, owner, len(labels))
    lw = None
    if options.kind == "lw" or options.init == "lw":
        lw = learned_whitening(plain if pair_vectors is None else pair_vectors, labels, ~val, options.shrinkage,
                               rotate_on=vectors[~val[owner]])
    torch.manual_seed(options.seed)
    net = build_net(options, vectors.shape[1], lw)
    items = Items(vectors, owner, len(labels))
    return fit(net, lambda idx: items.describe(net, idx), labels, val, class_map(plain, labels, val), options,
               0 if options.kind == "lw" else options.epochs, checkpoint, progress, cancel)


def learned_whitening(pair_vectors: np.ndarray, labels: np.ndarray, train: np.ndarray, shrinkage: float,
                      rotate_on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`learn_lw` from the matching pairs of the training split."""
    qidx, pidx = matching_pairs(labels)
    keep = train[qidx] & train[pidx]
    return learn_lw(pair_vectors, qidx[keep], pidx[keep], shrinkage, rotate_on=rotate_on)


def fit(module, describe, labels: np.ndarray, val: np.ndarray, raw_val_map: float, options: TrainOptions,
        epochs: int, checkpoint: Path | None, progress, cancel) -> tuple[dict, dict]:
    """Contrastive training of `module`'s parameters; `describe(idx)` gives the (differentiable,
    L2-normalised) descriptors of training images idx. Returns the best epoch's state (numpy)
    by validation mAP and the history; checkpoints and resumes as `train_head` says."""
    import torch

    train = ~val
    if not val.any():
        raise ValueError("the validation split is empty: each class needs at least 3 images")
    everyone = np.arange(len(labels))

    def current() -> np.ndarray:
        with torch.no_grad():
            return describe(everyone).numpy()

    history = {"loss": [], "val_mAP": [class_map(current(), labels, val)], "raw_val_mAP": raw_val_map,
               "n_train": int(train.sum()), "n_val": int(val.sum()), "best_epoch": 0, "seconds": 0.0}
    best = {k: v.clone() for k, v in module.state_dict().items()}
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=options.lr,
                                 weight_decay=options.weight_decay)
    start_epoch = 1
    state = _load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        module.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        best, history = state["best"], json.loads(state["history"])
        start_epoch = int(state["epoch"]) + 1
    for epoch in range(start_epoch, epochs + 1):
        if epoch - 1 - history["best_epoch"] >= options.patience:
            break
        started = time.perf_counter()
        rng = np.random.default_rng([options.seed, epoch])
        tuples = mine_tuples(current(), labels, train, options.negatives, rng)
        if len(tuples) == 0:
            raise ValueError("no training tuples: the training split needs two classes with two images each")
        losses = []
        for b in range(0, len(tuples), options.batch):
            batch = tuples[b:b + options.batch]
            desc = describe(batch.ravel()).reshape(len(batch), batch.shape[1], -1)
            loss = contrastive_loss(desc[:, 0], desc[:, 1:], options.margin)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        history["loss"].append(float(np.mean(losses)))
        history["val_mAP"].append(class_map(current(), labels, val))
        if history["val_mAP"][-1] > history["val_mAP"][history["best_epoch"]]:
            history["best_epoch"] = epoch
            best = {k: v.clone() for k, v in module.state_dict().items()}
        history["seconds"] += time.perf_counter() - started
        if checkpoint:
            _save_checkpoint(checkpoint, {"epoch": epoch, "net": module.state_dict(),
                                          "optimiser": optimiser.state_dict(), "best": best,
                                          "history": json.dumps(history)})
        if progress:
            progress(epoch, epochs, history)
        if cancel is not None and cancel.is_set():
            raise KeyboardInterrupt(f"training cancelled after epoch {epoch}; the checkpoint is kept")
    return {k: v.numpy() for k, v in best.items()}, history


# --- the whole job: data, training, storage ---------------------------------------------

def training_vectors(dataset: Dataset, method: Method, cache_root: Path, progress=None, **options):
    """(vectors, owner, lw_pairs) of the training images: pooled descriptors, or all regions for R-MAC."""
    from .extraction import ensure_descriptors

    if method.pooling == "rmac":
        from .regionstore import ensure_regions

        regions = ensure_regions(dataset, method, cache_root, progress,
                                 **{k: options[k] for k in ("weights_file", "device") if k in options})
        vectors, owner = regions.items("db")
        whole = regions.offsets[1:len(dataset.images) + 1] - 1
        return vectors, owner, regions.vectors[whole]
    entry = ensure_descriptors(dataset, method, cache_root, progress, **options)
    db = np.asarray(entry.db, np.float32)
    return db, np.arange(len(db)), None


def finetune(dataset: Dataset, method: Method, cache_root: Path, name: str, options: TrainOptions, *,
             transductive_of: Dataset | None = None, progress=None, epoch_progress=None, cancel=None,
             **extraction) -> Head:
    """Train head `name` for `method` on the labelled `dataset` and store it with its provenance."""
    from . import __version__

    check_name(name)
    options.check()
    method = method.without_head().descriptor_key()
    method.check_head_base()
    if method.whitening != "none":
        raise ValueError("train heads on un-whitened descriptors: the head learns its own whitening")
    training = training_record(dataset)
    if len(training["classes"]) < 2:
        raise ValueError(f"{dataset.root}: training needs at least two classes, found {training['classes']}")
    if transductive_of is not None:
        check_overlap({"name": name, "training": training}, transductive_of)
    checkpoint = _checkpoint_path(cache_root, name, _fingerprint(options, method, training))
    if options.unfreeze == "last-stage":
        from .unfreeze import train_unfrozen

        started = time.perf_counter()
        params, history = train_unfrozen(dataset, method, options, checkpoint=checkpoint, progress=progress,
                                         epoch_progress=epoch_progress, cancel=cancel,
                                         weights_file=extraction.get("weights_file"))
    else:
        vectors, owner, pair_x = training_vectors(dataset, method, cache_root, progress, **extraction)
        started = time.perf_counter()
        params, history = train_head(vectors, owner, dataset.labels, options, pair_vectors=pair_x,
                                     checkpoint=checkpoint, progress=epoch_progress, cancel=cancel)
    weights = [v for k, v in params.items() if k.endswith("weight") and k.startswith(
        "head." if options.unfreeze != "none" else "")]
    manifest = {
        "format": FORMAT, "name": name, "kind": options.kind, "method": method.to_dict(),
        "method_label": method.label(), "training": training, "hyperparameters": options.__dict__,
        "loss": "contrastive (cnnimageretrieval), margin %g" % options.margin if options.kind != "lw"
        else "closed form (learned whitening from matching pairs)",
        "applied": "per region inside R-MAC, then sum and L2" if method.pooling == "rmac"
        else "on the pooled descriptor, then L2",
        "history": history, "train_seconds": round(time.perf_counter() - started, 3),
        "epoch_seconds": round(history["seconds"], 3),
        "unfreeze": options.unfreeze, "dim_in": int(weights[0].shape[1]), "dim_out": int(weights[-1].shape[0]),
        "versions": {"cbir": __version__, "numpy": np.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    with atomic_directory(head_dir(cache_root, name)) as tmp:
        (tmp / PARAMS_FILE).write_bytes(buffer.getvalue())
        manifest["files"] = {PARAMS_FILE: sha256_file(tmp / PARAMS_FILE)}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    checkpoint.unlink(missing_ok=True)
    try:
        checkpoint.parent.rmdir()
    except OSError:
        pass
    return load_head(cache_root, name)
