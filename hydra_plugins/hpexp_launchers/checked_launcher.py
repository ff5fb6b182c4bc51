"""`hpexp train -m`'s default launcher (`hydra/launcher=checked`): Hydra's basic launcher, one job
after another in this process, but every job of the grid is composed and checked first, so a bad
value anywhere in the grid is refused before any point trains (the basic launcher trained the points
before it, then failed with a traceback)."""

import logging
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.hpexp_launchers.population_launcher import checked_jobs

log = logging.getLogger(__name__)


# `hydra/launcher=checked`
ConfigStore.instance().store(
    group="hydra/launcher", name="checked", node={"_target_": f"{__name__}.CheckedLauncher"}, provider="hpexp"
)


class CheckedLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        jobs = checked_jobs(self.config, self.hydra_context, job_overrides, initial_job_idx)
        log.info(f"Launching {len(jobs)} jobs locally")
        returns = []
        for idx, (overrides, cfg, _, _) in enumerate(jobs, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=cfg,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns
