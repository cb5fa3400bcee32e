"""What one pass feeds the model: each distinct image once, equal sizes together.

A query that is a whole database image (folder and CSV datasets) is that image's row.
Images of equal size go through the model together, within a memory bound.

On a CPU with few cores decoding runs in the model's process (`cbir.extraction.default_workers`),
in a thread a few images ahead (`prefetched`): PIL's decoding and the runtime's forward both
release the GIL, so decoding fills the forward's idle moments instead of following it.

Images keep their own aspect (never cropped or distorted to batch), so only those
that come out of resizing with the same height and width share a batch: a folder
of small images, or a GPU, gets full batches; 1024 px photos of mixed aspect
mostly go one by one, as a batch of them would not fit the bound anyway.
"""
from __future__ import annotations

BATCH_PIXELS = 1 << 20   # input pixels per batch: 64 images of 128 x 128, one of 1024 x 768
MAX_BATCH = 32


class SizeBatcher:
    """Collects decoded (3, h, w) images by shape; `add` releases a group once it reaches the bound."""

    def __init__(self, max_pixels: int = BATCH_PIXELS, max_batch: int = MAX_BATCH):
        if max_pixels < 1 or max_batch < 1:
            raise ValueError(f"batch bounds must be positive, got {max_pixels} pixels, {max_batch} images")
        self.max_pixels, self.max_batch = max_pixels, max_batch
        self.pending: dict[tuple, list] = {}

    def add(self, index: int, image) -> list[tuple[list[int], object]]:
        shape = tuple(image.shape)
        group = self.pending.setdefault(shape, [])
        group.append((index, image))
        full = len(group) >= self.max_batch or (len(group) + 1) * shape[-1] * shape[-2] > self.max_pixels
        return [self._release(shape)] if full else []

    def flush(self) -> list[tuple[list[int], object]]:
        return [self._release(shape) for shape in list(self.pending)]

    def _release(self, shape) -> tuple[list[int], object]:
        """The group as one (B, 3, h, w) batch, channels-last in memory like the decoded pixels:
        stacking their (h, w, 3) views is a plain copy (one image: none), where stacking the
        (3, h, w) views transposed every image (0.8 ms for a 1024 px photo)."""
        import torch

        group = self.pending.pop(shape)
        images = [img.permute(1, 2, 0) for _, img in group]
        batch = images[0].unsqueeze(0) if len(images) == 1 else torch.stack(images)
        return [i for i, _ in group], batch.permute(0, 3, 1, 2)


def pass_items(dataset) -> tuple[list[tuple[str, tuple | None]], list[int]]:
    """The distinct (path, box) items to describe, and the item of every output row (database then
    queries): a query that is a whole database image is that image's row, described once."""
    items = [(str(dataset.image_path(i)), None) for i in range(len(dataset.images))]
    seen = {item: i for i, item in enumerate(items)}
    rows = list(range(len(items)))
    for q in range(len(dataset.queries)):
        bbox = dataset.queries[q].bbox
        item = (str(dataset.query_path(q)), tuple(bbox) if bbox is not None else None)
        if item not in seen:
            seen[item] = len(items)
            items.append(item)
        rows.append(seen[item])
    return items, rows


def row_items(dataset) -> list[tuple[str, tuple | None]]:
    """The (path, box) of every output row, database then queries (a repeated image repeated)."""
    items, rows = pass_items(dataset)
    return [items[r] for r in rows]


PREFETCH_DEPTH = 4


def prefetched(items, depth: int = PREFETCH_DEPTH):
    """`items[0], items[1], ...` in order, each computed (decoded) in a thread up to `depth` ahead.

    An exception in the thread is raised here at that item's place; leaving the loop early
    stops the thread before this generator closes."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(message) -> bool:
        while not stop.is_set():
            try:
                ready.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for i in range(len(items)):
                if not offer(("item", items[i])):
                    return
        except BaseException as exc:  # re-raised in the consumer, at this item
            offer(("error", exc))
            return
        offer(("done", None))

    thread = threading.Thread(target=produce, name="cbir-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
