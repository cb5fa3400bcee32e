"""`python -m cbir`: download, info, extract, evaluate, finetune, bundle, report.

Each sub-command is a thin wrapper over library functions; JSON goes to stdout,
progress and warnings to stderr. Errors the user can fix exit with status 2 and a
one-line message naming the file and the problem.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

DATASETS = ("paris6k", "rparis6k", "oxford5k", "roxford5k", "folder", "csv", "sfm120k")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CBIR_CACHE_DIR", "cache"))


def default_protocol(dataset) -> str:
    """original for Paris6k/Oxford5k, medium for the revisited ones, else the dataset's only one."""
    return next((p for p in ("original", "medium") if p in dataset.gnd), next(iter(dataset.gnd)))


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, type=Path, help="dataset folder")


# --- download (data helper) -------------------------------------------------

def cmd_download(args) -> int:
    from .download import download
    print_json(download(args.name, args.root, base_url=args.base_url))
    return 0


# --- info (data helper) -----------------------------------------------------

def cmd_info(args) -> int:
    from .data import load_dataset, dataset_summary
    print_json(dataset_summary(load_dataset(args.dataset, args.root)))
    return 0


# --- evaluate (extraction / diffusion helpers extend) -----------------------

def add_method_args(p: argparse.ArgumentParser, many_poolings: bool) -> None:
    """The descriptor part of a method (see cbir.method.Method) and where its cache lives."""
    from .method import POOLINGS, PRECISIONS, SINGLE_SCALE, WHITENINGS
    from .runtime import RUNTIMES

    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    if many_poolings:
        p.add_argument("--pooling", nargs="+", choices=POOLINGS, default=list(POOLINGS),
                       help="one forward pass serves them all")
    else:
        p.add_argument("--pooling", choices=POOLINGS, default="rmac")
    p.add_argument("--size", type=int, default=1024, help="max image side in px (only downscales)")
    p.add_argument("--weights", choices=("imagenet", "random"), default="imagenet")
    p.add_argument("--weights-file", type=Path, help="local weights for the backbone")
    p.add_argument("--whiten", choices=WHITENINGS, default="none")
    p.add_argument("--whiten-on", default="",
                   help="dataset key or name the whitening is learned on (default: the test "
                        "database itself, which is transductive)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default $CBIR_CACHE_DIR or ./cache)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage type of newly extracted descriptors")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="forward runtime (default: openvino on a CPU when installed, else torch)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="forward precision; bf16 is part of the method name and cache key")
    p.add_argument("--scales", type=scale_list, default=SINGLE_SCALE,
                   help="comma-separated image scales, e.g. 1,0.7071,0.5 (default 1)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where descriptors are computed: this process, or Ray Data (requirements-scale.txt)")
    p.add_argument("--address", default=None, help="--engine ray: the cluster's address (default: a local Ray)")
    p.add_argument("--actors", type=int, default=None,
                   help="--engine ray: model actors (default: one per GPU, else one per node)")


def scale_list(text: str) -> tuple[float, ...]:
    """`1,0.7071,0.5` -> (1.0, 0.7071, 0.5); argparse turns the ValueError into a one-line error."""
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be comma-separated numbers, got {text!r}") from None
    if min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def methods_from_args(args, poolings: list[str]) -> list:
    from .method import Method

    return [Method(backbone=args.backbone, pooling=p, size=args.size, weights=args.weights,
                   whitening=args.whiten, whiten_on=args.whiten_on if args.whiten != "none" else "",
                   precision=args.precision, scales=args.scales)
            for p in poolings]


def tqdm_progress():
    """A progress(done, total, stage) callback drawing one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    bars = {}

    def progress(done: int, total: int, stage: str) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", file=sys.stderr,
                                     dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


def extraction_options(args) -> dict:
    engine = None
    if args.engine == "ray":
        from .distributed import RayEngine

        engine = RayEngine(args.address, args.actors, args.threads)
    elif args.address is not None:
        raise ValueError("--address applies to --engine ray")
    return {"progress": tqdm_progress(), "device": args.device, "workers": args.workers,
            "threads": args.threads, "dtype": args.dtype, "weights_file": args.weights_file,
            "runtime": args.runtime, "engine": engine}


def warn_skipped(dataset) -> None:
    """Name on stderr every image and query the dataset leaves out, and why."""
    for bad in dataset.unreadable:
        print(f"warning: skipped unreadable image {bad.get('name')}: {bad.get('error')}", file=sys.stderr)
    dropped = dataset.dropped_queries
    if dropped:
        print(f"warning: {len(dropped)} of {dataset.n_queries_total} queries skipped: "
              + "; ".join(f"{d['name']} ({d['source']}: {d['reason']})" for d in dropped), file=sys.stderr)


# --- extract -------------------------------------------------------------------

def cmd_extract(args) -> int:
    from .data import load_dataset
    from .distractors import distractors_from_args
    from .evaluation import store_overview_reports
    from .extraction import extract

    cache = args.cache or default_cache_dir()
    options = extraction_options(args)  # refuses a missing engine before the dataset is read
    progress = options.pop("progress")
    distractors = distractors_from_args(args)
    dataset = load_dataset(args.dataset, args.root)
    print(f"{dataset.name}: {dataset.status_line()}", file=sys.stderr)
    warn_skipped(dataset)
    try:
        entries = extract(dataset, methods_from_args(args, args.pooling), cache, progress, **options)
        if distractors is not None:
            print(f"{distractors.name}: {distractors.status_line()}", file=sys.stderr)
            extract(distractors, methods_from_args(args, args.pooling), cache, progress, **options)
    except KeyboardInterrupt:
        print("\ninterrupted: completed chunks are kept in the cache; run the same command to resume",
              file=sys.stderr)
        return 130
    for entry in entries.values():  # the dashboard then opens on stored results
        store_overview_reports(dataset, entry, progress=progress)
    print_json({"dataset": dataset.name, "status": dataset.status_line(),
                "skipped": dataset.unreadable, "entries": [
                    {"method": m.label(), "path": str(e.path), "n_images": int(e.db.shape[0]),
                     "n_queries": int(e.queries.shape[0]), "dim": int(e.db.shape[1]), "dtype": str(e.db.dtype),
                     "extraction_seconds": e.manifest.get("extraction_seconds"),
                     "images_per_second": e.manifest.get("images_per_second")}
                    for m, e in entries.items()]})
    return 0


# --- evaluate ------------------------------------------------------------------

def load_dataset_fast(name: str, root: Path, cache: Path):
    """The dataset; from the cache's verified description when the files listed are the same,
    so a warm-cache evaluate does not decode every image again."""
    from .cache import cached_dataset
    from .data import load_dataset

    return cached_dataset(cache, load_dataset(name, root, verify_images=False)) or load_dataset(name, root)


def cmd_evaluate(args) -> int:
    from .distractors import distractors_from_args, evaluate_against
    from .evaluation import blocked_report, store_overview_reports, stored_report
    from .extraction import ensure_descriptors
    from .spectral import stored_ranker

    cache = args.cache or default_cache_dir()
    dataset = load_dataset_fast(args.dataset, args.root, cache)
    warn_skipped(dataset)
    protocol = args.protocol or default_protocol(dataset)
    if protocol not in dataset.gnd:
        raise ValueError(f"{args.root}: dataset {dataset.name!r} has no protocol {protocol!r}; "
                         f"available: {', '.join(dataset.gnd)}")
    (method,) = methods_from_args(args, [args.pooling])
    if args.transductive and not args.head:
        raise ValueError("--transductive applies to a trained head: pass --head NAME as well")
    method = replace(method, head=args.head or "", head_transductive=args.transductive)
    method = method.with_rerank(args.rerank, **rerank_params(args, len(dataset.images)), qe_n=args.qe_n)
    distractors = distractors_from_args(args)
    options = extraction_options(args)
    progress = options.pop("progress")
    entry = ensure_descriptors(dataset, method, cache, progress, **options)
    if distractors is not None:
        from .annindex import AnnParams

        report = evaluate_against(dataset, entry, method, distractors, cache, protocol, args.topk, progress,
                                  ann=AnnParams(kind=args.ann, k=method.k), truncate=args.truncate,
                                  thumbnails=args.thumbnails, **options)
        print_json({"method": method.label(), "method_key": method.to_dict(), "status": dataset.status_line(),
                    "distractors_status": distractors.status_line(), "cache_entry": str(entry.path), **report})
        return 0
    report = stored_report(dataset, entry.path, entry.manifest, method, protocol, lambda: blocked_report(
        method, entry.db, entry.queries, dataset, protocol, ranker=stored_ranker(entry, method), progress=progress))
    store_overview_reports(dataset, entry, progress=progress)  # the dashboard then opens on stored results
    head = {"head": entry.manifest.get("head")} if method.head else {}
    print_json({"method": method.label(), "method_key": method.to_dict(),
                "whitening": entry.manifest.get("whitening"), **head,
                "status": dataset.status_line(), "cache_entry": str(entry.path),
                "skipped": dataset.unreadable, "skipped_queries": dataset.dropped_queries, **report})
    return 0


def rerank_params(args, n_images: int) -> dict:
    """The graph (diffusion, FSR) and k-reciprocal parameters of `add_rerank_args`; the FSR
    rank is capped at the database size (full rank), so labels say what was computed."""
    return {"alpha": args.alpha, "k": args.k, "kq": args.kq, "gamma": args.gamma,
            "fsr_rank": min(args.rank, n_images),
            "k1": args.k1, "k2": args.k2, "kr_lambda": args.kr_lambda}


def add_rerank_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.99, help="diffusion / FSR alpha")
    p.add_argument("--k", type=int, default=50, help="diffusion / FSR graph neighbours")
    p.add_argument("--kq", type=int, default=10, help="diffusion / FSR query neighbours")
    p.add_argument("--gamma", type=float, default=3.0, help="diffusion / FSR similarity exponent")
    p.add_argument("--rank", type=int, default=256, help="FSR: eigenpairs of the graph kept (stored in the cache)")
    p.add_argument("--k1", type=int, default=20, help="k-reciprocal: neighbours of the reciprocal sets")
    p.add_argument("--k2", type=int, default=6, help="k-reciprocal: local query expansion neighbours")
    p.add_argument("--lambda", dest="kr_lambda", type=float, default=0.3,
                   help="k-reciprocal: weight of the original distance")


# --- finetune ------------------------------------------------------------------

def epoch_bar(epochs: int):
    """A progress(epoch, epochs, history) callback: one tqdm bar of epochs with loss and validation mAP."""
    from tqdm import tqdm

    bar = tqdm(total=epochs, desc="epochs", unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def progress(epoch: int, total: int, history: dict) -> None:
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", val_mAP=f"{history['val_mAP'][-1]:.3f}")
        bar.update(epoch - bar.n)
        if epoch >= total:
            bar.close()

    return progress


def cmd_finetune(args) -> int:
    from .data import load_dataset
    from .heads import TrainOptions, finetune

    cache = args.cache or default_cache_dir()
    if args.whiten != "none":
        raise ValueError("--whiten: a head is trained on un-whitened descriptors (it learns its own whitening)")
    dataset = load_dataset(args.dataset, args.root)
    test = load_dataset(args.test_dataset, args.test_root) if args.test_dataset else None
    (method,) = methods_from_args(args, [args.pooling])
    options = TrainOptions(kind=args.head, epochs=args.epochs, margin=args.margin, lr=args.lr, batch=args.batch,
                           negatives=args.negatives, dim=args.dim, hidden=args.hidden, shrinkage=args.shrinkage,
                           init=args.init, val_fraction=args.val_fraction, patience=args.patience, seed=args.seed,
                           unfreeze=args.unfreeze)
    extraction = extraction_options(args)
    try:
        head = finetune(dataset, method, cache, args.name, options, transductive_of=test,
                        progress=extraction.pop("progress"),
                        epoch_progress=None if args.head == "lw" else epoch_bar(args.epochs), **extraction)
    except KeyboardInterrupt:
        print("\ninterrupted: the last epoch's checkpoint is kept; run the same command to resume",
              file=sys.stderr)
        return 130
    m = head.manifest
    print_json({"head": head.name, "kind": head.kind, "method": m["method_label"],
                "evaluate_with": f"--head {head.name}", "trained_on": m["training"]["dataset"],
                "training_root": m["training"]["root"], "classes": m["training"]["classes"],
                "dim_in": m["dim_in"], "dim_out": m["dim_out"], "train_seconds": m["train_seconds"],
                "epoch_seconds": m["epoch_seconds"],
                "best_epoch": m["history"]["best_epoch"], "raw_val_mAP": m["history"]["raw_val_mAP"],
                "val_mAP": m["history"]["val_mAP"], "loss": m["history"]["loss"],
                "path": str(cache / "heads" / head.name)})
    return 0


# --- bundle and report ----------------------------------------------------------

def cached_dataset_by(cache: Path, name: str):
    """The one dataset of this name in the cache (the key when several copies are cached)."""
    from .cache import list_datasets

    found = list_datasets(cache)
    matches = {k: d for k, d in found.items() if name in (k, d.name)}
    if len(matches) != 1:
        options = ", ".join(found) or "none"
        raise ValueError(f"{cache}: {len(matches)} cached datasets match {name!r} "
                         f"(cached: {options}); name one by its key")
    return next(iter(matches.values()))


def cached_methods(cache: Path, dataset, slugs: list[str] | None) -> list:
    """Cached descriptor methods of `dataset`, all or those whose slug is listed."""
    from .cache import dataset_key, list_entries

    available = {m.slug(): m for m in list_entries(cache, dataset_key(dataset))}
    if not slugs:
        return list(available.values())
    unknown = [s for s in slugs if s not in available]
    if unknown:
        raise ValueError(f"not in the cache for {dataset_key(dataset)}: {', '.join(unknown)}; "
                         f"cached: {', '.join(available) or 'none'}")
    return [available[s] for s in slugs]


def cmd_bundle(args) -> int:
    from .bundle import build_bundle

    cache = args.cache or default_cache_dir()
    dataset = cached_dataset_by(cache, args.dataset)
    methods = cached_methods(cache, dataset, args.methods)
    manifest = build_bundle(cache, dataset, methods, args.out, reduce=args.reduce,
                            thumb_size=args.thumb_size, layouts=not args.no_layouts,
                            progress=tqdm_progress(), distractors=not args.no_distractors)
    largest = max(manifest["files"].items(), key=lambda item: item[1]["bytes"])
    print_json({"bundle": str(args.out), "files": len(manifest["files"]),
                "total_bytes": manifest["total_bytes"],
                "total_mib": round(manifest["total_bytes"] / 2**20, 1),
                "largest_file": {"path": largest[0], "bytes": largest[1]["bytes"]},
                "methods": [m["backbone"] + "-" + m["pooling"] for m in manifest["methods"]],
                "distractor_evaluations": manifest["distractor_evaluations"]})
    return 0


def cmd_demo(args) -> int:
    from .demo import build_demo

    manifest = build_demo(args.root, args.out, args.cache, progress=tqdm_progress())
    print_json({"demo": str(args.out), "files": len(manifest["files"]),
                "total_mib": round(manifest["total_bytes"] / 2**20, 2),
                "methods": len(manifest["methods"])})
    return 0


def cmd_report(args) -> int:
    from .report import finetuning_markdown, finetuning_rows, rows_csv, study_tables, to_csv, to_markdown

    cache = args.cache or default_cache_dir()
    dataset = cached_dataset_by(cache, args.dataset)
    protocol = args.protocol or default_protocol(dataset)
    methods = []
    for method in cached_methods(cache, dataset, args.methods):
        methods.append(method)
        if method.pooling == "rmac":
            methods += [method.with_rerank(r, **rerank_params(args, len(dataset.images)))
                        for r in ("diffusion", "fsr", "kreciprocal")]
    tables = study_tables(dataset, cache, methods, protocol)
    markdown = to_markdown(tables, dataset, protocol)
    heads = finetuning_rows(dataset, cache, methods, protocol)
    if heads:
        markdown += "\n" + finetuning_markdown(heads)
    if args.out:
        from .cache import atomic_write_text

        atomic_write_text(args.out.with_suffix(".md"), markdown)
        atomic_write_text(args.out.with_suffix(".csv"), to_csv(tables))
        if heads:
            atomic_write_text(args.out.with_name(args.out.name + "-finetuning.csv"), rows_csv(heads))
    print(markdown)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cbir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="download a benchmark into ROOT")
    p.add_argument("name", choices=("paris6k", "rparis6k", "oxford5k", "roxford5k", "revisitop1m"))
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--base-url", help="fetch every file as BASE_URL/<file name> (a mirror); "
                   "default: $CBIR_DOWNLOAD_BASE, else the official hosts")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("info", help="describe a dataset as JSON")
    add_dataset_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("extract", help="compute and cache descriptors (one pass, several poolings)")
    add_dataset_args(p)
    add_method_args(p, many_poolings=True)
    from .distractors import add_distractor_args

    add_distractor_args(p, evaluates=False)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("evaluate", help="evaluate a method, print JSON")
    add_dataset_args(p)
    add_method_args(p, many_poolings=False)
    from .method import RERANKINGS

    p.add_argument("--protocol", default=None, help="default: original, else medium")
    p.add_argument("--rerank", choices=RERANKINGS, default="none")
    add_rerank_args(p)
    p.add_argument("--qe-n", type=int, default=10, help="query expansion neighbours")
    p.add_argument("--head", default=None, help="a head trained with `finetune` (its name)")
    p.add_argument("--transductive", action="store_true",
                   help="allow a head trained on some of these images (the method is labelled transductive)")
    from .distractors import add_distractor_args

    add_distractor_args(p, evaluates=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", help="train a retrieval head on the cached descriptors of a labelled "
                       "training dataset (classes: folder or csv)")
    add_dataset_args(p)
    add_method_args(p, many_poolings=False)
    from .heads import HEAD_KINDS, UNFREEZE, TrainOptions

    defaults = TrainOptions()
    p.add_argument("--head", required=True, choices=HEAD_KINDS,
                   help="lw: learned whitening (closed form); linear / mlp: contrastive training")
    p.add_argument("--name", required=True, help="the head's name in the cache (evaluate --head NAME)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--margin", type=float, default=defaults.margin, help="contrastive loss margin")
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=defaults.batch, help="tuples per step")
    p.add_argument("--negatives", type=int, default=defaults.negatives, help="hard negatives per tuple")
    p.add_argument("--dim", type=int, default=None, help="output dimension (default: the input's)")
    p.add_argument("--hidden", type=int, default=defaults.hidden, help="mlp hidden width")
    p.add_argument("--shrinkage", type=float, default=defaults.shrinkage,
                   help="lw: shrink the pair covariance towards the identity (0 = exact closed form)")
    p.add_argument("--init", choices=("lw", "random"), default=defaults.init, help="linear head start")
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                   help="share of each training class held out to choose the epoch")
    p.add_argument("--patience", type=int, default=defaults.patience,
                   help="stop after this many epochs without a better validation mAP")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--unfreeze", choices=UNFREEZE, default="none",
                   help="last-stage: fine-tune the backbone's last stage with the head, from the images "
                        "(for a GPU; the default trains the head alone on cached descriptors)")
    p.add_argument("--test-dataset", choices=DATASETS, help="refuse now if it shares images with the training set")
    p.add_argument("--test-root", type=Path)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("bundle", help="package cached descriptors, thumbnails, grids, layouts and "
                                      "distractor evaluations for sharing")
    p.add_argument("--dataset", required=True, help="cached dataset: name (e.g. paris6k) or cache key")
    p.add_argument("--methods", nargs="*", help="descriptor slugs (default: every cached one)")
    p.add_argument("--out", required=True, type=Path, help="new folder for the bundle")
    p.add_argument("--reduce", default="float16", help="float16 (default) or pca:DIM")
    p.add_argument("--thumb-size", type=int, default=256, help="thumbnail max side in px")
    p.add_argument("--no-layouts", action="store_true", help="skip the UMAP layouts (minutes each)")
    p.add_argument("--no-distractors", action="store_true",
                   help="leave out the stored evaluations against distractors (their top-K lists and thumbnails)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default $CBIR_CACHE_DIR or ./cache)")
    p.set_defaults(func=cmd_bundle)

    from .demo import DEMO_DIR

    p = sub.add_parser("demo", help="rebuild the embedded demo bundle from the Paris6k-250 subset")
    p.add_argument("--root", required=True, type=Path, help="the Paris6k-250 folder (../shared/data/paris6k-250)")
    p.add_argument("--out", type=Path, default=DEMO_DIR, help="new folder for the demo (default demo/paris6k-250; move the old one away)")
    p.add_argument("--cache", type=Path, default=Path("cache"), help="cache for the full-precision descriptors")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="the seed study's three tables for the cached methods (Markdown, CSV)")
    p.add_argument("--dataset", required=True, help="cached dataset: name (e.g. paris6k) or cache key")
    p.add_argument("--methods", nargs="*", help="descriptor slugs (default: every cached one)")
    p.add_argument("--protocol", default=None, help="default: original, else medium")
    p.add_argument("--out", type=Path, help="also write OUT.md and OUT.csv")
    add_rerank_args(p)
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default $CBIR_CACHE_DIR or ./cache)")
    p.set_defaults(func=cmd_report)
    return parser


def error_line(exc: BaseException) -> str:
    """One line naming the file and what to do, for any error a user can meet."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
        if exc.errno == errno.ENOSPC:
            text += ("; free disk space and run the same command again (completed chunks are kept "
                     "and resumed; stale temporaries of dead runs are reclaimed)")
    else:
        text = str(exc)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
