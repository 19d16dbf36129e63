"""`meta-opt run [CONFIG] [--set KEY=VALUE ...] [--out DIR] [--parallel N | --ray]`: a sweep.

Every pair of the sweep is trained in `OUT/<experiment_name>/<index>_<optimizer_name>/`;
a directory that already holds the same pair resumes (or is skipped when complete). Pairs
of one structure (equal but for numeric hyperparameters and seed) run together as one
compiled program (`grouping.py`, `program.py`). After the sweep a comparison table is
printed and plots are written. SIGINT/SIGTERM checkpoint the running pairs, print how to
resume and exit non-zero (130 / 143); a second Ctrl-C aborts at once (a checkpoint being
written is finished first) and exits 130.

Errors a user can cause (a bad config or config file, a damaged run directory, an
unwritable `--out`, a full disk, missing data) print one or two lines naming the file,
the value and the fix, and exit 2; `--debug` shows the traceback instead. The processes
of `--parallel` die with their parent (they checkpoint and exit when it is gone).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from meta_opt.experiments.command_errors import CommandError, os_error, report
from meta_opt.optimizers.config import ConfigError

EXIT_CONFIG = 2
EXIT_FAILED = 1
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `meta-opt run`."""
    parser.add_argument("config", nargs="?", default=None,
                        help="Python file whose get_config() returns (ExperimentConfig, "
                             "OptimizerConfig) pairs; omit for the built-in default comparison")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a field: experiment.FIELD=V (every pair), "
                             "optimizer.FIELD=V (every pair whose optimizer has FIELD), "
                             "NAME.FIELD=V (pairs using optimizer NAME, e.g. MetaOpt.H=3) or "
                             "pairN.FIELD=V (pair N's optimizer); V parsed as JSON, else a "
                             "string; repeatable")
    parser.add_argument("--out", default="runs", help="output folder (default: runs/)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N pairs at once, each in its own process")
    parser.add_argument("--only", default=None, metavar="I[,J...]",
                        help="run only these pair indices (comma separated)")
    parser.add_argument("--restart", action="store_true",
                        help="delete existing run directories of these pairs and start over")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (honours WANDB_MODE=offline)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-plots", action="store_true", help="skip writing plots at the end")
    parser.add_argument("--list", action="store_true",
                        help="print the pairs of the sweep (after --set) and exit")
    parser.add_argument("--ray", action="store_true",
                        help="run each group of pairs as a Ray task (cluster from RAY_ADDRESS, "
                             "else a local one); needs a shared filesystem and the same "
                             "environment")
    parser.add_argument("--max-group", type=int, default=64, metavar="N",
                        help="run at most N pairs of one structure (equal but for numeric "
                             "hyperparameters and seed) as one program; 1 runs each pair "
                             "alone (default: 64)")
    parser.add_argument("--compile-cache", default=None, metavar="DIR",
                        help="JAX's persistent compilation cache, so a rerun skips compiling "
                             "(default: $META_OPT_COMPILE_CACHE, else "
                             "~/.cache/meta_opt/jax_cache; 'off' disables it)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error instead of its message")
    parser.add_argument("--position", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)


class _StopFlag:
    """Set by SIGINT/SIGTERM; the run loop polls it between compiled chunks."""

    def __init__(self):
        self.signum: int | None = None
        self.children: list[subprocess.Popen] = []

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum, frame) -> None:
        """Records the signal and forwards it to the child processes; a second SIGINT
        raises KeyboardInterrupt (a checkpoint being written is finished first)."""
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
        self.signum = signum
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the end of "
              f"the current chunk (Ctrl-C again to abort without saving)", file=sys.stderr)


def load_pairs(args):
    """The sweep (CONFIG, or the built-in default) as written, before overrides."""
    from meta_opt.experiments.sweep import as_sweep, read_sweep

    if args.config is None:
        from meta_opt.experiments.default_sweep import get_config

        return as_sweep(get_config(), where="the default sweep")
    return read_sweep(args.config)


def _selected(args, n: int) -> list[int]:
    if args.only is None:
        return list(range(n))
    try:
        chosen = [int(x) for x in args.only.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"--only expects comma-separated pair indices, got {args.only!r}") from e
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--only: pair indices {bad} out of range; the sweep has {n} pairs "
                          f"(0..{n - 1})")
    return chosen


def precheck(pairs) -> None:
    """Fails fast, before any compiling, on configs that cannot run here.

    Checks the device mesh and that each workload's data can be loaded (a missing dataset
    file is reported now, not after other pairs have trained). The workloads it builds are
    cached: the runs use them.
    """
    from meta_opt.experiments.workload import make_run_mesh, workload_for

    for exp_cfg, _ in pairs:
        make_run_mesh(exp_cfg)
        try:
            workload_for(exp_cfg)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 (loader errors carry the how-to-fix message)
            raise ConfigError(f"cannot load the data of workload '{exp_cfg.workload_name}' "
                              f"(data_dir={exp_cfg.data_dir!r}): {e}") from e


def _check_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "--wandb needs the wandb package, which is not installed; install it with "
            "`pip install wandb` (WANDB_MODE=offline logs without a network), or drop --wandb"
        ) from e


def _check_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "--ray needs the ray package, which is not installed; install it with "
            "`pip install 'meta_opt[ray]'`, or use --parallel N on one machine"
        ) from e


def run_dir_of(out: str, index: int, exp_cfg, opt_cfg) -> Path:
    """The run directory of pair `index`: OUT/<experiment_name>/<index>_<optimizer>."""
    from meta_opt.experiments.sweep import pair_name

    return Path(out) / exp_cfg.experiment_name / pair_name(index, opt_cfg)


def resume_command(args) -> str:
    """The command line that resumes this sweep."""
    parts = ["meta-opt", "run"]
    if args.config:
        parts.append(args.config)
    for item in args.overrides:
        parts += ["--set", item]
    parts += ["--out", args.out]
    if args.parallel > 1:
        parts += ["--parallel", str(args.parallel)]
    if args.ray:
        parts.append("--ray")
    if args.only is not None:
        parts += ["--only", args.only]
    if args.max_group != 64:
        parts += ["--max-group", str(args.max_group)]
    if args.compile_cache is not None:
        parts += ["--compile-cache", args.compile_cache]
    return shlex.join(parts)


def _child_command(args, indices: list[int], position: int,
                   parent_pid: int | None = None) -> list[str]:
    """The `meta-opt run --only I,J,... --child` command of one group of pairs; with
    `parent_pid`, the child dies with that process (see `die_with_parent`)."""
    cmd = [sys.executable, "-m", "meta_opt.cli", "run"]
    if args.config:
        cmd.append(args.config)
    for item in args.overrides:
        cmd += ["--set", item]
    cmd += ["--out", args.out, "--only", ",".join(map(str, indices)), "--child",
            "--no-plots", "--position", str(position), "--max-group", str(args.max_group)]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    if args.compile_cache is not None:
        cmd += ["--compile-cache", args.compile_cache]
    for flag in ("restart", "wandb", "no_progress"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    return cmd


def _run_parallel(args, units: list[list[int]], stop: _StopFlag,
                  on_done) -> dict[int, int]:
    """Runs each group of pairs as its own `meta-opt run --only I,J,...` process, N at a
    time; `on_done(indices, code)` is called as each one ends."""
    pending = list(range(len(units)))
    running: dict[int, subprocess.Popen] = {}
    codes: dict[int, int] = {}
    free = list(range(args.parallel))
    slots: dict[int, int] = {}
    while pending or running:
        while pending and len(running) < args.parallel and not stop():
            unit = pending.pop(0)
            slots[unit] = free.pop(0)
            # Own session: a terminal Ctrl-C reaches the children once, forwarded by
            # the handler above (twice would abort them without a checkpoint).
            proc = subprocess.Popen(_child_command(args, units[unit], slots[unit],
                                                   parent_pid=os.getpid()),
                                    start_new_session=True)
            running[unit] = proc
            stop.children.append(proc)
        if stop() and not running:
            break
        for unit, proc in list(running.items()):
            code = proc.poll()
            if code is not None:
                codes.update({i: code for i in units[unit]})
                del running[unit]
                free.append(slots.pop(unit))
                on_done(units[unit], code)
        time.sleep(0.2)
    return codes


def _call_pair(cmd: list[str]) -> int:
    """Body of a Ray task: one `meta-opt run --only I` process; a cancel stops it cleanly."""
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # ray.cancel: let the pair checkpoint, then report its code
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def _run_ray(args, units: list[list[int]], stop: _StopFlag, on_done) -> dict[int, int]:
    """Runs each group of pairs as a Ray task (one CPU each) executing
    `meta-opt run --only I,J,...`.

    Paths are made absolute so workers on other nodes of a cluster with a shared
    filesystem find the config and the output folder.
    """
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
             include_dashboard=False)
    child_args = argparse.Namespace(**vars(args))
    child_args.out = str(Path(args.out).absolute())
    if args.config:
        child_args.config = str(Path(args.config).absolute())
    task = ray.remote(num_cpus=1)(_call_pair)
    refs = {task.remote(_child_command(child_args, unit, 0)): unit for unit in units}
    codes: dict[int, int] = {}
    cancelled = False
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in done:
            code = ray.get(ref)
            codes.update({i: code for i in refs[ref]})
            on_done(refs[ref], code)
        if stop() and not cancelled:
            for ref in pending:
                ray.cancel(ref)
            cancelled = True
            for ref in pending:  # cancelled tasks checkpoint and return their exit codes
                try:
                    code = ray.get(ref)
                except Exception:  # noqa: BLE001 (a task cancelled before it started)
                    code = SIGNAL_EXIT[signal.SIGINT]
                codes.update({i: code for i in refs[ref]})
            pending = []
    return codes


def format_table(rows: list[tuple[str, dict]]) -> str:
    """The comparison table: one row per pair.

    `train steps/s`: the pair's training steps per second of compiled training (in a
    group, per its share of the group's time); `wall s`: its share of the wall time of
    the program run that trained it, compiling and logging included. A pair whose
    training loss turned non-finite is marked `*`, with a note under the table saying
    where (and whether it was stopped there).
    """
    header = ("pair", "settings", "loss@end ep1", "loss@end last", "best eval acc",
              "train steps/s", "wall s")

    def fmt(v, spec):
        if v is None:
            return "-"
        return format(v, spec) if isinstance(v, (int, float)) else str(v)  # e.g. "nan"

    lines = [header]
    notes = []
    for name, s in rows:
        bad = s.get("nonfinite")
        if bad:
            then = "stopped there" if bad.get("stopped") else "trained on to the end"
            notes.append(f"* {name}: training loss {bad['value']} at episode {bad['episode']}, "
                         f"step {bad['step']} (global step {bad['global_step']}); {then}")
            name += " *"
        lines.append((name, s.get("settings", "")[:48],
                      fmt(s.get("first_episode_final_loss"), ".4g"),
                      fmt(s.get("last_episode_final_loss"), ".4g"),
                      fmt(s.get("best_eval_accuracy"), ".4f"),
                      fmt(s.get("steps_per_sec"), ".0f"),
                      fmt(s.get("wall_seconds"), ".2f")))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for j, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + notes)


def die_with_parent(parent_pid: int) -> None:
    """Makes this `--parallel` child receive SIGTERM when its parent process dies.

    SIGTERM is what Ctrl-C in the parent sends too: the child checkpoints at the end of its
    chunk and exits, so a killed parent leaves no orphans training on. On Linux the kernel
    sends it (`PR_SET_PDEATHSIG`); elsewhere a thread polls the parent's pid.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM) == 0:
            if os.getppid() != parent_pid:  # it died before the death signal was set
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def check_writable(out: str) -> None:
    """Refuses an `--out` folder that cannot be created or written, before any work."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".meta_opt_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CommandError(f"--out {out}: cannot write there ({err.strerror or err}); choose "
                           f"a folder you can write") from err


def main(args) -> int:
    """Runs `meta-opt run`; returns the exit code."""
    try:
        return _main(args)
    except CommandError as err:
        if getattr(args, "debug", False):
            raise
        return report("run", err)
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the run loop took over)
        if getattr(args, "child", False):
            return SIGNAL_EXIT[signal.SIGINT]
        print(f"\nmeta-opt run: aborted by Ctrl-C; the checkpoints on disk are complete "
              f"(the current chunk was not saved). Resume with:\n  {resume_command(args)}",
              file=sys.stderr)
        return SIGNAL_EXIT[signal.SIGINT]


def _main(args) -> int:
    started = time.perf_counter()
    if getattr(args, "child", False) and getattr(args, "parent_pid", None):
        die_with_parent(args.parent_pid)
    if args.ray and args.parallel > 1:
        raise CommandError("use either --parallel N or --ray, not both")
    if args.parallel < 1:
        raise CommandError(f"--parallel must be >= 1, got {args.parallel}")
    if args.max_group < 1:
        raise CommandError(f"--max-group must be >= 1, got {args.max_group}")
    try:
        from meta_opt.experiments.sweep import apply_overrides

        sweep = load_pairs(args)
        pairs = sweep.pairs
        indices = _selected(args, len(pairs))
        # Overrides apply to the selected pairs (indices, hence run directories, are kept).
        pairs = sweep.pairs = apply_overrides(pairs, args.overrides, only=indices)
        if args.list:
            from meta_opt.experiments.sweep import describe

            for i in indices:
                exp_cfg, opt_cfg = pairs[i]
                meta = sweep.metadata[i]
                family = f"  [{meta['family']}]" if meta else ""
                print(f"{i}: {run_dir_of(args.out, i, exp_cfg, opt_cfg)}  {describe(opt_cfg)}"
                      f"  seed={exp_cfg.seed}{family}")
            return 0
        from meta_opt.experiments.compile_cache import enable_compile_cache

        enable_compile_cache(args.compile_cache)  # before anything compiles
        precheck([pairs[i] for i in indices])
        if args.wandb:
            _check_wandb()
        if args.ray:
            _check_ray()
    except (ConfigError, KeyError, RuntimeError) as e:
        raise CommandError(f"config error: {e}") from e
    check_writable(args.out)
    if sweep.study is not None and not args.child:
        _write_study(args, sweep)

    stop = _StopFlag()
    previous = {s: signal.signal(s, stop.handle) for s in SIGNAL_EXIT}
    try:
        failed = _run(args, sweep, indices, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop():
        if args.child:  # the parent prints the resume command of the whole sweep
            return SIGNAL_EXIT[stop.signum]
        print(f"\nstopped by {signal.Signals(stop.signum).name}; progress is checkpointed. "
              f"Resume with:\n  {resume_command(args)}", file=sys.stderr)
        return SIGNAL_EXIT[stop.signum]
    if not args.child:
        _report(args, pairs, indices, time.perf_counter() - started, sweep.study)
    if failed:
        print(f"\n{len(failed)} pair(s) failed: {sorted(failed)}; see the errors above. "
              f"Fix and run the same command again: completed pairs are skipped.",
              file=sys.stderr)
        return max(failed.values())
    return 0


def _study_report(folder: Path, no_plots: bool) -> None:
    """Prints the study's comparison (tuned families selected per seed) after its runs."""
    from meta_opt.experiments.report import write_report

    try:
        report = write_report(folder, plots=not no_plots)
    except Exception as e:  # noqa: BLE001 (the runs are saved; the report can be redone)
        print(f"\nthe study's report failed ({e}); try: meta-opt report {folder}",
              file=sys.stderr)
        return
    summary = report["markdown"].split("\n## Per seed")[0].rstrip()
    print("\n" + summary)
    print(f"\nreport: {report['files'][0]} (per-seed selections"
          + ("" if no_plots else " and plots") + f"); again with: meta-opt report {folder}")


def _write_study(args, sweep) -> None:
    """Records the study's declaration next to its pairs (what `meta-opt report` reads)."""
    from meta_opt.experiments.run_dir import write_json_atomic
    from meta_opt.experiments.study import STUDY_FILE

    folder = Path(args.out) / sweep.study.experiment.experiment_name
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / STUDY_FILE, sweep.study.to_dict())


def _run(args, sweep, indices, stop: _StopFlag) -> dict[int, int]:
    """Runs the selected pairs; returns {index: exit code} of the pairs that failed.

    Pairs of one structure run together as one program (at most `--max-group`). A failing
    group does not stop the sweep: the others still run and the table shows every pair
    that completed.
    """
    from meta_opt.experiments.grouping import plan_groups
    from meta_opt.experiments.progress import Progress, progress_mode
    from meta_opt.experiments.run_dir import RunDir
    from meta_opt.experiments.run_group import Interrupted, Member, run_group

    pairs = sweep.pairs
    units = plan_groups(pairs, indices, args.max_group)
    progress = Progress(len(indices), progress_mode(not args.no_progress),
                        position=args.position)
    if args.ray or (args.parallel > 1 and len(units) > 1):
        def on_done(unit, code):
            for i in unit:
                rd = RunDir(run_dir_of(args.out, i, *pairs[i]))
                if rd.is_complete():
                    progress.pair_done(rd.path.name, rd.read_summary())
                else:
                    progress.pair_failed(rd.path.name, code)

        run = _run_ray if args.ray else _run_parallel
        codes = run(args, units, stop, on_done)
        return {i: c for i, c in codes.items() if c != 0 and c not in SIGNAL_EXIT.values()}
    failed = {}
    for unit in units:
        members = [Member(*pairs[i], run_dir_of(args.out, i, *pairs[i]),
                          metadata=sweep.metadata[i]) for i in unit]
        where = ", ".join(f"{i} ({m.run_dir})" for i, m in zip(unit, members, strict=True))
        try:
            run_group(members, progress=progress, wandb=args.wandb, restart=args.restart,
                      should_stop=stop)
        except Interrupted:
            break
        # Errors a user can cause: one line each, the other groups still run, exit 2.
        except (CommandError, ConfigError, KeyError, FileNotFoundError, ValueError,
                OSError) as e:
            if args.debug:
                raise
            if isinstance(e, CommandError):
                text = str(e)
            elif isinstance(e, (ConfigError, KeyError)):
                text = f"config error: {e}"
            elif isinstance(e, OSError) and e.errno is not None:
                text = str(os_error(e))
            else:
                text = f"{type(e).__name__}: {e}"
            print(f"meta-opt run: pair(s) {where}: {text}", file=sys.stderr)
            failed.update({i: EXIT_CONFIG for i in unit})
        except Exception:  # noqa: BLE001 (a bug: report it in full, run the other pairs)
            traceback.print_exc()
            print(f"pair(s) {where} failed; continuing with the others", file=sys.stderr)
            failed.update({i: EXIT_FAILED for i in unit})
        if stop():
            break
    return failed


def _report(args, pairs, indices, seconds: float, study=None) -> None:
    """The final table, then the study's report (a study) or each experiment's plots."""
    from meta_opt.experiments.run_dir import RunDir

    rows = []
    for i in indices:
        rd = RunDir(run_dir_of(args.out, i, *pairs[i]))
        if rd.is_complete():
            rows.append((rd.path.name, rd.read_summary()))
    if not rows:
        return
    print()
    print(format_table(rows))
    print(f"\n{len(rows)} pair(s) in {seconds:.1f} s (train steps/s: per second of compiled "
          f"training; wall s: each pair's share of its program's wall time)")
    experiments = sorted({Path(args.out) / pairs[i][0].experiment_name for i in indices})
    if study is not None:
        _study_report(Path(args.out) / study.experiment.experiment_name, args.no_plots)
        return
    if args.no_plots:
        print(f"\nplot with: meta-opt plot {' '.join(map(str, experiments))}")
        return
    from meta_opt.experiments.plots import plot_runs

    for exp_dir in experiments:
        try:
            written = plot_runs([exp_dir], exp_dir / "plots")
        except Exception as e:  # noqa: BLE001 (plots are a convenience; results are saved)
            print(f"\nplotting {exp_dir} failed ({e}); try: meta-opt plot {exp_dir}",
                  file=sys.stderr)
            continue
        print(f"\nplots: {exp_dir / 'plots'}/ ({', '.join(p.name for p in written)})")
