"""Content-based image retrieval with CNN descriptors: data, descriptors, ranking, evaluation.

Importing `cbir` is cheap: torch, timm, faiss and umap are imported only by the
modules (and functions) that need them, so the dashboard starts without them.
"""
from .method import Method

__all__ = ["Method"]
__version__ = "0.1.0"
