"""Generalization reports: run directories and studies become DataFrames, then figures and tables.

Loaders return DataFrames and are meant for notebooks too:

    load_runs("runs/multirun/2024-05-01_12-00-00")   # one row per run x epoch, config joined
    load_trials("runs/studies/NAME")                 # one row per Optuna trial
    load_trial_curves("runs/studies/NAME")           # one row per trial x reported step

`run_metrics` reduces the long frame to one row per run, `summarize` to one row per configuration
(mean +/- 95% confidence half-width over seeds). Drawing lives in `hpexp.report.plots`;
`hpexp.report.pages` assembles figures and tables into `reports/<name>/` (README.md, report.html).
"""

from __future__ import annotations

import glob
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hpexp.stats import MIN_N_INTERVAL, Estimate, mean_interval, median_range, t_critical
from hpexp.train import rundir

__all__ = [
    "ReportError",
    "check_runs",
    "config_columns",
    "epoch_stats",
    "find_run_dirs",
    "flatten",
    "bounds",
    "band_label",
    "format_cell",
    "format_summary",
    "summary_cell",
    "label_configs",
    "load_runs",
    "load_trial_curves",
    "load_trials",
    "fetch_run_dirs",
    "missing_run_dirs",
    "open_study",
    "search_space_log",
    "param_importances",
    "run_metrics",
    "study_dir",
    "summarize",
    "varying_keys",
]

SPLITS = ("train", "val", "test")
# Statuses of runs that ended (their summary is final), and every status a run can report.
ENDED = ("completed", "diverged", "stalled", "pruned")
STATUSES = (*ENDED, "interrupted", "failed", "running", "unknown")
RUN_COLUMNS = ("run", "path", "status", "incomplete", "stop_reason", "epochs_run", "trial")
HISTORY_EXTRA = ("epoch", "eta", "weight_norm", "seconds")
# Config keys that differ between runs without making them different configurations.
NOT_CONFIG = ("seed", "out_dir", "data.dir")
# Per run, at its best validation epoch (`*_at_best`, `best_*`) or its final epoch (`final_*`).
PER_RUN = (
    "best_epoch",
    "best_val_accuracy",
    "final_val_accuracy",
    "train_accuracy_at_best",
    "gap_at_best",
    "final_gap",
    "test_accuracy_at_best",
    "final_test_accuracy",
    "train_loss_at_best",
    "val_loss_at_best",
    "test_loss_at_best",
    "still_improving",
)
# Summarized per configuration (the losses stay per run: their scale depends on the cost).
SUMMARY = PER_RUN[:8]


class ReportError(ValueError):
    """Input a report cannot be made from (no runs, unknown key, missing study)."""


# --- loading runs -----------------------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys; lists become JSON-like text so they can be compared."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list):
            flat[name] = "[" + ", ".join(map(str, value)) + "]"
        else:
            flat[name] = value
    return flat


def _candidates(path: Path) -> list[Path]:
    if (path / "config.yaml").is_file():
        return [path]
    found = (p.parent for p in path.rglob("config.yaml"))
    # Hydra keeps its own copy in .hydra/; skip hidden folders.
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts))


def find_run_dirs(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run directories named by paths, globs or folders holding runs (e.g. a multirun folder)."""
    dirs: list[Path] = []
    for source in sources:
        matches = [Path(m) for m in sorted(glob.glob(str(source), recursive=True))]
        if not matches:
            raise ReportError(f"no such file or directory: {source}")
        for match in matches:
            if match.is_dir():
                dirs.extend(_candidates(match))
    return list(dict.fromkeys(p.resolve() for p in dirs))


def _run_label(path: Path, root: Path | None) -> str:
    if root is None or path == root:
        return path.name
    return path.relative_to(root).as_posix()


def _read_run(path: Path, label: str, extra: dict[str, Any]) -> list[dict[str, Any]]:
    config = yaml.load((path / "config.yaml").read_text(), Loader=yaml.CSafeLoader) or {}
    choices = config.pop("choices", None) or {}
    summary = rundir.read_summary(path)
    history = rundir.read_history(path)
    status = str(summary.get("status", "unknown"))
    info = {
        "run": label,
        "path": str(path),
        "status": status,
        "incomplete": status not in ENDED,  # unknown statuses too: flagged by check_runs
        "stop_reason": summary.get("stop_reason") or "",
        "epochs_run": len(history),
        **extra,
    }
    fixed = info | flatten(config) | {str(k): v for k, v in choices.items()}
    # A run that never finished an epoch keeps one row (epoch 0, no metrics) so it is not lost.
    return [fixed | record for record in history] or [fixed | {"epoch": 0}]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows)
    metrics = [f"{s}_{m}" for s in SPLITS for m in ("loss", "cost", "accuracy") if f"{s}_{m}" in df]
    first = [c for c in (*RUN_COLUMNS, "epoch", *metrics, *HISTORY_EXTRA[1:]) if c in df]
    df = df[first + sorted(c for c in df.columns if c not in first)]
    df["epoch"] = df["epoch"].astype("int64")
    df[metrics] = df[metrics].astype("float64")
    return df.sort_values(["run", "epoch"], kind="stable").reset_index(drop=True)


def load_runs(sources: Any) -> pd.DataFrame:
    """One row per run x epoch: history metrics, run status and the flattened config.

    `sources` is a path, a glob, a folder of runs (a Hydra multirun folder), a list of those, or an
    Optuna study (its trials' run directories, with a `trial` column). Config keys appear dotted
    (`regularizer.lmbda`, `data.n_train`), each group's chosen option under the group's name
    (`regularizer` = "l2"). `incomplete` is True for runs that did not end (running, interrupted,
    failed, no summary); a run without any finished epoch has a single row with epoch 0.
    """
    if _is_study(sources):
        return _load_study_runs(sources)
    sources = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    dirs = find_run_dirs(sources)
    if not dirs:
        raise ReportError(
            f"no run directories (folders with config.yaml) under {', '.join(map(str, sources))}"
        )
    root = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else None
    return _frame([row for d in dirs for row in _read_run(d, _run_label(d, root), {})])


def config_columns(df: pd.DataFrame) -> list[str]:
    metric = {f"{s}_{m}" for s in SPLITS for m in ("loss", "cost", "accuracy")}
    skip = set(RUN_COLUMNS) | set(HISTORY_EXTRA) | metric | {"config"}
    return [c for c in df.columns if c not in skip and not c.endswith("_target_")]


def varying_keys(df: pd.DataFrame) -> list[str]:
    """Config keys whose value differs between runs (seed and output paths excluded)."""
    runs = df.drop_duplicates("run")
    keys = [c for c in config_columns(df) if c not in NOT_CONFIG and not c.startswith("versions.")]
    return [c for c in keys if runs[c].astype(str).nunique() > 1]


def _value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "unset"
    return f"{v:g}" if isinstance(v, float) else str(v)


def label_configs(df: pd.DataFrame, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Add a `config` column naming each run's configuration: the `by` key(s), else every key
    that varies between runs. Runs differing only in seed share a configuration (seeds pool)."""
    keys = [by] if isinstance(by, str) else list(by or varying_keys(df))
    if missing := [k for k in keys if k not in df.columns]:
        known = ", ".join(varying_keys(df)) or ", ".join(config_columns(df)[:12])
        raise ReportError(f"no config key {', '.join(missing)} in these runs; keys that vary: {known}")
    runs = df.drop_duplicates("run").copy()
    if keys:
        runs["config"] = [
            ", ".join(f"{k}={_value(v)}" for k, v in zip(keys, row, strict=True))
            for row in runs[keys].itertuples(index=False)
        ]
        try:
            runs = runs.sort_values(keys, kind="stable")
        except TypeError:  # mixed types in a key: keep file order
            pass
    else:
        runs["config"] = "all runs"
    order = list(dict.fromkeys(runs["config"]))
    labels = runs.set_index("run")["config"]
    return df.assign(config=pd.Categorical(df["run"].map(labels), categories=order, ordered=True))


# --- statistics -------------------------------------------------------------------------------


def bounds(column: str) -> tuple[float, float]:
    """The range a metric can take: accuracies [0, 1], gaps and differences of them [-1, 1],
    losses and costs [0, inf); anything else is unbounded."""
    if column.startswith("gap") or column.endswith("_gap"):
        return -1.0, 1.0
    if column.endswith("accuracy") or "_accuracy_" in column:
        return 0.0, 1.0
    if column.endswith(("_loss", "_cost")):
        return 0.0, math.inf
    return -math.inf, math.inf


def epoch_stats(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per configuration and epoch: mean, lo, hi and n of `column` over runs. From MIN_N_INTERVAL
    runs on, [lo, hi] is the 95% t-interval of the mean intersected with the metric's range (`band`
    = "interval"); with fewer runs it is their range (`band` = "range")."""
    columns = ["config", "epoch", "mean", "lo", "hi", "n", "band"]
    grouped = df.dropna(subset=[column]).groupby(["config", "epoch"], observed=True)[column]
    stats = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    if not len(stats):
        return pd.DataFrame(columns=columns)
    low, high = bounds(column)
    n = stats["count"].astype(int)
    t = n.map(lambda k: t_critical(0.95, k - 1) if k >= MIN_N_INTERVAL else math.nan)
    half = t * stats["std"] / np.sqrt(n)
    interval = n >= MIN_N_INTERVAL
    stats["lo"] = np.where(interval, np.maximum(stats["mean"] - half, low), stats["min"])
    stats["hi"] = np.where(interval, np.minimum(stats["mean"] + half, high), stats["max"])
    stats["n"] = n
    stats["band"] = np.where(interval, "interval", "range")
    return stats[columns]


def band_label(n: pd.Series | Sequence[int]) -> str:
    """What a shaded band means, for a legend: 'mean, 95% interval over 3 seeds' or 'range over 2'."""
    counts = sorted({int(k) for k in n if k > 1})
    if not counts:
        return ""
    seeds = "/".join(map(str, counts))
    if counts[0] >= MIN_N_INTERVAL:
        return f"band: mean, 95% interval over {seeds} seeds"
    return f"band: range over {seeds} seeds" + (
        " (95% interval from 3)" if counts[-1] >= MIN_N_INTERVAL else ""
    )


# --- tables -----------------------------------------------------------------------------------


def _still_improving(run: pd.DataFrame, best_epoch: float) -> bool:
    """The best validation epoch lies in the last 5% of the epochs (at least the last one) of a
    run that ran all its configured epochs: more epochs might still have helped."""
    last = run["epoch"].max()
    planned = run["train.epochs"].iloc[0] if "train.epochs" in run else last
    try:
        ran_all = last >= int(planned)
    except (TypeError, ValueError):
        ran_all = True
    return bool(ran_all and best_epoch >= last - max(0, math.floor(0.05 * last)))


def _metrics_of(run: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(PER_RUN, math.nan)
    val = run["val_accuracy"] if "val_accuracy" in run else None
    if val is None or val.isna().all():
        return out
    best = run.loc[val.idxmax()]  # the first epoch reaching the maximum, as fit() picks it
    final = run.loc[val.dropna().index[-1]]
    out |= {
        "best_epoch": float(best["epoch"]),
        "best_val_accuracy": best["val_accuracy"],
        "final_val_accuracy": final["val_accuracy"],
        "still_improving": float(_still_improving(run, best["epoch"])),
    }
    if "train_accuracy" in run:
        out["train_accuracy_at_best"] = best["train_accuracy"]
        out["gap_at_best"] = best["train_accuracy"] - best["val_accuracy"]
        out["final_gap"] = final["train_accuracy"] - final["val_accuracy"]
    if "test_accuracy" in run:
        out["test_accuracy_at_best"] = best["test_accuracy"]
        out["final_test_accuracy"] = final["test_accuracy"]
    for split in SPLITS:
        if f"{split}_loss" in run:
            out[f"{split}_loss_at_best"] = best[f"{split}_loss"]
    return out


def _is_metric(column: str) -> bool:
    return column in HISTORY_EXTRA or (
        column.split("_")[0] in SPLITS and column.endswith(("_loss", "_cost", "_accuracy"))
    )


def run_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its status and config, and PER_RUN metrics at its best validation epoch
    (the first epoch reaching its highest validation accuracy) and at its final epoch; fractions."""
    if "config" not in df:
        df = label_configs(df)
    first = df.drop_duplicates("run").drop(columns=[c for c in df if _is_metric(c)]).set_index("run")
    per_run = pd.DataFrame.from_dict(
        {run: _metrics_of(g) for run, g in df.groupby("run", sort=False)}, orient="index"
    )
    return first.join(per_run.astype("float64")).reset_index()


def _estimate(metric: str, values: pd.Series) -> Estimate:
    return median_range(values) if metric == "best_epoch" else mean_interval(values, *bounds(metric))


def summarize(df: pd.DataFrame, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration: n runs, `incomplete` (unfinished runs), and for each of SUMMARY
    `<metric>` with `<metric>_lo`, `<metric>_hi`, `<metric>_min`, `<metric>_max` over the runs.

    Accuracies (fractions) and the gap: the mean and its 95% t-interval intersected with the
    metric's range, from MIN_N_INTERVAL runs on (NaN below: read min and max, the values). The best
    epoch, an integer: the median, and lo/hi its range."""
    if by is not None or "config" not in df:
        df = label_configs(df, by)
    runs = run_metrics(df)
    rows = []
    for config, group in runs.groupby("config", observed=True, sort=True):
        row: dict[str, Any] = {
            "config": config,
            "n": len(group),
            "incomplete": int(group["incomplete"].sum()),
        }
        for metric in SUMMARY:
            est = _estimate(metric, group[metric] if metric in group else pd.Series(dtype=float))
            values = group[metric].dropna() if metric in group else pd.Series(dtype=float)
            row |= {
                metric: est.value,
                f"{metric}_lo": est.lo,
                f"{metric}_hi": est.hi,
                f"{metric}_min": values.min() if len(values) else math.nan,
                f"{metric}_max": values.max() if len(values) else math.nan,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def check_runs(df: pd.DataFrame) -> list[str]:
    """Warnings a reader must see: unfinished runs, statuses this report does not know, runs
    monitoring different splits or costs."""
    notes = []
    runs = df.drop_duplicates("run")
    for row in runs[runs["incomplete"]].itertuples():
        notes.append(
            f"run {row.run} is incomplete (status {row.status}, {row.epochs_run} epochs); "
            "it is shown as far as it got"
        )
    if unknown := sorted(set(runs["status"].astype(str)) - set(STATUSES)):
        notes.append(
            f"status {', '.join(unknown)} is not one this report knows ({', '.join(STATUSES)}): "
            "such runs are treated as incomplete"
        )
    for split in SPLITS:
        col = f"{split}_accuracy"
        if col in df:
            has = df.groupby("run", sort=False)[col].apply(lambda s: s.notna().any())
            if 0 < has.sum() < len(has) and not runs["incomplete"].all():
                missing = ", ".join(has.index[~has.to_numpy()])
                notes.append(
                    f"the {split} split was not monitored in run(s) {missing}: "
                    f"their {split} columns are blank"
                )
    if "val_accuracy" not in df:
        notes.append("no run monitored the validation split: no best epoch can be chosen")
    if "cost" in df and df["cost"].astype(str).nunique() > 1:
        notes.append(
            "runs use different cost functions ("
            + ", ".join(map(str, df["cost"].unique()))
            + "): their loss curves are not on one scale"
        )
    return notes


# --- studies ----------------------------------------------------------------------------------


def _is_study(obj: Any) -> bool:
    return type(obj).__name__ == "Study" and hasattr(obj, "trials")


def study_dir(name: str | os.PathLike[str]) -> Path:
    """The folder of a study: a path as given, else runs/studies/NAME."""
    path = Path(name)
    return path if path.exists() or len(path.parts) > 1 else Path("runs/studies") / path


def _spec(folder: Path) -> Any:
    """The study's spec.yaml (as `hpexp study` saved it, passwords masked), or None."""
    from omegaconf import OmegaConf

    return OmegaConf.load(folder / "spec.yaml") if (folder / "spec.yaml").is_file() else None


def _rdb_study(folder: Path, url: str, name: str | None, spec: Any):  # -> optuna.Study
    """A study in a database (PostgreSQL): opened through hpexp.study.storage (password from the
    environment as for `hpexp study`), named by the spec, or by the folder, or the only one there."""
    import optuna
    from omegaconf import OmegaConf

    from hpexp.study.storage import mask, open_storage

    settings = OmegaConf.create(
        {"storage": url, "storage_password_file": spec.get("storage_password_file") if spec else None}
    )
    try:
        storage = open_storage(settings, folder)
    except ValueError as e:
        raise ReportError(str(e)) from None
    names = optuna.study.get_all_study_names(storage)
    if name is None:
        name = folder.name if folder.name in names else (names[0] if len(names) == 1 else None)
    if name not in names:
        raise ReportError(
            f"no study {name or folder.name!r} in {mask(url)}; studies there: {', '.join(names)}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def open_study(study: Any, storage: str | None = None):  # -> optuna.Study
    """An Optuna study from a Study, a study folder, its journal.log, or a name under runs/studies.

    The storage is the one the study used: `storage` (a database URL) if given, else the one its
    folder's spec.yaml names (PostgreSQL), else the folder's journal.log."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if _is_study(study):
        return study
    path = study_dir(study)
    folder = path.parent if path.is_file() else path
    spec = _spec(folder) if folder.is_dir() else None
    url = storage or (spec.get("storage") if spec is not None else None)
    if url:
        return _rdb_study(folder, str(url), spec.get("name") if spec is not None else None, spec)
    journal = path if path.is_file() else path / "journal.log"
    if not journal.is_file():
        parent = Path("runs/studies")
        known = sorted(
            p.name for p in parent.glob("*") if (p / "journal.log").is_file() or (p / "spec.yaml").is_file()
        )
        raise ReportError(
            f"no study {str(study)!r}: {journal} does not exist and no spec.yaml names a database"
            + (f"; studies under {parent}: {', '.join(known)}" if known else "")
        )
    journal_storage = JournalStorage(JournalFileBackend(str(journal)))
    names = optuna.study.get_all_study_names(journal_storage)
    name = journal.parent.name if journal.parent.name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ReportError(f"{journal} holds studies {names}; name one by its folder")
    return optuna.load_study(study_name=name, storage=journal_storage)


def search_space_log(study: Any, folder: Path | None = None) -> dict[str, bool]:
    """Parameter -> True where the search space samples it on a log scale: from the study folder's
    spec.yaml when there is one, else from the distributions Optuna stored with the trials."""
    spec = _spec(folder) if folder is not None and folder.is_dir() else None
    if spec is not None and spec.get("search") is not None:
        from hpexp.study.spec import parse_space

        try:
            return {p.name: p.log for p in parse_space(spec.search)}
        except ValueError:
            pass  # an older spec this version cannot parse: the stored distributions say the same
    log: dict[str, bool] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            log.setdefault(name, bool(getattr(dist, "log", False)))
    return log


def load_trials(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, value, `params_<name>` for every parameter, the run's
    status, best epoch and directory (user attrs), epochs reported and the last reported value."""
    study = open_study(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.values is not None else math.nan,
                **{f"params_{k}": v for k, v in t.params.items()},
                "status": t.user_attrs.get("status"),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "run_dir": t.user_attrs.get("run_dir"),
                "epochs": len(steps),
                "last_value": t.intermediate_values[steps[-1]] if steps else math.nan,
                "duration_s": t.duration.total_seconds() if t.duration else math.nan,
            }
        )
    if not rows:
        raise ReportError(f"study {study.study_name!r} has no trials yet")
    df = pd.DataFrame(rows)
    return df.astype({"value": "float64", "last_value": "float64", "best_epoch": "float64"})


def load_trial_curves(study: Any) -> pd.DataFrame:
    """One row per trial x reported step: number, state, step (the epoch), value."""
    study = open_study(study)
    rows = [
        {"number": t.number, "state": t.state.name, "step": step, "value": value}
        for t in study.get_trials(deepcopy=False)
        for step, value in sorted(t.intermediate_values.items())
    ]
    return pd.DataFrame(rows, columns=["number", "state", "step", "value"]).astype({"value": "float64"})


def _trial_run_dir(study_path: Path | None, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    for candidate in (path, *([study_path / path, study_path / "trials" / path.name] if study_path else [])):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def missing_run_dirs(study: Any, study_path: Path | None = None) -> dict[int, str]:
    """Trial number -> the run directory its trial recorded but this machine does not have (the
    trial ran on another machine, or its folder was moved): their curves come from the storage."""
    return {
        t.number: str(t.user_attrs["run_dir"])
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("run_dir") and _trial_run_dir(study_path, t.user_attrs["run_dir"]) is None
    }


def fetch_run_dirs(study: Any, study_path: Path | None) -> list[int]:
    """Copy the run directories this machine lacks from the study's artifact store (where the
    workers uploaded each trial's files, hpexp.study.artifacts) into `study_path`/trials/NNNN;
    returns the trials fetched. A store this machine cannot reach leaves them missing."""
    from hpexp.study.artifacts import download_trials

    missing = missing_run_dirs(study, study_path)
    if not missing or study_path is None or not study.user_attrs.get("artifact_store"):
        return []
    wanted = [t for t in study.get_trials(deepcopy=False) if t.number in missing]
    try:
        return sorted(download_trials(study, Path(study_path) / "trials", trials=wanted))
    except Exception as e:  # the store's own errors share no base class
        warnings.warn(
            f"study {study.study_name!r}: artifacts not fetched ({type(e).__name__}: {e})", stacklevel=2
        )
        return []


def _load_study_runs(study: Any, study_path: Path | None = None) -> pd.DataFrame:
    fetch_run_dirs(study, study_path)
    rows = []
    for t in study.get_trials(deepcopy=False):
        path = _trial_run_dir(study_path, t.user_attrs.get("run_dir"))
        if path is not None:
            rows += _read_run(path.resolve(), f"trial {t.number:04d}", {"trial": t.number})
    if not rows:
        raise ReportError(f"study {study.study_name!r}: no trial has a run directory (user attr run_dir)")
    return _frame(rows)


MIN_IMPORTANCE_TRIALS = 20  # fewer completed trials: the page says "too few trials" instead


def param_importances(study: Any, n_boot: int = 20, seed: int = 0) -> pd.DataFrame:
    """Optuna's default importance evaluator (PED-ANOVA; no scikit-learn) over completed trials, with
    a bootstrap 90% interval (`lo`, `hi`: 5th and 95th percentiles over `n_boot` resamples of the
    completed trials). Empty with fewer than MIN_IMPORTANCE_TRIALS completed trials: importances
    from a handful of trials are noise."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(study)
    columns = ["importance", "lo", "hi"]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return pd.DataFrame(columns=columns, dtype="float64")
    try:
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # a single parameter value, or nothing varies
        return pd.DataFrame(columns=columns, dtype="float64")
    rng = np.random.default_rng(seed)
    boots: list[dict[str, float]] = []
    for _ in range(n_boot):
        resample = optuna.create_study(directions=study.directions)
        resample.add_trials([done[i] for i in rng.integers(0, len(done), len(done))])
        try:
            boots.append(optuna.importance.get_param_importances(resample))
        except (RuntimeError, ValueError):
            continue
    table = pd.DataFrame({"importance": pd.Series(values, dtype="float64")})
    samples = pd.DataFrame(boots, columns=table.index).fillna(0.0)
    table["lo"] = samples.quantile(0.05).reindex(table.index) if len(samples) else math.nan
    table["hi"] = samples.quantile(0.95).reindex(table.index) if len(samples) else math.nan
    return table


def format_cell(
    value: float,
    lo: float,
    hi: float,
    lowest: float,
    highest: float,
    n: int,
    scale: float = 100.0,
    digits: int = 2,
    integer: bool = False,
) -> str:
    """One summary cell: '88.32 [87.96, 88.68]' (mean, 95% interval), '83.04 (values 81.21, 84.87)'
    below MIN_N_INTERVAL runs, '383 (range 176-399)' for integers (median, range), '' for none."""
    if math.isnan(value):
        return ""
    if integer:
        text = f"{value:g}"
        return text if n < 2 or lowest == highest else f"{text} (range {lowest:g}-{highest:g})"
    f = f"{{:.{digits}f}}"
    text = f.format(value * scale)
    if n >= MIN_N_INTERVAL and not math.isnan(lo):
        return f"{text} [{f.format(lo * scale)}, {f.format(hi * scale)}]"
    if n == 2:
        return f"{text} (values {f.format(lowest * scale)}, {f.format(highest * scale)})"
    return text


def summary_cell(row: pd.Series, metric: str) -> str:
    """`format_cell` of one configuration's metric in a `summarize` table."""
    lo, hi, lowest, highest = (row[f"{metric}_{s}"] for s in ("lo", "hi", "min", "max"))
    return format_cell(row[metric], lo, hi, lowest, highest, int(row["n"]), integer=metric == "best_epoch")


SUMMARY_NAMES = {
    "best_epoch": "best epoch",
    "best_val_accuracy": "val % at best epoch",
    "final_val_accuracy": "val % at final epoch",
    "train_accuracy_at_best": "train % at best epoch",
    "gap_at_best": "gap (points) at best epoch",
    "final_gap": "gap (points) at final epoch",
    "test_accuracy_at_best": "test % at best epoch",
    "final_test_accuracy": "test % at final epoch",
}


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The summary table for reading: accuracies and gaps in percent (points), each as the mean with
    its 95% interval (from 3 runs), or the values (2 runs); the best epoch as median and range."""
    shown = table[["config", "n"]].copy()
    for metric in SUMMARY:
        if table[metric].isna().all():
            continue
        shown[SUMMARY_NAMES[metric]] = [summary_cell(row, metric) for _, row in table.iterrows()]
    if table["incomplete"].any():
        shown["incomplete"] = table["incomplete"]
    return shown
