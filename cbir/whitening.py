"""PCA whitening of descriptors, learned on a labelled set of descriptors.

Learning it on the test database itself is transductive; the caller says where it
was learned (`learned_on`) and the label travels with the saved whitening. Full
whitening divides each principal component by eigenvalue^0.5, partial whitening
by eigenvalue^0.25 (often better for retrieval: it damps rather than equalises).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FULL_POWER = 0.5
PARTIAL_POWER = 0.25
# Components whose variance is below this fraction of the largest are numerical noise
# (e.g. fewer training vectors than dimensions); whitening them would blow them up.
RELATIVE_EIGENVALUE_FLOOR = 1e-9


@dataclass(frozen=True)
class Whitening:
    """x -> projection @ (x - mean), then L2; `projection` rows are eigenvectors / eigenvalue^power."""

    mean: np.ndarray
    projection: np.ndarray
    power: float
    learned_on: str

    @property
    def dim(self) -> int:
        return int(self.projection.shape[0])

    def project(self, X: np.ndarray) -> np.ndarray:
        """Centre and project, without the final L2 normalisation."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"whitening learned on {self.learned_on!r} expects (n, {self.mean.shape[0]}) "
                             f"descriptors, got shape {X.shape}")
        return (X - self.mean) @ self.projection.T


def learn_whitening(X: np.ndarray, power: float = FULL_POWER, dim: int | None = None,
                    learned_on: str = "") -> Whitening:
    """PCA whitening of the rows of X, keeping at most `dim` components (all non-degenerate ones by default)."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"whitening needs at least 2 descriptors as an (n, d) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"whitening training descriptors ({learned_on!r}) contain NaN or infinity")
    if power <= 0:
        raise ValueError(f"whitening power must be positive, got {power}")
    if dim is not None and not 1 <= dim <= X.shape[1]:
        raise ValueError(f"whitening dimension must lie in [1, {X.shape[1]}], got {dim}")
    # Many more vectors than dimensions (regional whitening): eigh of the covariance is far faster.
    solver = "covariance_eigh" if X.shape[0] >= X.shape[1] else "full"
    pca = PCA(n_components=min(X.shape), svd_solver=solver).fit(X)
    eigenvalues = pca.explained_variance_
    keep = int((eigenvalues > RELATIVE_EIGENVALUE_FLOOR * eigenvalues[0]).sum())
    if dim is not None:
        keep = min(keep, dim)
    projection = pca.components_[:keep] / eigenvalues[:keep, None] ** power
    return Whitening(mean=pca.mean_, projection=projection, power=float(power), learned_on=learned_on)


def apply_whitening(X: np.ndarray, W: Whitening) -> np.ndarray:
    """Centre, project and L2-normalise: float32 unit rows, ready for dot-product search."""
    Y = W.project(X)
    norms = np.linalg.norm(Y, axis=1, keepdims=True)
    return (Y / np.maximum(norms, 1e-12)).astype(np.float32)


def save_whitening(W: Whitening, path: Path) -> None:
    """Write an .npz atomically (no pickles: the label is stored as a unicode array)."""
    from .cache import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, mean=W.mean, projection=W.projection, power=np.float64(W.power),
             learned_on=np.str_(W.learned_on))
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_whitening(path: Path) -> Whitening:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            W = Whitening(mean=data["mean"], projection=data["projection"],
                          power=float(data["power"]), learned_on=str(data["learned_on"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: whitening file not found") from None
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ValueError(f"{path}: not a whitening file ({exc})") from exc
    if W.mean.ndim != 1 or W.projection.ndim != 2 or W.projection.shape[1] != W.mean.shape[0]:
        raise ValueError(f"{path}: inconsistent whitening shapes mean {W.mean.shape}, "
                         f"projection {W.projection.shape}")
    return W
