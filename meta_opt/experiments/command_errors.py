"""Errors a user can cause, as one or two lines: what was wrong, where, and what to do.

Commands turn the exceptions of the phases a user controls (reading the config, opening
the run directory, loading data, restoring a checkpoint) into a `CommandError` whose
message names the file, the value and the fix; `report` prints it without a traceback
and returns exit code 2. `--debug` re-raises instead, so the traceback is one flag away.
"""

from __future__ import annotations

import contextlib
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


def report(command: str, err: CommandError) -> int:
    """Prints `meta-opt COMMAND: message` to stderr; returns the exit code (2)."""
    print(f"meta-opt {command}: {err}", file=sys.stderr)
    return EXIT_USAGE
