"""Study progress: a line per finished trial, a status line of the running ones, the summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from hpexp.progress import duration
from hpexp.study.storage import FINISHED, mask, study_dir

__all__ = ["summary_text"]


def _watch(study: optuna.Study, workers: list[Any], spec: DictConfig, quiet: bool) -> None:
    seen: set[int] = set()
    tty = sys.stdout.isatty() and not quiet
    last = started = time.monotonic()
    before: int | None = None  # trials finished before this command started
    while True:
        alive = any(w.is_alive() for w in workers)
        trials = study.get_trials(deepcopy=False)
        before = _done(trials) if before is None else before
        left = _left(trials, spec, started, before)
        for t in trials:
            if t.state in FINISHED and t.number not in seen:
                seen.add(t.number)
                if not quiet:
                    print(("\r\033[K" if tty else "") + _trial_line(t, trials, spec, seen) + left, flush=True)
        if tty:
            print("\r\033[K" + _status_line(trials, spec, left), end="", flush=True)
        elif not quiet and time.monotonic() - last >= 60:  # a log file gets the running epochs once a minute
            print(_status_line(trials, spec, left), flush=True)
            last = time.monotonic()
        if not alive:
            break
        time.sleep(0.5)
    if tty:
        print("\r\033[K", end="", flush=True)


def _best(trials: Sequence[FrozenTrial], spec: DictConfig) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pick = max if spec.objective.direction == "maximize" else min
    return pick(complete, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]


def _done(trials: Sequence[FrozenTrial], numbers: set[int] | None = None) -> int:
    """Finished trials (among `numbers`, if given), a failed-and-retried trial not counted."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
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


def summary_text(study: optuna.Study, spec: DictConfig, runs: Path) -> str:
    trials = study.get_trials(deepcopy=False)
    folder = study_dir(spec, runs)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {spec.name}: " + ", ".join(f"{n} {k}" for k, n in states.items() if n)]
    if best := _best(trials, spec):
        lines += [
            f"best trial #{best.number}: {spec.objective.metric} {best.value:.4f} at epoch "
            f"{best.user_attrs.get('best_epoch')}",
            f"  overrides: {' '.join(best.user_attrs.get('overrides', []))}",
            f"  run directory: {best.user_attrs.get('run_dir')}",
        ]
    lines += [
        f"study folder: {folder} (spec.yaml, trials/NNNN/ run directories"
        + (", journal.log)" if not spec.storage else f"); storage {mask(spec.storage)}"),
        f"score the test set once: hpexp study {spec.name} --finalize",
        f"report: hpexp report --study {spec.name}",
    ]
    return "\n".join(lines)
