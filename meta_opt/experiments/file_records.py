"""What a checkpoint records of the files written beside it, and the check made on resume.

A run directory is consistent by construction when its checkpoint is the authority on
what was done: every checkpoint records the metrics file as it was when the checkpoint
was taken (its number of complete lines and their SHA-256 digest, `LineLog.record`). On
resume the file must still start with exactly those lines: they are kept and everything
after them (lines of steps the checkpoint does not hold, a line torn by a kill) is cut.
A file that lost or changed lines is refused, naming it, rather than continued with a
silently wrong history (a table and summary built from what is left).

`meta-opt run` and `meta-opt meta-train` both keep their metrics.jsonl this way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from meta_opt.experiments.command_errors import CommandError


def complete_lines(data: bytes) -> list[bytes]:
    """The newline-terminated lines of `data` (a last line without newline was torn)."""
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    return lines


def lines_sha256(lines: list[bytes]) -> str:
    """Hex SHA-256 of the concatenated lines."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str | None:
    """Hex SHA-256 of a file's bytes, or None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verified_lines(path: Path, record: dict[str, Any], at: str, fix: str) -> list[bytes]:
    """The first `record["lines"]` complete lines of `path`, checked against `record`.

    Args:
      path: the file.
      record: what a checkpoint recorded (`{"lines": n, "sha256": hex}`; a record without
        `sha256`, from an older version, checks the count only).
      at: where the checkpoint is, for messages ("at global step 12").
      fix: what to do when the file does not match, for messages.

    Raises:
      CommandError: the file holds fewer lines, or other lines, than recorded.
    """
    want = int(record["lines"])
    try:
        lines = complete_lines(path.read_bytes()) if path.exists() else []
    except OSError as err:
        raise CommandError(f"cannot read {path} ({err.strerror or err}); {fix}") from err
    if len(lines) < want:
        raise CommandError(
            f"{path} holds {len(lines)} lines {at}, but the checkpoint recorded {want}: the "
            f"file lost lines. {fix}"
        )
    kept = lines[:want]
    if "sha256" in record and lines_sha256(kept) != record["sha256"]:
        raise CommandError(
            f"{path}: its first {want} lines are not the ones the checkpoint {at} recorded "
            f"(their SHA-256 differs): the file was changed. {fix}"
        )
    return kept


class LineLog:
    """An append-only file of lines whose count and digest are known at every moment.

    Args:
      path: the file.
      resume: the record to continue from (the file is checked against it and cut back to
        it, see `verified_lines`); None starts an empty file.
      at, fix: for the messages of `verified_lines`.
    """

    def __init__(self, path: str | Path, resume: dict[str, Any] | None = None, *,
                 at: str = "", fix: str = ""):
        self.path = Path(path)
        self._digest = hashlib.sha256()
        kept = [] if resume is None else verified_lines(self.path, resume, at, fix)
        data = b"".join(kept)
        if not self.path.exists() or self.path.stat().st_size != len(data):
            replace_atomically(self.path, data)
        self._digest.update(data)
        self.lines = len(kept)
        self._file = open(self.path, "ab")

    def append(self, line: str) -> None:
        """Appends one line (a newline is added) and flushes it to the OS."""
        data = (line + "\n").encode()
        self._file.write(data)
        self._file.flush()
        self._digest.update(data)
        self.lines += 1

    def record(self) -> dict[str, Any]:
        """What a checkpoint taken now records: `{"lines": n, "sha256": hex}`."""
        return {"lines": self.lines, "sha256": self._digest.hexdigest()}

    def close(self) -> None:
        """Closes the file."""
        self._file.close()
