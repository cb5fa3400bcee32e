"""`python -m cbir`: download, info, extract, evaluate.

Each sub-command is a thin wrapper over library functions; JSON goes to stdout,
progress and warnings to stderr. Errors the user can fix exit with status 2 and a
one-line message naming the file and the problem.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DATASETS = ("paris6k", "rparis6k", "oxford5k", "roxford5k", "folder", "csv")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CBIR_CACHE_DIR", "cache"))


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, type=Path, help="dataset folder")


# --- download (data helper) -------------------------------------------------

def cmd_download(args) -> int:
    from .download import download
    download(args.name, args.root)
    return 0


# --- info (data helper) -----------------------------------------------------

def cmd_info(args) -> int:
    from .data import load_dataset, dataset_summary
    print_json(dataset_summary(load_dataset(args.dataset, args.root)))
    return 0


# --- evaluate (extraction / diffusion helpers extend) -----------------------

def cmd_evaluate(args) -> int:
    raise NotImplementedError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cbir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="download a benchmark into ROOT")
    p.add_argument("name", choices=("paris6k", "rparis6k", "oxford5k", "roxford5k"))
    p.add_argument("--root", required=True, type=Path)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("info", help="describe a dataset as JSON")
    add_dataset_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("evaluate", help="evaluate a method, print JSON")
    add_dataset_args(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
