"""Config checks that need no component built: value types, finite numbers, seeds, monitored splits,
and presets overridden into another technique. Each error names the key, the bad value and what
would be valid; `hpexp.train.runner.validate` runs them before anything else.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from hpexp.paths import config_dir

__all__ = ["ConfigError", "check_finite", "check_preset", "check_seeds", "check_splits", "check_types"]


class ConfigError(ValueError):
    """A config value that cannot work, found before any training."""


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def check_finite(cfg: DictConfig) -> None:
    """No number anywhere in the config is inf or nan (`optimizer.eta=inf` trains nothing)."""
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")


def _seed_error(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{key} must be an integer >= 0, got {value!r}"
    return None


def check_seeds(cfg: DictConfig) -> None:
    """`seed` is a non-negative integer; `train.seeds`, if set, a list of distinct ones."""
    if error := _seed_error("seed", cfg.seed):
        raise ConfigError(error)
    seeds = cfg.train.get("seeds")
    if seeds is None:
        return
    if not OmegaConf.is_list(seeds) or len(seeds) == 0:
        raise ConfigError(f"train.seeds must be a non-empty list of integers, e.g. [1,2,3], got {seeds!r}")
    for i, seed in enumerate(seeds):
        if error := _seed_error(f"train.seeds[{i}]", seed):
            raise ConfigError(error)
    if len(set(seeds)) < len(seeds):
        twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
        raise ConfigError(f"train.seeds lists {twice} more than once; each seed is one run: {list(seeds)}")


def check_splits(cfg: DictConfig, splits: tuple[str, ...], *, selection: bool) -> None:
    """`train.monitor` lists known splits, each once, and `val` wherever a choice reads it."""
    monitor = cfg.train.monitor
    if not OmegaConf.is_list(monitor) or len(monitor) == 0:
        raise ConfigError(
            f"train.monitor must list the splits to evaluate, e.g. [train,val]; got {monitor!r}"
        )
    if bad := [s for s in monitor if s not in splits]:
        raise ConfigError(f"train.monitor has unknown split(s) {bad}; valid: {list(splits)}")
    if len(set(monitor)) < len(monitor):
        raise ConfigError(f"train.monitor lists a split more than once: {list(monitor)}")
    if "val" in monitor:
        return
    if cfg.train.get("restore_best"):
        raise ConfigError(
            f"train.restore_best=true picks the best-validation epoch, but train.monitor={list(monitor)} "
            f"does not evaluate val; add val to train.monitor"
        )
    if selection:
        raise ConfigError(
            f"a search selects by the validation split, but train.monitor={list(monitor)} lacks val; add val"
        )


def _expects(annotation: Any) -> set[str]:
    return set(re.findall(r"\w+", str(annotation)))


def check_types(node: DictConfig, group: str) -> None:
    """Each field of a group's dataclass gets a value of its type: `optimizer.eta=abc` is refused
    here, naming the key, instead of failing deep inside NumPy."""
    try:
        cls = get_class(node._target_)
    except Exception:  # noqa: BLE001 - instantiate reports an unknown target itself
        return
    if not dataclasses.is_dataclass(cls):
        return
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in node:
            continue
        value, kinds = node[f.name], _expects(f.type)
        if value is None and "None" in kinds:
            continue
        if "bool" in kinds and not kinds & {"int", "float"}:
            ok, what = isinstance(value, bool), "true or false"
        elif "float" in kinds:
            ok, what = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif "int" in kinds:
            ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        else:
            continue
        if not ok:
            null = " or null" if "None" in kinds else ""
            raise ConfigError(f"{group}.{f.name} must be {what}{null}, got {value!r}")


# The fields that make a regularizer preset the technique its name says. The presets are one class,
# so `regularizer=none regularizer.lmbda=0.1` would train L2 under the name "none": refused. Fields
# not listed combine freely (l2 plus dropout, dropout plus max-norm), and a strength of zero (an L2
# sweep's lmbda=0 baseline) is the same technique at zero strength, not another one.
PRESET_FIELDS = {
    "none": ("lmbda", "l1_ratio", "p", "p_input", "max_norm"),
    "l2": ("l1_ratio",),
    "l1": ("l1_ratio",),
}


def check_preset(cfg: DictConfig) -> None:
    """The chosen regularizer preset still trains what its name says."""
    name = OmegaConf.select(cfg, "choices.regularizer")
    node = cfg.get("regularizer")
    if not isinstance(name, str) or not isinstance(node, DictConfig):
        return
    if name == "elastic_net" and not 0 < node.get("l1_ratio", 0.5) < 1:
        raise ConfigError(
            f"regularizer=elastic_net needs regularizer.l1_ratio strictly between 0 and 1, got "
            f"{node.l1_ratio} (0 is regularizer=l2, 1 is regularizer=l1)"
        )
    fixed = PRESET_FIELDS.get(name)
    path = config_dir() / "regularizer" / f"{name}.yaml"
    if fixed is None or not path.exists():
        return
    preset = OmegaConf.load(path)
    assert isinstance(preset, DictConfig)
    changed = [f"regularizer.{k}={node.get(k)}" for k in fixed if node.get(k) != preset.get(k)]
    if changed:
        hint = "choose the preset that trains it (regularizer=l2, l1, elastic_net, dropout, max_norm)"
        if name != "none":
            hint = "regularizer=l1 or regularizer=elastic_net for another l1_ratio"
        raise ConfigError(
            f"regularizer={name} with {', '.join(changed)} would train another technique under the "
            f"name {name!r}; {hint}"
        )
