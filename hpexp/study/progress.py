"""Study progress: a line per finished trial, a status line of the running ones, the summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from hpexp.progress import duration
from hpexp.study.storage import FINISHED, mask, study_dir, superseded

__all__ = ["Display", "summary_text"]


class Display:
    """What the coordinator prints while the study runs: a line per finished trial, and the running
    trials on a status line (rewritten in place on a terminal, once a minute in a log file), each
    with the time left at the pace of the trials finished since this command started."""

    def __init__(self, spec: DictConfig, quiet: bool) -> None:
        self.spec, self.quiet, self.seen = spec, quiet, set[int]()
        self.tty = sys.stdout.isatty() and not quiet
        self.last = self.started = time.monotonic()
        self.before: int | None = None  # trials finished before this command started

    def update(self, trials: Sequence[FrozenTrial]) -> None:
        self.before = _done(trials) if self.before is None else self.before
        left = _left(trials, self.spec, self.started, self.before)
        for t in trials:
            if t.state in FINISHED and t.number not in self.seen:
                self.seen.add(t.number)
                if not self.quiet:
                    line = _trial_line(t, trials, self.spec, self.seen) + left
                    print(("\r\033[K" if self.tty else "") + line, flush=True)
        if self.tty:
            print("\r\033[K" + _status_line(trials, self.spec, left), end="", flush=True)
        elif not self.quiet and time.monotonic() - self.last >= 60:
            print(_status_line(trials, self.spec, left), flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        if self.tty:
            print("\r\033[K", end="", flush=True)


def _best(trials: Sequence[FrozenTrial], spec: DictConfig) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pick = max if spec.objective.direction == "maximize" else min
    return pick(complete, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]


def _done(trials: Sequence[FrozenTrial], numbers: set[int] | None = None) -> int:
    """Finished trials (among `numbers`, if given), a retried or replaced trial not counted."""
    retried = superseded(trials)
    return sum(
        t.state in FINISHED and t.number not in retried and (numbers is None or t.number in numbers)
        for t in trials
    )


def _counts(trials: Sequence[FrozenTrial], spec: DictConfig, numbers: set[int] | None = None) -> str:
    """ "k/n done"."""
    return f"{_done(trials, numbers)}/{spec.n_trials} done"


def _left(trials: Sequence[FrozenTrial], spec: DictConfig, started: float, before: int) -> str:
    """ "; ~T left": the time per trial finished since `started` times the trials still to run."""
    done = _done(trials)
    if done <= before:
        return ""
    per_trial = (time.monotonic() - started) / (done - before)
    return f"; ~{duration(per_trial * max(0, spec.n_trials - done))} left"


def _status_line(trials: Sequence[FrozenTrial], spec: DictConfig, left: str = "") -> str:
    best = _best(trials, spec)
    running = [f"#{t.number} epoch {t.last_step or 0}" for t in trials if t.state == TrialState.RUNNING]
    best_text = f"best {best.value:.4f} (#{best.number})" if best else "best -"
    return f"[{_counts(trials, spec)}{left}, {best_text}; running {', '.join(running) or '-'}]"


def _trial_line(t: FrozenTrial, trials: Sequence[FrozenTrial], spec: DictConfig, seen: set[int]) -> str:
    best = _best(trials, spec)
    value = f"{spec.objective.metric} {t.value:.4f}" if t.value is not None else ""
    why = t.user_attrs.get("fail_reason") or (
        t.user_attrs.get("stop_reason") if t.state != TrialState.COMPLETE else ""
    )
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    parts = [
        f"trial {t.number:>4} {t.state.name.lower():8}",
        value,
        params,
        why or "",
        f"| {_counts(trials, spec, seen)}",
        f"best {best.value:.4f} (#{best.number})" if best else "",
    ]
    return "  ".join(p for p in parts if p)


def _values(values: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def summary_text(study: optuna.Study, spec: DictConfig, runs: Path) -> str:
    trials = study.get_trials(deepcopy=False)
    folder = study_dir(spec, runs)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {k}" for k, n in states.items() if n)]
    if best := _best(trials, spec):
        lines.append(
            f"best trial #{best.number}: {spec.objective.metric} {best.value:.4f} at epoch "
            f"{best.user_attrs.get('best_epoch')}"
        )
        overrides = " ".join(best.user_attrs.get("overrides", []))
        if schedule := best.user_attrs.get("pbt_schedule"):  # PBT: the overrides are only where it began
            lines += [
                f"  PBT member {best.user_attrs.get('member')} began as {overrides}; its lineage's schedule:"
            ]
            lines += [f"    from epoch {e['epoch']}: {_values(e['values'])}" for e in schedule]
        else:
            lines.append(f"  overrides: {overrides}")
        lines.append(f"  run directory: {best.user_attrs.get('run_dir')}")
    lines += [
        f"study folder: {folder} (spec.yaml, "
        + (
            "pbt/members/KK/ run directories, pbt/pbt.json"
            if spec.sampler.name == "pbt"
            else "trials/NNNN/ run directories"
        )
        + (", journal.log)" if not spec.storage else f"); storage {mask(spec.storage)}"),
        f"score the test set once: hpexp study {spec.name} --finalize",
        f"report: hpexp report --study {spec.name}",
    ]
    return "\n".join(lines)
