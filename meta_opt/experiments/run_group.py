"""The Python loop of a group of pairs that share one program: resume, chunks, logs, summary.

Every member keeps its own run directory (config, metrics.jsonl, TensorBoard events,
checkpoints, summary.json), exactly as if it had run alone; only the compiled functions
and their calls are shared (see `program.py`). Between compiled chunks the loop writes one
metrics line per member, evaluates when due, checkpoints every member when due (always at
the end of an episode) and checks whether a stop was requested (SIGINT/SIGTERM), in which
case it checkpoints and raises `Interrupted`.

Resume is member by member: each member's directory is checked against its newest
readable checkpoint (`RunDir.open`: its config, what metrics.jsonl held; a damaged
checkpoint is skipped with a warning), the state is restored and the metrics file cut
back to it. Members stopped at the same position continue together; members at different
positions (a kill between two members' saves) run as separate cohorts.

What each checkpoint records (positions, the pair's config, the metrics file's lines and
digest) makes the run directory consistent by construction; MetaOpt's controller, part of
the checkpointed state, is written to controller.npz (atomically) at every episode end,
after restoring an episode-end checkpoint, and so at completion. TensorBoard is flushed at
every checkpoint.

A member whose training loss turns non-finite is reported at the chunk where it happens
(pair, episode, step) and, with `stop_on_nonfinite` (the default), stopped: nothing more
is logged or checkpointed for it, and its summary says where it stopped.

Timing: each member's summary gets its share (1/N of the group's) of the wall time and
of its parts: compiling, training (the compiled chunks), and everything else (setup,
evaluation, checkpoints, logs), so the seconds of a sweep's pairs add up to the sweep.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from meta_opt.experiments.checkpoints import Checkpointer
from meta_opt.experiments.command_errors import CommandError, naming
from meta_opt.experiments.compile_cache import cache_counts
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.file_records import file_sha256
from meta_opt.experiments.metrics import MetricsWriter, init_wandb, read_jsonl, run_name
from meta_opt.experiments.program import Program, experiment_key, program_for, stack, unstack
from meta_opt.experiments.progress import Progress
from meta_opt.experiments.run_dir import (
    RUN_RECORD,
    Opened,
    RunDir,
    config_digest,
    write_json_atomic,
)
from meta_opt.experiments.sweep import non_default_fields, pair_to_dict
from meta_opt.optimizers import find_metaopt_state, save_controller
from meta_opt.optimizers.config import OptimizerConfig

STUDY_MEMBER_FILE = "study_member.json"
# Summary fields of the process that trained the run (kept when a rebuild trains nothing).
TIMING_FIELDS = ("group_size", "wall_seconds", "compile_seconds", "train_seconds",
                 "overhead_seconds", "seconds_by_phase", "steps_per_sec", "trained_steps",
                 "programs_from_compile_cache", "median_step_time")


class Interrupted(Exception):
    """A stop was requested; the run was checkpointed at `global_step` and can be resumed."""

    def __init__(self, run_dir: Path, global_step: int):
        super().__init__(f"interrupted at global step {global_step}; checkpoint in {run_dir}")
        self.run_dir = run_dir
        self.global_step = global_step


@dataclasses.dataclass(frozen=True)
class Member:
    """One pair of a group.

    Attributes:
      exp_cfg: the pair's experiment.
      opt_cfg: the pair's optimizer.
      run_dir: its directory (`OUT/<experiment>/<index>_<optimizer>`).
      label: its name in progress lines (default: the directory's name).
      metadata: what a study records about it (family, grid point, seed), written to
        `study_member.json` in the run directory; None for pairs outside a study.
    """

    exp_cfg: ExperimentConfig
    opt_cfg: OptimizerConfig
    run_dir: Path
    label: str = ""
    metadata: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The member's name in progress lines (its label, else its folder's)."""
        return self.label or Path(self.run_dir).name


class _Clock:
    """Seconds spent per phase (setup, compile, train, eval, checkpoint, log)."""

    def __init__(self):
        self.seconds: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


def _scalar(x) -> float:
    return float(np.asarray(x))


def chunk_record(exp_cfg: ExperimentConfig, episode: int, step: int,
                 metrics: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    """One metrics line from a chunk's stacked per-step metrics (values of its last step).

    `seconds` is the time one step took (the chunk's time over its steps and members).
    """
    record: dict[str, Any] = {
        "episode": episode,
        "step": step,
        "global_step": episode * exp_cfg.num_iters + step,
    }
    for k, v in metrics.items():
        record[k] = _scalar(v[-1])
    record["train_loss_mean"] = _scalar(np.mean(metrics["train_loss"]))
    record["step_time"] = seconds
    return record


def initial_record(exp_cfg: ExperimentConfig, episode: int,
                   metrics: dict[str, np.ndarray]) -> dict[str, Any]:
    """The step-0 line of an episode: the loss (and aux) on step 0's batch before any update.

    Taken from the first step of the episode's first chunk, which computes exactly that.
    """
    record: dict[str, Any] = {"episode": episode, "step": 0,
                              "global_step": episode * exp_cfg.num_iters}
    for k, v in metrics.items():
        if k.startswith("train_"):
            record[k] = _scalar(v[0])
    return record


def summarize(exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig,
              records: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's results: per-episode final metrics and best eval accuracy."""
    episodes = []
    for e in range(exp_cfg.num_episodes):
        rows = [r for r in records if r["episode"] == e]
        if not rows:
            continue
        last = rows[-1]
        episodes.append({k: v for k, v in last.items()
                         if k == "episode" or k.startswith(("train_loss", "eval_", "valid_"))})
    accs = [r["eval_accuracy"] for r in records if isinstance(r.get("eval_accuracy"), float)]
    return {
        "optimizer_name": opt_cfg.registered_name(),
        "settings": non_default_fields(opt_cfg),
        "workload_name": exp_cfg.workload_name,
        "seed": exp_cfg.seed,
        "full_batch": exp_cfg.full_batch,
        "num_episodes": exp_cfg.num_episodes,
        "num_iters": exp_cfg.num_iters,
        "first_episode_final_loss": episodes[0]["train_loss"] if episodes else None,
        "last_episode_final_loss": episodes[-1]["train_loss"] if episodes else None,
        "best_eval_accuracy": max(accs) if accs else None,
        "episodes": episodes,
    }


def run_group(members: list[Member], *, progress: Progress | None = None,
              wandb: bool = False, restart: bool = False,
              should_stop: Callable[[], bool] = lambda: False) -> list[dict[str, Any]]:
    """Trains pairs of one structure together (resuming each); returns their summaries.

    Args:
      members: pairs of one structure (see `grouping.py`); should the builder of one of
        their numbers need it as a constant, they are split by program.
      progress: where progress goes (default: nowhere).
      wandb: also log each pair to wandb.
      restart: delete existing run directories first.
      should_stop: polled between chunks; True checkpoints and raises `Interrupted`.

    Raises:
      Interrupted: a stop was requested; every member is checkpointed.
      ConfigError: a directory holds a different config, or the config cannot run.
      CommandError: a directory is damaged beyond an exact rebuild (the message names the
        file and what to do).
    """
    progress = progress or Progress(len(members), "off")
    dirs = [RunDir(m.run_dir) for m in members]
    summaries: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        for rd in dirs:
            stack.enter_context(rd.lock())
        # Cohorts: members of one program and one loop (lengths, cadences) at one position;
        # building a program (loading the task, tracing) is the setup time of its first.
        by_program: dict[tuple[int, str], list[int]] = {}
        programs: dict[int, Program] = {}
        build_seconds: collections.Counter[int] = collections.Counter()
        ckpts: dict[int, Checkpointer] = {}
        opened: dict[int, Opened] = {}
        for i, (m, rd) in enumerate(zip(members, dirs, strict=True)):
            if restart:
                rd.clear()
            with naming(rd.checkpoints):
                ckpts[i] = Checkpointer(rd.checkpoints, max_to_keep=m.exp_cfg.keep_checkpoints)
            stack.callback(ckpts[i].close)
            opened[i] = rd.open(pair_to_dict(m.exp_cfg, m.opt_cfg), ckpts[i],
                                warn=progress.warn)
            if m.metadata is not None:
                write_json_atomic(rd.path / STUDY_MEMBER_FILE, m.metadata)
            if opened[i].status == "complete":
                summaries[i] = opened[i].summary
                progress.pair_done(m.name, summaries[i], trained=False)
                continue
            start = time.perf_counter()
            program = program_for(m.exp_cfg, m.opt_cfg)
            programs[id(program)] = program
            build_seconds[id(program)] += time.perf_counter() - start
            by_program.setdefault((id(program), experiment_key(m.exp_cfg)), []).append(i)
        for (key, _), indices in by_program.items():
            for (position, step), cohort in _cohorts(indices, opened, ckpts).items():
                out = _run_cohort(programs[key], [members[i] for i in cohort],
                                  [dirs[i] for i in cohort], [ckpts[i] for i in cohort],
                                  [opened[i] for i in cohort], position, step,
                                  setup_seconds=build_seconds.pop(key, 0.0),
                                  progress=progress, wandb=wandb, should_stop=should_stop)
                summaries.update(zip(cohort, out, strict=True))
    return [summaries[i] for i in range(len(members))]


Position = tuple[int, int, int]  # (episode, step, global_step) of a checkpoint


def _cohorts(indices: list[int], opened: dict[int, Opened], ckpts: dict[int, Checkpointer]
             ) -> dict[tuple[Position | None, int | None], list[int]]:
    """Members of one program grouped by the checkpoint (position, step) they continue from.

    A kill during a round of saves leaves some members one checkpoint ahead; when every
    resuming member still holds a readable checkpoint of the one furthest behind, they all
    go back to it and continue together (re-running a few steps) instead of as cohorts,
    each compiled for its own size.
    """
    fresh = [i for i in indices if opened[i].step is None]
    out: dict[tuple[Position | None, int | None], list[int]] = {(None, None): fresh} if fresh \
        else {}
    back = [i for i in indices if opened[i].step is not None]
    behind = min((opened[i].step for i in back), default=None)
    together = all(opened[i].step == behind
                   or (behind in ckpts[i].steps() and ckpts[i].problem(behind) is None)
                   for i in back)
    for i in back:
        step = behind if together else opened[i].step
        meta = ckpts[i].meta(step)
        position = (meta["episode"], meta["step"], meta["global_step"])
        out.setdefault((position, step), []).append(i)
    return out


def _hparams(member: Member) -> dict[str, Any]:
    """The pair's settings for TensorBoard's HParams dashboard."""
    exp = member.exp_cfg
    out: dict[str, Any] = {"optimizer": member.opt_cfg.registered_name()}
    for k, v in member.opt_cfg.to_dict().items():
        if k != "optimizer_name":
            out[f"optimizer.{k}"] = v
    for k in ("workload_name", "seed", "full_batch", "num_episodes", "num_iters", "batch_size"):
        out[f"experiment.{k}"] = getattr(exp, k)
    for k, v in (member.metadata or {}).items():
        out[f"study.{k}"] = v
    return out


def first_nonfinite(losses: np.ndarray, episode: int, step_before: int,
                    num_iters: int) -> dict[str, Any] | None:
    """Where a chunk's training losses first turn NaN or infinite, or None.

    Args:
      losses: the chunk's per-step losses of one member.
      episode: the chunk's episode.
      step_before: steps done in the episode before the chunk.
      num_iters: steps per episode.

    Returns:
      {"episode", "step", "global_step", "value"}: `step` counts the steps of the episode
      up to the one whose loss it is (as a metrics line's `step` for its chunk's last).
    """
    finite = np.isfinite(losses)
    if finite.all():
        return None
    j = int(np.argmin(finite))
    step = step_before + j + 1
    return {"episode": episode, "step": step, "global_step": episode * num_iters + step,
            "value": str(float(losses[j]))}


def _run_cohort(program: Program, members: list[Member], dirs: list[RunDir],
                ckpts: list[Checkpointer], opened: list[Opened], position: Position | None,
                resume_step: int | None, *, setup_seconds: float, progress: Progress,
                wandb: bool, should_stop) -> list[dict[str, Any]]:
    """Members at the same position: one program, stepped together."""
    start = time.perf_counter() - setup_seconds
    clock = _Clock()
    clock.seconds["setup"] = setup_seconds
    exp = members[0].exp_cfg
    n, n_iters, n_eps = len(members), exp.num_iters, exp.num_episodes
    pairs = [pair_to_dict(m.exp_cfg, m.opt_cfg) for m in members]
    with clock("setup"):
        values = program.values_of([m.opt_cfg for m in members])
        seeds = program.seeds_of([m.exp_cfg.seed for m in members])
    progress.start_group(members[0].name, n, exp.total_steps,
                         0 if position is None else position[2])
    progress.compiling(n)
    cache_before = cache_counts()
    records: list[dict[str, Any] | None] = [None] * n
    with clock("compile"):
        states, fixed = program.run_init(values, seeds)
        if position is not None:
            states, records = _restore(ckpts, states, resume_step)
            if position[1] == n_iters:  # an episode's end: its controller, as saved then
                _write_controllers(dirs, jax.device_get(states), range(n))
        program.compile(values, states, fixed)
    from_cache = cache_counts()["hits"] - cache_before["hits"]
    progress.compiled(clock.seconds["compile"], from_cache)
    writers: list[MetricsWriter] = []
    wandb_runs = []
    episode, step = (0, 0) if position is None else position[:2]
    trained_steps = 0
    nonfinite: list[dict[str, Any] | None] = [None] * n
    active = list(range(n))  # members still trained (not stopped on a non-finite loss)
    try:
        with clock("setup"):
            for m, rd, record in zip(members, dirs, records, strict=True):
                run = None
                if wandb:
                    run = init_wandb(m.exp_cfg.experiment_name, rd.path.name,
                                     pair_to_dict(m.exp_cfg, m.opt_cfg), rd.path)
                wandb_runs.append(run)
                writers.append(MetricsWriter(
                    rd.path, resume_at=position, record=record, wandb_run=run,
                    tb_name=run_name(rd.path.name, non_default_fields(m.opt_cfg)),
                    hparams=_hparams(m), optimizer_prefix=m.opt_cfg.registered_name().lower()))
        while active:
            if step == n_iters:
                if episode == n_eps - 1:
                    break
                with clock("train"):
                    states = program.run_next_episode(values, seeds, states)
                episode, step = episode + 1, 0
                continue
            first = step == 0
            initial_eval = None
            if first and exp.eval_every:
                with clock("eval"):
                    initial_eval = jax.device_get(program.run_eval(states))
            with clock("train"):
                t = time.perf_counter()
                states, metrics = program.run_chunk(values, states, fixed)
                metrics = jax.device_get(metrics)
                seconds = time.perf_counter() - t
            step_before, step = step, step + exp.log_every
            trained_steps += exp.log_every
            end_of_episode = step == n_iters
            evaluation = None
            if end_of_episode or (exp.eval_every and step % exp.eval_every == 0):
                with clock("eval"):
                    evaluation = jax.device_get(program.run_eval(states))
            gstep = episode * n_iters + step
            with clock("log"):
                for i in active:
                    member_metrics = {k: v[i] for k, v in metrics.items()}
                    if first:
                        record = initial_record(exp, episode, member_metrics)
                        if initial_eval is not None:
                            record.update({k: _scalar(v[i]) for k, v in initial_eval.items()})
                        writers[i].write(record)
                    record = chunk_record(exp, episode, step, member_metrics,
                                          seconds / (exp.log_every * n))
                    if evaluation is not None:
                        record.update({k: _scalar(v[i]) for k, v in evaluation.items()})
                    writers[i].write(record)
                progress.chunk(episode, n_eps, step, n_iters,
                               [_scalar(metrics["train_loss"][i][-1]) for i in active],
                               exp.log_every * n / max(seconds, 1e-9), exp.log_every)
                for i in list(active):
                    if nonfinite[i] is None:
                        nonfinite[i] = first_nonfinite(np.asarray(metrics["train_loss"][i]),
                                                       episode, step_before, n_iters)
                        if nonfinite[i] is not None:
                            _report_nonfinite(progress, members[i], nonfinite[i])
                            nonfinite[i]["stopped"] = members[i].exp_cfg.stop_on_nonfinite
                            if nonfinite[i]["stopped"]:
                                active.remove(i)
            meta = {"episode": episode, "step": step, "global_step": gstep}
            saved = False
            if active and (end_of_episode or step % exp.checkpoint_every == 0):
                with clock("checkpoint"):
                    _save(ckpts, states, meta, pairs, writers, active,
                          dirs if end_of_episode else None)
                saved = True
            if should_stop():
                if active and not saved:
                    with clock("checkpoint"):
                        _save(ckpts, states, meta, pairs, writers, active, None)
                raise Interrupted(dirs[0].path, gstep)
    except BaseException:
        _close(writers, wandb_runs, quietly=True)  # the error in flight is what to report
        progress.end_group()
        raise
    _close(writers, wandb_runs, quietly=False)
    progress.end_group()
    summaries = []
    wall = time.perf_counter() - start
    parts = {phase: s / n for phase, s in clock.seconds.items()}
    train = parts.get("train", 0.0)
    timing = {
        "group_size": n,
        "wall_seconds": wall / n,
        "compile_seconds": parts.get("compile", 0.0),
        "train_seconds": train,
        "overhead_seconds": wall / n - parts.get("compile", 0.0) - train,
        "seconds_by_phase": parts,
        "steps_per_sec": trained_steps / train if train > 0 else None,
        "trained_steps": trained_steps,
        "programs_from_compile_cache": from_cache,
    }
    for i, (m, rd, o) in enumerate(zip(members, dirs, opened, strict=True)):
        records_i = read_jsonl(rd.metrics)
        summary = summarize(m.exp_cfg, m.opt_cfg, records_i)
        times = [r["step_time"] for r in records_i if r.get("step_time")]
        summary["median_step_time"] = statistics.median(times) if times else None
        summary.update(timing)  # of this process (a resumed run: the last one)
        if trained_steps == 0 and o.summary is not None:  # a rebuild: the trained run's
            summary.update({k: o.summary[k] for k in TIMING_FIELDS if k in o.summary})
        summary["nonfinite"] = nonfinite[i]
        if nonfinite[i] is not None and nonfinite[i]["stopped"]:
            summary["last_episode_final_loss"] = nonfinite[i]["value"]  # it ended there
        if m.metadata is not None:
            summary["study"] = m.metadata
        summary[RUN_RECORD] = {
            "config_sha256": config_digest(pairs[i]),
            "metrics": writers[i].record(),
            "controller_sha256": file_sha256(rd.controller),
        }
        write_json_atomic(rd.summary, summary)
        summaries.append(summary)
        progress.pair_done(m.name, summary)
    return summaries


def _report_nonfinite(progress: Progress, member: Member, where: dict[str, Any]) -> None:
    """Says where a member's training loss turned non-finite, and what happens next."""
    if member.exp_cfg.stop_on_nonfinite:
        then = ("stopping this pair (set experiment.stop_on_nonfinite=false to train it to "
                "the end)")
    else:
        then = "training it on (stop_on_nonfinite is off)"
    progress.warn(f"pair {member.name}: training loss is {where['value']} at episode "
                  f"{where['episode']}, step {where['step']} (global step "
                  f"{where['global_step']}); {then}")


def _close(writers: list[MetricsWriter], wandb_runs: list, quietly: bool) -> None:
    """Closes every member's sinks; `quietly` ignores their errors (see MetricsWriter)."""
    for writer in writers:
        writer.close(quietly=quietly)
    for run in wandb_runs:
        if run is None:
            continue
        try:
            run.finish()
        except Exception:
            if not quietly:
                raise


def _restore(ckpts: list[Checkpointer], states, step: int):
    """Every member's checkpoint `step`, stacked and placed like the fresh `states`, and
    each member's metrics record of that checkpoint."""
    host = jax.device_get(states)
    restored, records = [], []
    for i, ckpt in enumerate(ckpts):
        ckpt.delete_after(step)
        try:
            state, meta = ckpt.restore_host(unstack(host, i), step)
        except Exception as err:  # noqa: BLE001 (read before: now the structure is wrong)
            raise CommandError(
                f"checkpoint {ckpt.directory / str(step)} does not fit this pair's state "
                f"({str(err).splitlines()[0][:200]}); it was written by another version of "
                f"meta_opt or another config: run with --restart to start the pair over"
            ) from err
        restored.append(state)
        records.append(meta.get("metrics"))
    # Placed as the fresh arrays are (committed to their sharding, or not): otherwise the
    # chunk would compile for the restored layout, then again for its own outputs'.
    place = lambda x, t: jax.device_put(x, t.sharding) if t.committed else jax.device_put(x)
    return jax.tree.map(place, stack(restored), states), records


def _save(ckpts: list[Checkpointer], states, meta: dict[str, int], pairs: list[dict],
          writers: list[MetricsWriter], members: list[int],
          controller_dirs: list[RunDir] | None) -> None:
    """Flushes the TensorBoard events of `members`, then checkpoints them (one transfer of
    the stacked state to the host), each with its config and metrics record; at an
    episode's end also writes MetaOpt's controller of each."""
    host = jax.device_get(states)
    for i in members:
        # Events first: once the checkpoint exists, what it holds is in the event files
        # (events of a save that never completes are purged on resume).
        writers[i].flush()
        with naming(ckpts[i].directory):
            ckpts[i].save(meta["global_step"], unstack(host, i),
                          {**meta, "config": pairs[i], "metrics": writers[i].record()})
    if controller_dirs is not None:
        _write_controllers(controller_dirs, host, members)


def _write_controllers(dirs: list[RunDir], host_states, members) -> None:
    """Writes controller.npz (atomically) for the MetaOpt members among `members`."""
    for i in members:
        member = unstack(host_states, i)
        if find_metaopt_state(member.opt_state) is None:
            continue
        final = dirs[i].controller
        tmp = final.with_name(f".{final.name}.tmp.npz")
        with naming(final):
            save_controller(str(tmp), member.opt_state)
            os.replace(tmp, final)


def member_metadata(path: str | Path) -> dict[str, Any] | None:
    """The study metadata recorded in a run directory, or None outside a study."""
    path = Path(path) / STUDY_MEMBER_FILE
    return json.loads(path.read_text()) if path.exists() else None
