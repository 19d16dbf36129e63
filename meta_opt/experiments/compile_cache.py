"""JAX's persistent compilation cache for the runner: a rerun or a resume skips compiling.

`meta-opt run` turns it on before anything compiles, in `--compile-cache DIR`, else
`$META_OPT_COMPILE_CACHE`, else `~/.cache/meta_opt/jax_cache` (`off` disables it). The
thresholds are lowered so that the runner's programs, which are small and compile in
well under JAX's default minimum of one second, are cached too. The cache holds XLA's
compiled executables, keyed by the program, the JAX version and the device; tracing and
lowering still run (a fraction of the compile time).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "META_OPT_COMPILE_CACHE"
DEFAULT = Path("~/.cache/meta_opt/jax_cache")
OFF = ("off", "none", "")


def cache_dir(requested: str | None = None) -> Path | None:
    """The cache folder to use: `requested`, else $META_OPT_COMPILE_CACHE, else the default;
    None when the value is 'off'."""
    value = requested if requested is not None else os.environ.get(ENV)
    if value is None:
        return DEFAULT.expanduser()
    if value.strip().lower() in OFF:
        return None
    return Path(value).expanduser()


def enable_compile_cache(requested: str | None = None) -> Path | None:
    """Turns the persistent cache on (unless 'off' or already configured); returns its folder.

    Takes effect only before the process's first compilation (JAX reads it once).
    """
    import jax

    if jax.config.jax_compilation_cache_dir:  # configured by the user: keep theirs
        return Path(jax.config.jax_compilation_cache_dir)
    path = cache_dir(requested)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


_COUNTS = {"hits": 0, "misses": 0}
_LISTENING = False


def _count(event: str, **kwargs) -> None:
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
        _COUNTS["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        _COUNTS["misses"] += 1


def cache_counts() -> dict[str, int]:
    """Persistent-cache hits and misses of this process so far (a compile phase reports the
    difference: how many of its programs came from the cache)."""
    global _LISTENING
    if not _LISTENING:
        import jax

        jax.monitoring.register_event_listener(_count)
        _LISTENING = True
    return dict(_COUNTS)
