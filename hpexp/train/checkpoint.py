"""Checkpoints: everything the training loop needs to go on from the end of an epoch exactly as if
it had never stopped.

A `State` holds the parameters of the members still training, the optimizer's momentum, every
random stream's position (`bit_generator.state`), each member's history (from which schedules and
stopping rules re-derive their state, see hpexp.train.schedules), best record and best-epoch
weights, the results of members that already ended, and the measurements the run chose its ways of
computing by (hpexp.train.batching: a resumed run chooses as before). `save` writes it as one .npz
(arrays plus a JSON header), atomically, so a run killed at any moment keeps its previous checkpoint
whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpexp.train import rundir

__all__ = ["State", "load", "save"]

Record = dict[str, Any]


@dataclass
class State:
    """The training loop after `epoch` epochs (0: before the first)."""

    epoch: int
    active: list[int]  # the members still training, in the population network's order
    params: list[np.ndarray]  # the population network's parameters (active members only)
    velocity: list[np.ndarray]  # the optimizer's momentum buffers, as the optimizer holds them
    histories: list[list[Record]]
    best: list[Record | None]
    best_params: list[list[np.ndarray] | None]
    ended: dict[int, Record]  # member -> its result (status, stop_reason, best/restored epoch, params)
    rngs: dict[str, Any]  # stream name -> bit_generator.state (a list of them for per-member orders)
    members: list[str] = field(default_factory=list)  # run folders, relative to the checkpoint's
    plan: dict[str, Any] = field(default_factory=dict)  # a population-based training plan's state (JSON)
    measured: dict[str, dict[str, float]] = field(default_factory=dict)  # batching's tables, by case


def _arrays(prefix: str, arrays: list[np.ndarray] | None) -> dict[str, np.ndarray]:
    return {f"{prefix}_{i}": a for i, a in enumerate(arrays or [])}


def save(path: Path, state: State) -> None:
    arrays = _arrays("param", state.params) | _arrays("velocity", state.velocity)
    for k, saved in enumerate(state.best_params):
        arrays |= _arrays(f"best{k}", saved)
    ended = {}
    for k, result in state.ended.items():
        arrays |= _arrays(f"ended{k}", result["params"])
        ended[str(k)] = {key: v for key, v in result.items() if key != "params"} | {
            "n_params": len(result["params"])
        }
    header = {
        "epoch": state.epoch,
        "active": state.active,
        "n_params": len(state.params),
        "n_velocity": len(state.velocity),
        "histories": state.histories,
        "best": state.best,
        "best_params": [None if b is None else len(b) for b in state.best_params],
        "ended": ended,
        "rngs": state.rngs,
        "members": state.members,
        "plan": state.plan,
        "measured": state.measured,
    }
    rundir.write_atomic(path, rundir.npz_bytes(header=np.array(json.dumps(header)), **arrays))


def load(path: Path) -> State:
    with np.load(path, allow_pickle=False) as f:
        header = json.loads(str(f["header"]))

        def arrays(prefix: str, n: int) -> list[np.ndarray]:
            return [f[f"{prefix}_{i}"] for i in range(n)]

        ended = {
            int(k): {key: v for key, v in r.items() if key != "n_params"}
            | {"params": arrays(f"ended{k}", r["n_params"])}
            for k, r in header["ended"].items()
        }
        return State(
            epoch=header["epoch"],
            active=header["active"],
            params=arrays("param", header["n_params"]),
            velocity=arrays("velocity", header["n_velocity"]),
            histories=header["histories"],
            best=header["best"],
            best_params=[
                None if n is None else arrays(f"best{k}", n) for k, n in enumerate(header["best_params"])
            ],
            ended=ended,
            rngs=header["rngs"],
            members=header["members"],
            plan=header.get("plan", {}),
            measured=header.get("measured", {}),
        )
