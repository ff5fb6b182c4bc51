"""The private Optuna and Hydra APIs the study package uses, each checked directly, so an upgrade
that changes one fails here, loudly, instead of silently changing a study (compose_trial, for
one, falls back to a slower path on any error)."""

from __future__ import annotations

import inspect

import optuna
from omegaconf import OmegaConf
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import TrialState


def test_study_pop_waiting_trial_id_hands_each_enqueued_trial_out_once():
    """workers._pop: only enqueued trials run, so the budget is exact with any number of workers."""
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    first, second = study._pop_waiting_trial_id(), study._pop_waiting_trial_id()
    assert study._pop_waiting_trial_id() is None  # never a new trial
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    trial = optuna.Trial(study, first)  # the public Trial over a popped id
    assert trial.number == 0 and trial.suggest_float("x", 0, 3) == 1.0
    assert optuna.Trial(study, second).number == 1


def test_storage_set_trial_user_attr_by_frozen_trials_id():
    """storage.fail_stale names the reason on a trial another (dead) process owned."""
    study = optuna.create_study()
    study.enqueue_trial({})
    popped = study._pop_waiting_trial_id()
    (frozen,) = study.get_trials()
    assert frozen._trial_id == popped
    study._storage.set_trial_user_attr(frozen._trial_id, "fail_reason", "worker died")
    study.tell(frozen.number, state=TrialState.FAIL)
    assert study.get_trials()[0].user_attrs == {"fail_reason": "worker died"}


def test_hydra_apply_overrides_to_config():
    """spec.compose_trial applies value overrides to a copy of a composed config."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create({"optimizer": {"eta": 0.5}, "train": {"monitor": ["val"]}})
    OmegaConf.set_struct(cfg, True)
    overrides = OverridesParser.create().parse_overrides(["optimizer.eta=0.25", "train.monitor=[train,val]"])
    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)
    assert cfg.optimizer.eta == 0.25 and list(cfg.train.monitor) == ["train", "val"]


def test_journal_file_open_lock_takes_no_grace_period():
    """journal.OwnedLock subclasses the public JournalFileOpenLock, built with grace_period=None."""
    assert "grace_period" in inspect.signature(JournalFileOpenLock).parameters
    assert JournalFileOpenLock("/nonexistent/journal.log", grace_period=None).grace_period is None
