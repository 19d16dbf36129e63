"""`meta-opt data status|fetch`: which dataset files are present where, and downloads."""

from __future__ import annotations

import argparse
import sys

from meta_opt.data.cache import ChecksumError, DataUnavailableError, ensure_files, file_status
from meta_opt.data.checksums import OFFICIAL_FILES
from meta_opt.data.loaders import DATASETS

_BUILTIN = {
    "digits": "bundled with scikit-learn (no files needed)",
    "text": "standard library pydoc_data/topics.py (no files needed)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `status` and `fetch` actions and their options to `meta-opt data`'s parser."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    status = sub.add_parser("status", help="list datasets and their files, present or not")
    status.add_argument("--data-dir", default=None, help="folder searched first")
    fetch = sub.add_parser("fetch", help="download the files of a dataset (MD5-checked)")
    fetch.add_argument("name", choices=[*OFFICIAL_FILES, "all"], help="dataset to download")
    fetch.add_argument("--data-dir", default=None, help="folder to download into")


def status(data_dir=None, out=None) -> int:
    """Prints, for each dataset, each file's state and folder; returns 0, or 2 when a file
    cannot be read (then also said on stderr, with the fix)."""
    out = out or sys.stdout
    unreadable = []
    for name in DATASETS:
        if name in _BUILTIN:
            print(f"{name}: ok, {_BUILTIN[name]}", file=out)
            continue
        rows = file_status(name, data_dir)
        ok = sum(r["state"] == "ok" for r in rows)
        print(f"{name}: {ok}/{len(rows)} files present", file=out)
        for r in rows:
            print(f"  [{r['state']}] {r['file']}  md5 {r['md5']}  {r['path']}", file=out)
            if r["state"] == "unreadable":
                unreadable.append(r["error"])
    for error in unreadable:
        print(f"meta-opt data status: {error}", file=sys.stderr)
    return 2 if unreadable else 0


def fetch(name: str, data_dir=None, out=None) -> int:
    """Downloads the files of `name` (or of every dataset for 'all'); 1 if any failed."""
    out = out or sys.stdout
    names = list(OFFICIAL_FILES) if name == "all" else [name]
    code = 0
    for n in names:
        try:
            paths = ensure_files(n, data_dir)
        except (DataUnavailableError, ChecksumError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = 1
            continue
        for file, path in paths.items():
            print(f"{n}: {file} ok at {path}", file=out)
    return code


def main(args: argparse.Namespace) -> int:
    """Runs the parsed `meta-opt data` action; returns the process exit status."""
    if args.data_command == "status":
        return status(args.data_dir)
    return fetch(args.name, args.data_dir)
