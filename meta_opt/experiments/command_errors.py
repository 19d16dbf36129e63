"""Errors a user can cause, as one or two lines: what was wrong, where, and what to do.

Commands turn the exceptions of the phases a user controls (reading the config, opening
the run directory, loading data, restoring a checkpoint) into a `CommandError` whose
message names the file, the value and the fix; `report` prints it without a traceback
and returns exit code 2. `--debug` re-raises instead, so the traceback is one flag away.
"""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator

EXIT_USAGE = 2


class CommandError(Exception):
    """A user error whose message is ready to print (exit code 2)."""


def short(err: BaseException, max_lines: int = 2) -> str:
    """The gist of `err`'s message in at most `max_lines` lines.

    Multi-line messages (e.g. the data layer's list of missing files) keep their first
    line and their last line that says what to do; indented detail lines and download
    errors are dropped.
    """
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    kept = [ln for ln in lines if not ln.startswith((" ", "\t", "Download errors"))]
    kept = kept or lines
    return "\n".join(kept if len(kept) <= max_lines else [kept[0], kept[-1]])


@contextlib.contextmanager
def user_errors(
    context: str, fix: str, kinds: tuple[type[BaseException], ...] = (OSError, ValueError)
) -> Iterator[None]:
    """Turns exceptions of `kinds` raised inside into `CommandError("context: msg; fix")`."""
    try:
        yield
    except CommandError:
        raise
    except kinds as err:
        text = short(err)
        raise CommandError(f"{context}: {text}" + (f"; {fix}" if fix else "")) from err


# What to do about the operating-system errors a user's environment causes.
_OS_FIXES = {
    errno.ENOSPC: "free disk space (or use another --out), then run the same command again "
    "to resume",
    errno.EDQUOT: "free disk space (or use another --out), then run the same command again "
    "to resume",
    errno.EACCES: "choose a folder you can write (--out) or fix its permissions",
    errno.EPERM: "choose a folder you can write (--out) or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another folder (--out)",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another folder (--out)",
}


@contextlib.contextmanager
def naming(path) -> Iterator[None]:
    """An OSError raised inside that names no file (a failed `write` does not) is raised
    again naming `path`, so the message can say which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def os_error(err: OSError, doing: str = "writing", fix: str = "") -> CommandError:
    """A `CommandError` for an operating-system error: the file, the reason and the fix.

    Args:
      err: the error (its `filename`, when set, is the file named).
      doing: what was being done ("writing", "reading").
      fix: what to do; default: by the error's kind (a full disk: free space and resume).
    """
    where = f" {err.filename}" if err.filename else ""
    reason = err.strerror or str(err) or type(err).__name__
    fix = fix or _OS_FIXES.get(err.errno, "fix that, then run the same command again")
    return CommandError(f"{doing}{where} failed: {reason}; {fix}")


def report(command: str, err: CommandError) -> int:
    """Prints `meta-opt COMMAND: message` to stderr; returns the exit code (2)."""
    print(f"meta-opt {command}: {err}", file=sys.stderr)
    return EXIT_USAGE
