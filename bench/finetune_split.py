"""Heads on Paris6k-250 split by landmark: mAP before / after and the training time.

Run: python -m bench.finetune_split [--root ../shared/data/paris6k-250] [--work /tmp/finetune-split]

Training view: a CSV of the images of defense, eiffel and invalides that the official
ground truth lists as positives of their landmark, labelled by landmark. Test view:
louvre and moulinrouge in the official layout (their queries, the official ground
truth restricted to the images present). The two share no image (the heads refuse
otherwise). Descriptors are cached under --work and reused by later runs.
"""
import argparse
import csv
import time
from pathlib import Path

import numpy as np

from cbir.data import load_dataset
from cbir.extraction import ensure_descriptors
from cbir.heads import TrainOptions, finetune
from cbir.metrics import evaluation_report
from cbir.method import Method

TRAIN = ("defense", "eiffel", "invalides")
TEST = ("louvre", "moulinrouge")


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_symlink():
        path.symlink_to(target.resolve())


def views(root: Path, work: Path) -> tuple[Path, Path]:
    """(training csv, test folder) under `work`, as symbolic links into `root`."""
    rows = []
    for landmark in TRAIN:
        link(root / "paris" / landmark, work / "train" / "paris" / landmark)
        positives = {n.strip() for f in (root / "paris_120310").glob(f"{landmark}_*_ok.txt")
                     for n in f.read_text().split()}
        present = sorted(p.stem for p in (root / "paris" / landmark).glob("*.jpg") if p.stem in positives)
        rows += [(f"paris/{landmark}/{name}.jpg", landmark, int(i == 0)) for i, name in enumerate(present)]
    with open(work / "train" / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "is_query"])
        writer.writerows(rows)
    for landmark in TEST:
        link(root / "paris" / landmark, work / "test" / "paris" / landmark)
    link(root / "paris_120310", work / "test" / "paris_120310")
    return work / "train" / "train.csv", work / "test"


def mean_ap(dataset, entry) -> float:
    scores = np.asarray(entry.queries, np.float32) @ np.asarray(entry.db, np.float32).T
    return evaluation_report(np.argsort(-scores, axis=1, kind="stable"), dataset, "original")["mAP"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=Path("../shared/data/paris6k-250"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-split"))
    args = parser.parse_args()
    train_csv, test_root = views(args.root, args.work)
    cache = args.work / "cache"
    train, test = load_dataset("csv", train_csv), load_dataset("paris6k", test_root)
    print(f"train: {len(train.images)} images of {', '.join(TRAIN)}; test: {test.status_line()}")
    for pooling in ("gem", "rmac"):
        base = Method(pooling=pooling)
        before = mean_ap(test, ensure_descriptors(test, base, cache))
        cells = []
        for kind in ("lw", "linear"):
            name = f"{kind}-{pooling}-split"
            started = time.perf_counter()
            head = finetune(train, base, cache, name, TrainOptions(kind=kind), transductive_of=test)
            wall = time.perf_counter() - started
            after = mean_ap(test, ensure_descriptors(test, Method(pooling=pooling, head=name), cache))
            cells.append(f"{kind} {after:.3f} (training {head.manifest['train_seconds']:.0f} s, "
                         f"with descriptors {wall:.0f} s, best epoch {head.manifest['history']['best_epoch']})")
        print(f"{base.label()}: before {before:.3f}; " + "; ".join(cells))


if __name__ == "__main__":
    main()
