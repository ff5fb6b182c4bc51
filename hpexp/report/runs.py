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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hpexp.stats import mean_ci
from hpexp.train import rundir

__all__ = [
    "ReportError",
    "check_runs",
    "config_columns",
    "epoch_stats",
    "find_run_dirs",
    "flatten",
    "format_summary",
    "label_configs",
    "load_runs",
    "load_trial_curves",
    "load_trials",
    "open_study",
    "param_importances",
    "run_metrics",
    "study_dir",
    "summarize",
    "varying_keys",
]

SPLITS = ("train", "val", "test")
ENDED = ("completed", "diverged", "pruned")  # statuses of runs that finished writing their summary
RUN_COLUMNS = ("run", "path", "status", "incomplete", "stop_reason", "epochs_run", "trial")
HISTORY_EXTRA = ("epoch", "eta", "weight_norm", "seconds")
# Config keys that differ between runs without making them different configurations.
NOT_CONFIG = ("seed", "out_dir", "data.dir")
PER_RUN = (
    "best_epoch",
    "best_val_accuracy",
    "final_val_accuracy",
    "train_accuracy_at_best",
    "gap_at_best",
    "test_accuracy_at_best",
)


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
    status = summary.get("status", "unknown")
    info = {
        "run": label,
        "path": str(path),
        "status": status,
        "incomplete": status not in ENDED,
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


def epoch_stats(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per configuration and epoch: mean, lo, hi (95% CI over runs) and n of `column`."""
    rows = []
    for (config, epoch), values in df.groupby(["config", "epoch"], observed=True)[column]:
        mean, half, n = mean_ci(values)
        half = 0.0 if math.isnan(half) else half
        rows.append(
            {"config": config, "epoch": epoch, "mean": mean, "lo": mean - half, "hi": mean + half, "n": n}
        )
    return pd.DataFrame(rows, columns=["config", "epoch", "mean", "lo", "hi", "n"])


# --- tables -----------------------------------------------------------------------------------


def _metrics_of(run: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(PER_RUN, math.nan)
    val = run["val_accuracy"] if "val_accuracy" in run else None
    if val is None or val.isna().all():
        return out
    best = run.loc[val.idxmax()]  # the first epoch reaching the maximum, as fit() picks it
    out |= {
        "best_epoch": float(best["epoch"]),
        "best_val_accuracy": best["val_accuracy"],
        "final_val_accuracy": val.dropna().iloc[-1],
    }
    if "train_accuracy" in run:
        out["train_accuracy_at_best"] = best["train_accuracy"]
        out["gap_at_best"] = best["train_accuracy"] - best["val_accuracy"]
    if "test_accuracy" in run:
        out["test_accuracy_at_best"] = best["test_accuracy"]
    return out


def _is_metric(column: str) -> bool:
    return column in HISTORY_EXTRA or (
        column.split("_")[0] in SPLITS and column.endswith(("_loss", "_cost", "_accuracy"))
    )


def run_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its status and config, and PER_RUN metrics at its best validation epoch."""
    if "config" not in df:
        df = label_configs(df)
    first = df.drop_duplicates("run").drop(columns=[c for c in df if _is_metric(c)]).set_index("run")
    per_run = pd.DataFrame.from_dict(
        {run: _metrics_of(g) for run, g in df.groupby("run", sort=False)}, orient="index"
    )
    return first.join(per_run.astype("float64")).reset_index()


def summarize(df: pd.DataFrame, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration: n runs, and for each of PER_RUN the mean and its 95% CI
    half-width over the runs (`<metric>` and `<metric>_ci`); `incomplete` counts unfinished runs."""
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
        for metric in PER_RUN:
            mean, half, _ = mean_ci(group[metric])
            row |= {metric: mean, f"{metric}_ci": half}
        rows.append(row)
    return pd.DataFrame(rows)


def check_runs(df: pd.DataFrame) -> list[str]:
    """Warnings a reader must see: unfinished runs, runs monitoring different splits or costs."""
    notes = []
    runs = df.drop_duplicates("run")
    for row in runs[runs["incomplete"]].itertuples():
        notes.append(
            f"run {row.run} is incomplete (status {row.status}, {row.epochs_run} epochs); "
            "it is shown as far as it got"
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
            + "): their cost curves are not on one scale"
        )
    return notes


# --- studies ----------------------------------------------------------------------------------


def _is_study(obj: Any) -> bool:
    return type(obj).__name__ == "Study" and hasattr(obj, "trials")


def study_dir(name: str | os.PathLike[str]) -> Path:
    """The folder of a study: a path as given, else runs/studies/NAME."""
    path = Path(name)
    return path if path.exists() or len(path.parts) > 1 else Path("runs/studies") / path


def open_study(study: Any):  # -> optuna.Study
    """An Optuna study from a Study, a study folder, its journal.log, or a name under runs/studies."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if _is_study(study):
        return study
    path = study_dir(study)
    journal = path if path.is_file() else path / "journal.log"
    if not journal.is_file():
        parent = Path("runs/studies")
        known = sorted(p.name for p in parent.glob("*") if (p / "journal.log").is_file())
        raise ReportError(
            f"no study {str(study)!r}: {journal} does not exist"
            + (f"; studies under {parent}: {', '.join(known)}" if known else "")
        )
    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = optuna.study.get_all_study_names(storage)
    name = journal.parent.name if journal.parent.name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ReportError(f"{journal} holds studies {names}; name one by its folder")
    return optuna.load_study(study_name=name, storage=storage)


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


def _load_study_runs(study: Any, study_path: Path | None = None) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        path = _trial_run_dir(study_path, t.user_attrs.get("run_dir"))
        if path is not None:
            rows += _read_run(path.resolve(), f"trial {t.number:04d}", {"trial": t.number})
    if not rows:
        raise ReportError(f"study {study.study_name!r}: no trial has a run directory (user attr run_dir)")
    return _frame(rows)


def param_importances(study: Any) -> pd.Series:
    """Optuna's default importance evaluator (PED-ANOVA; no scikit-learn), over completed trials."""
    import optuna

    study = open_study(study)
    try:
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few completed trials, or a single parameter value
        return pd.Series(dtype="float64", name="importance")
    return pd.Series(values, dtype="float64", name="importance")


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The summary table for reading: accuracies in %, each metric as 'mean ± CI' (CI only n >= 2)."""
    shown = table[["config", "n"]].copy()
    for metric in PER_RUN:
        scale, digits = (1, 1) if metric == "best_epoch" else (100, 2)
        mean, half = table[metric] * scale, table[f"{metric}_ci"] * scale
        shown[metric if scale == 1 else f"{metric} %"] = [
            "" if math.isnan(m) else f"{m:.{digits}f}" + ("" if math.isnan(h) else f" ± {h:.{digits}f}")
            for m, h in zip(mean, half, strict=True)
        ]
    if table["incomplete"].any():
        shown["incomplete"] = table["incomplete"]
    return shown
