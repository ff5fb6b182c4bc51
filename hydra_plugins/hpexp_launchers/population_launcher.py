"""A Hydra launcher that trains a multirun grid as populations (`hydra/launcher=population`).

Hydra hands a launcher every job of a sweep at once. This one composes each job's config, groups
the jobs that differ only in per-member values (seed, eta, lmbda, momentum, dropout p, epochs,
schedule, stopping, init; see hpexp.train.runner.population_key) and trains each group in one vectorized
pass with hpexp.train.runner.run_population. Every job still gets its own run directory in the sweep
folder, exactly as the basic launcher would make it, so reports cannot tell the difference.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


# `hydra/launcher=population`
ConfigStore.instance().store(
    group="hydra/launcher",
    name="population",
    node={"_target_": f"{__name__}.PopulationLauncher"},
    provider="hpexp",
)


def checked_jobs(
    config: DictConfig, hydra_context: HydraContext, job_overrides: Any, initial_job_idx: int
) -> list[tuple[list[str], DictConfig, Any, Path]]:
    """Every job of a sweep composed and checked before any trains, as (overrides, Hydra config,
    task config, run directory): a bad point of the grid is refused up front, in one line naming the
    value (exit 2), and the sweep folder made for it is removed. Both hpexp launchers start here."""
    from hpexp.cli import _discard
    from hpexp.data.mnist import DataError
    from hpexp.train.runner import task_config, validate

    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = idx
        HydraConfig.instance().set_config(cfg)
        task = task_config(cfg)
        out = Path(task.out_dir) if task.out_dir else sweep_dir / str(cfg.hydra.sweep.subdir)
        jobs.append((list(overrides), cfg, task, out))
    try:
        for _, _, task, _ in jobs:
            validate(task)
    except (ValueError, DataError) as e:  # bad input: one clear line, as `hpexp train` gives
        print(f"hpexp train: error: {e}", file=sys.stderr)
        _discard(Path(), sweep_dir)
        raise SystemExit(2) from None
    return jobs


class PopulationLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from hpexp.cli import exit_for
        from hpexp.data.mnist import DataError
        from hpexp.train import rundir
        from hpexp.train.runner import population_key, run_population

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        jobs = checked_jobs(self.config, self.hydra_context, job_overrides, initial_job_idx)
        groups: dict[str, list[int]] = {}
        for i, (_, _, task, _) in enumerate(jobs):
            groups.setdefault(population_key(task), []).append(i)
        log.info(f"Training {len(jobs)} jobs as {len(groups)} population(s)")
        for members in groups.values():
            for i in members:
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(jobs[i][0]))}")
            try:
                run_population([jobs[i][2] for i in members], [jobs[i][3] for i in members])
            except (ValueError, DataError) as e:  # what only training finds (the data, say)
                print(f"hpexp train: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
        print(f"run directories: {sweep_dir}\nreport: hpexp report {sweep_dir}")
        # A run that diverged, stalled or failed makes the command fail, as with the basic launcher.
        exit_for([str(rundir.read_summary(out).get("status")) for *_, out in jobs])
        return [
            JobReturn(
                overrides=o,
                cfg=task,
                hydra_cfg=cfg,
                working_dir=os.getcwd(),
                task_name="train",
                status=JobStatus.COMPLETED,
                _return_value=out,
            )
            for o, cfg, task, out in jobs
        ]
