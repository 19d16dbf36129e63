"""Where dataset files live, and how they get there: lookup, MD5 checks, atomic downloads.

Candidate folders for dataset NAME, in order: `<data_dir>/NAME` (and `<data_dir>` itself)
for an explicit `data_dir`, then `$META_OPT_DATA/NAME`, then `~/.cache/meta_opt/NAME`.
A file is used only when its MD5 matches; a missing or mismatching file is downloaded into
the first candidate folder (temporary file, MD5 check, atomic rename), so a half-written or
corrupted file is never picked up.

A download has an overall deadline (`DOWNLOAD_DEADLINE_S` for a file, all its URLs
together) on top of the per-operation socket timeout, so a server that accepts and never
answers, or one that trickles bytes, fails in bounded time with a message instead of
hanging; progress (bytes received, of how many) is printed to stderr while it runs.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from meta_opt.data.checksums import FileSpec, file_specs

ENV_VAR = "META_OPT_DATA"
DEFAULT_ROOT = Path("~/.cache/meta_opt")
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_DEADLINE_S = 600.0
PROGRESS_EVERY_S = 2.0


class DataUnavailableError(FileNotFoundError):
    """Dataset files are missing and could not be downloaded."""


class ChecksumError(ValueError):
    """A dataset file exists but its MD5 differs from the expected one."""


class UnreadableFileError(OSError):
    """A dataset file exists but cannot be read (e.g. its permissions)."""


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Root folders searched for dataset files, highest priority first."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    roots.append(DEFAULT_ROOT.expanduser())
    return roots


def candidate_dirs(dataset: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders where the files of `dataset` are looked for, highest priority first."""
    dirs = [root / dataset for root in data_roots(data_dir)]
    if data_dir is not None:
        # Convenience: a data_dir that already is the dataset folder.
        dirs.insert(1, Path(data_dir).expanduser())
    return dirs


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks.

    Raises:
      UnreadableFileError: the file cannot be read (the message names it and the fix).
    """
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(chunk_size), b""):
                digest.update(chunk)
    except OSError as err:
        raise UnreadableFileError(
            err.errno, f"cannot read {path} ({err.strerror or err}); make it readable "
            f"(e.g. chmod u+r), or delete it and run `meta-opt data fetch`", str(path)
        ) from err
    return digest.hexdigest()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _urlopen(url: str, timeout: float):
    """The one place that touches the network (tests replace it to forbid that)."""
    return urllib.request.urlopen(url, timeout=timeout)


def download(spec: FileSpec, folder: Path, timeout: float = DOWNLOAD_TIMEOUT_S,
             deadline: float = DOWNLOAD_DEADLINE_S,
             report: Callable[[str], None] = _stderr) -> Path:
    """Downloads `spec` into `folder`, trying its URLs in order; atomic and MD5-checked.

    Each blocking network operation gets at most `timeout` seconds and the whole file (all
    URLs together) at most `deadline` seconds, so a dead or stalled mirror fails instead
    of hanging. Progress lines go to `report` (stderr by default): one when a URL is
    tried, then the bytes received every few seconds. The bytes go to a temporary file in
    `folder` that is renamed onto the final name only after its MD5 matched.

    Raises:
      OSError: no URL delivered a file with the expected MD5 in time (messages of every
        attempt).
    """
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    end = time.monotonic() + deadline
    for url in spec.urls:
        left = end - time.monotonic()
        if left <= 0:
            errors.append(f"{url}: not tried, the {deadline:.0f} s deadline had passed")
            continue
        report(f"downloading {spec.name} from {url} (at most {deadline:.0f} s in all)")
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=folder)
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, _urlopen(url, min(timeout, left)) as response:
                total = response.headers.get("Content-Length") if hasattr(
                    response, "headers") else None
                of = f" of {_megabytes(int(total))}" if total and total.isdigit() else ""
                received, last_report = 0, time.monotonic()
                while True:
                    if time.monotonic() > end:
                        raise TimeoutError(f"the download took more than {deadline:.0f} s "
                                           f"({_megabytes(received)}{of} received)")
                    # read1: what has arrived (read(n) would wait for all n bytes).
                    read = getattr(response, "read1", response.read)
                    chunk = read(1 << 16)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                        report(f"  {spec.name}: {_megabytes(received)}{of}")
                        last_report = time.monotonic()
            if digest.hexdigest() != spec.md5:
                errors.append(f"{url}: MD5 {digest.hexdigest()} != expected {spec.md5}")
                continue
            final = folder / spec.name
            os.replace(tmp, final)
            report(f"  {spec.name}: done ({_megabytes(received)})")
            return final
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets...
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError(f"could not download {spec.name}: " + "; ".join(errors))


def find_file(spec: FileSpec, dirs: list[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The first file named `spec.name` in `dirs` with the right MD5, and the bad ones seen."""
    bad = []
    for d in dirs:
        path = d / spec.name
        if path.is_file():
            found = md5sum(path)
            if found == spec.md5:
                return path, bad
            bad.append((path, found))
    return None, bad


def ensure_files(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    download_missing: bool = True,
) -> dict[str, Path]:
    """Paths of every file of `dataset`, each with a verified MD5; downloads what is missing.

    Raises:
      ChecksumError: a file is present only with a wrong MD5 and no good copy could be
        downloaded (the message gives expected and found MD5s and what to do).
      DataUnavailableError: files are missing and could not be downloaded; the message
        names each file, its MD5, its URLs and the folder to put it in.
    """
    dirs = candidate_dirs(dataset, data_dir)
    target = dirs[0]
    paths, missing, corrupted, failures = {}, [], [], []
    for spec in file_specs(dataset, checksums):
        path, bad = find_file(spec, dirs)
        if path is None and download_missing:
            try:
                path = download(spec, target)
            except OSError as e:
                failures.append(str(e))
        if path is None:
            (corrupted if bad else missing).append((spec, bad))
        else:
            paths[spec.name] = path
    if corrupted:
        lines = [
            f"  {p}: MD5 {found}, expected {spec.md5}"
            for spec, bad in corrupted
            for p, found in bad
        ]
        raise ChecksumError(
            f"dataset '{dataset}': files with a wrong MD5 (never used):\n"
            + "\n".join(lines)
            + f"\nReplace them with the official files (or delete them and run "
            f"`meta-opt data fetch {dataset}`); for your own files pass `checksums=`."
            + ("\nDownload errors: " + "; ".join(failures) if failures else "")
        )
    if missing:
        lines = [
            f"  {spec.name}  md5 {spec.md5}  url {' | '.join(spec.urls)}" for spec, _ in missing
        ]
        raise DataUnavailableError(
            f"dataset '{dataset}': missing files (looked in {', '.join(map(str, dirs))}):\n"
            + "\n".join(lines)
            + f"\nPut them, unchanged, into {target} (or set ${ENV_VAR}, or pass data_dir), "
            f"or run `meta-opt data fetch {dataset}` where there is internet."
            + ("\nDownload errors: " + "; ".join(failures) if failures else "")
        )
    return paths


def file_status(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
) -> list[dict]:
    """For each file of `dataset`: name, expected MD5, state ('ok'/'missing'/'bad md5'/
    'unreadable'), path (and, when unreadable, `error`: why and what to do)."""
    dirs = candidate_dirs(dataset, data_dir)
    rows = []
    for spec in file_specs(dataset, checksums):
        try:
            path, bad = find_file(spec, dirs)
        except UnreadableFileError as err:
            rows.append(dict(file=spec.name, md5=spec.md5, state="unreadable",
                             path=err.filename, error=err.strerror))
            continue
        if path is not None:
            rows.append(dict(file=spec.name, md5=spec.md5, state="ok", path=str(path)))
        elif bad:
            rows.append(dict(file=spec.name, md5=spec.md5, state="bad md5", path=str(bad[0][0])))
        else:
            rows.append(
                dict(file=spec.name, md5=spec.md5, state="missing", path=str(dirs[0] / spec.name))
            )
    return rows
