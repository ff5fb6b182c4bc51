"""Artifacts that follow the trials: each trial's run directory files go to Optuna's artifact store.

A worker uploads a trial's `config.yaml`, `history.csv`, `summary.json` (and `weights.npz` with
`artifacts.weights: true`) through `optuna.artifacts.upload_artifact` before it tells the trial,
so the files are linked to the trial in the study's storage. Any machine that reaches the storage
and the store gets them back with `download_trials` (the reports do), whichever machine ran them.

The store (`artifacts.store` in the spec; the study records it as its `artifact_store` attribute):
  null                 a file system store in runs/studies/NAME/artifacts (give a shared path when
                       the workers run on other machines)
  PATH or file://PATH  optuna.artifacts.FileSystemArtifactStore
  s3://BUCKET          optuna.artifacts.Boto3ArtifactStore (boto3; credentials as boto3 finds them)
  gs://BUCKET          optuna.artifacts.GCSArtifactStore (google-cloud-storage)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from hpexp.train.runner import ConfigError

__all__ = [
    "FILES",
    "WEIGHTS",
    "check_artifacts",
    "download_trials",
    "open_store",
    "store_location",
    "upload_run",
]

FILES = ("config.yaml", "history.csv", "summary.json")
WEIGHTS = "weights.npz"
ATTR = "artifact_store"  # the study's user attribute naming its store


def _settings(spec: DictConfig) -> dict[str, Any]:
    raw = spec.get("artifacts") or {}
    return {"store": raw.get("store"), "weights": bool(raw.get("weights", False))}


def store_location(spec: DictConfig, folder: Path) -> str:
    """Where the study's artifacts go: the spec's `artifacts.store`, else `artifacts/` in the study's
    folder (absolute, so every worker and report names the same place)."""
    store = _settings(spec)["store"]
    if store:
        return str(store)
    return str((Path(folder) / "artifacts").resolve())


def check_artifacts(spec: DictConfig, base: DictConfig) -> None:
    """Refuse, before any trial, a store that cannot be used or weights that no trial would save."""
    raw = spec.get("artifacts") or {}
    if unknown := set(raw) - {"store", "weights"}:
        raise ConfigError(f"artifacts: unknown key(s) {sorted(unknown)}; valid: store, weights")
    settings = _settings(spec)
    if settings["weights"] and not base.train.save_weights:
        raise ConfigError(
            "artifacts.weights is true but the trials save no weights: add train.save_weights=true to base"
        )
    if settings["store"]:
        open_store(str(settings["store"]))


@functools.cache
def open_store(location: str) -> Any:
    """The artifact store at `location` (a path, file://PATH, s3://BUCKET or gs://BUCKET)."""
    from optuna import artifacts

    scheme, _, rest = location.partition("://") if "://" in location else ("file", "", location)
    if scheme in ("s3", "gs"):
        if not rest or "/" in rest.rstrip("/"):
            raise ConfigError(
                f"artifacts.store {location!r}: Optuna's {scheme}:// store takes a bucket, not a prefix"
            )
        try:
            if scheme == "s3":
                return artifacts.Boto3ArtifactStore(rest.rstrip("/"))
            return artifacts.GCSArtifactStore(rest.rstrip("/"))
        except ImportError as e:
            raise ConfigError(
                f"artifacts.store {location!r} needs {e.name or 'its client library'}"
            ) from None
    if scheme != "file":
        raise ConfigError(
            f"artifacts.store {location!r}: unknown scheme {scheme}://; valid: a path, file://, s3://, gs://"
        )
    folder = Path(rest).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"artifacts.store {location!r}: cannot create {folder}: {e.strerror}") from None
    return artifacts.FileSystemArtifactStore(folder)


def upload_run(trial: optuna.Trial, run_dir: Path, spec: DictConfig, folder: Path) -> list[str]:
    """Upload the trial's run directory files (those that exist: a failed run may have none) to the
    study's store, linked to the still-running trial; returns the names uploaded. A store that fails
    is the trial's note (`artifact_error`), not its outcome."""
    names = [*FILES, *([WEIGHTS] if _settings(spec)["weights"] else [])]
    done: list[str] = []
    try:
        store = open_store(store_location(spec, folder))
        for name in names:
            path = Path(run_dir) / name
            if path.is_file():
                optuna.artifacts.upload_artifact(
                    artifact_store=store, file_path=str(path), study_or_trial=trial
                )
                done.append(name)
    except Exception as e:  # the store's own errors share no base class
        trial.set_user_attr("artifact_error", f"{type(e).__name__}: {e}")
    return done


def download_trials(
    study: optuna.Study,
    dest: Path,
    *,
    store: str | None = None,
    trials: Iterable[FrozenTrial] | None = None,
) -> dict[int, Path]:
    """Download every trial's artifacts into `dest/NNNN/` (a run directory per trial number) from the
    study's store (its `artifact_store` attribute, or `store`); returns {trial number: folder} for the
    trials that have any. Files already there are kept, so a second call only fetches what is new."""
    location = store or study.user_attrs.get(ATTR)
    if not location:
        raise ConfigError(
            f"study {study.study_name!r} names no artifact store (attribute {ATTR!r}); pass store=PATH|URL"
        )
    reader = open_store(str(location))
    out: dict[int, Path] = {}
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        if not metas:
            continue
        folder = Path(dest) / f"{t.number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for meta in _latest(metas):
            target = folder / Path(meta.filename).name
            if not target.exists():
                partial = target.with_name(f".{target.name}.part")
                partial.unlink(missing_ok=True)
                optuna.artifacts.download_artifact(
                    artifact_store=reader, file_path=str(partial), artifact_id=meta.artifact_id
                )
                partial.replace(target)
        out[t.number] = folder
    return out


def _latest(metas: Sequence[Any]) -> list[Any]:
    """One artifact per file name (the last uploaded, as Optuna lists them in upload order)."""
    return list({m.filename: m for m in metas}.values())
