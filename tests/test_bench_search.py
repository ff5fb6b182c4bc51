"""The search benchmark as a job that accumulates across sessions: rows written once per finished
search, skipped when done, a search resumed and never scored twice, and reports/search/README.md
rebuilt from the committed rows alone."""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf

from hpexp.paths import source_commit
from hpexp.study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "search"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _module("bench_search")
report = _module("search_report")


def test_the_committed_report_regenerates_from_the_committed_rows(tmp_path):
    """`bench_search.py --report` from a clone writes the README and summary exactly as committed
    (a stale page, or a row left out of the commit, fails here)."""
    report.write(tmp_path, bench.read_rows(REPORT / "tables" / "runs.csv"))
    assert (tmp_path / "README.md").read_text() == (REPORT / "README.md").read_text()
    assert (tmp_path / "tables" / "search.csv").read_text() == (REPORT / "tables" / "search.csv").read_text()


def row(method: str, seed: int, test: float, **changes) -> dict:
    base = {
        "study": "book_l2_mlp30",
        "method": method,
        "settings": f"{method} x=1; final_seeds=3",
        "baseline": "no",
        "budget": 60,
        "sampler_seed": seed,
        "trials": 2,
        "trial_epochs": 60,
        "best_val": 0.97,
        "best_is_baseline": False,
        "final_val": 0.969,
        "test": test,
        "test_seeds": f"{test:.4f} {test:.4f} {test:.4f}",
        "search_s": 10.0,
        "finalize_s": 2.0,
        "wall_s": 12.0,
        "sessions": 1,
        "load_before": 1.0,
        "load_after": 2.0,
        "cores": 2,
        "finished": "2026-12-03 00:00",
        "commits": "0123456789ab",
    }
    return base | changes


def test_a_row_is_added_atomically_and_a_done_search_is_recognized_by_its_settings(tmp_path):
    path = tmp_path / "runs.csv"
    bench.add_row(path, row("tpe", 1, 0.97))
    rows = bench.add_row(path, row("pbt", 1, 0.96))
    assert len(bench.read_rows(path)) == 2 and list(rows.columns) == bench.COLUMNS
    key = {k: row("pbt", 1, 0.96)[k] for k in bench.KEY}
    assert bench.done(bench.read_rows(path), key)
    assert not bench.done(bench.read_rows(path), key | {"settings": "pbt x=2; final_seeds=3"})
    assert not bench.done(bench.read_rows(path), key | {"sampler_seed": 2})
    assert not bench.done(bench.read_rows(path), key | {"baseline": "yes"})
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_the_report_states_n_clips_intervals_to_the_range_and_compares_unpaired(tmp_path):
    near_one = [0.9990, 1.0, 0.9995]  # a t-interval around 99.95% would pass 100%
    rows = pd.DataFrame(
        [row("tpe", s, t) for s, t in enumerate(near_one, 1)]
        + [row("pbt", s, t) for s, t in enumerate([0.96, 0.97], 1)]
    )
    text = report.markdown(rows)
    table = next(line for line in text.splitlines() if line.startswith("| tpe |"))
    assert "| 3 | 99.95 [" in table and table.split("]")[0].endswith(", 100.00")
    pbt = next(line for line in text.splitlines() if line.startswith("| pbt |"))
    assert "| 2 | 96.50 (values 96.00, 97.00; no interval)" in pbt
    assert "PBT - TPE, finalized test accuracy: -3.45 points (n = 2 and 3: too few" in text
    rows = pd.concat([rows, pd.DataFrame([row("pbt", 3, 0.98)])], ignore_index=True)
    text = report.markdown(rows)
    assert "PBT - TPE, finalized test accuracy: -2.95 points, 95% interval [" in text and "Welch" in text
    summary = report.summary(rows)
    assert (summary["test_hi"] <= 100).all() and list(summary["n"]) == [3, 3]
    rows["commits"] = ["abc", "abc def", None, "def", "def", "def"]  # tpe 1-3, then pbt 1-3
    tpe = next(line for line in report.markdown(rows).splitlines() if line.startswith("| tpe |"))
    assert tpe.endswith("| abc, def, not recorded (1 of 3) |")


TINY = [
    "network=linear",
    "data.n_train=500",
    "data.n_validation=200",
    "train.epochs=3",
    "train.batch_size=50",
]


def test_a_second_session_resumes_the_search_and_never_scores_the_test_set_twice(mnist_dir, tmp_path):
    spec = OmegaConf.create(
        {
            "base": TINY,
            "search": {"optimizer.eta": {"type": "float", "low": 0.05, "high": 2.0, "log": True}},
            "baseline": None,
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "none"},
            "n_trials": 4,
            "workers": 1,
            "population": 1,
            "final_seeds": 2,
        }
    )
    OmegaConf.save(spec, tmp_path / "tiny.yaml")
    spec = load_spec(str(tmp_path / "tiny.yaml"))
    first = bench.one(bench.variant(spec, "random", 6, 1, 1, baseline=False), tmp_path, "random", 6)
    assert first["trial_epochs"] == 6 and first["sessions"] == 1 and len(first["test_seeds"].split()) == 2
    again = bench.one(bench.variant(spec, "random", 6, 1, 1, baseline=False), tmp_path, "random", 6)
    assert again["sessions"] == 2 and again["trial_epochs"] == 6
    assert (again["test"], again["test_seeds"], again["final_val"]) == (
        first["test"],
        first["test_seeds"],
        first["final_val"],
    )
    assert again["search_s"] >= first["search_s"] and again["finalize_s"] == pytest.approx(
        first["finalize_s"], abs=0.1
    )
    folder = tmp_path / "studies" / "tiny-random-seed1"
    assert json.loads((folder / "bench.json").read_text())["sessions"] == 2
    s = bench.variant(spec, "random", 6, 1, 1, baseline=False)
    study = bench._load(s, tmp_path, bench.parse_space(s.search), 0, create=False)
    assert len(study.user_attrs["finalized"]) == 1  # scored once
    assert again["commits"] == first["commits"] and len(again["commits"].split()) == 1  # one code, named
    assert source_commit().startswith(again["commits"].removesuffix("+changes"))


def test_the_settings_name_what_makes_a_search_and_pbt_fixes_what_it_cannot_search():
    spec = load_spec("mlp100")
    tpe = bench.settings_of(bench.variant(spec, "tpe", 600, 1, 4), spec)
    pbt = bench.settings_of(bench.variant(spec, "pbt", 600, 1, 4), spec)
    assert tpe.startswith("tpe") and "pruner median" in tpe and "final_seeds=3" in tpe
    assert "interval=4 warmup=0 fraction=0.25" in pbt and "fixed train.batch_size=10 train.epochs=30" in pbt
    assert bench.settings_of(bench.variant(spec, "pbt", 600, 2, 4), spec) == pbt  # the seed is not a setting
    assert bench.settings_of(bench.variant(spec, "pbt", 600, 1, 2), spec) != pbt
    assert bench.settings_of(bench.variant(spec, "pbt", 600, 1, 4, warmup=8), spec) != pbt


def test_the_rows_commands_name_a_pbt_runs_interval_and_warmup_and_add_only_these_rows():
    """Random, TPE and a PBT with warm-up 24 ran in one command: the report gave `--budget 1000
    --repetitions 3` (all three methods, PBT with the default warm-up: another search) beside the
    PBT command. Each command now names its methods unless it ran all three with default flags."""
    assert tuple(report.ORDER) == bench.METHODS
    default, late = "pbt interval=4 warmup=0 fraction=0.25", "pbt interval=4 warmup=24 fraction=0.25"
    three = [("random", "random"), ("tpe", "tpe x=1"), ("pbt", default)]
    assert report.commands("s", 60, "no", 3, three) == [
        "python benchmarks/bench_search.py --studies s --budget 60 --repetitions 3 --no-baseline"
    ]
    assert report.commands("s", 60, "yes", 2, [*three[:2], ("pbt", late)]) == [
        "python benchmarks/bench_search.py --studies s --budget 60 --repetitions 2 --methods random tpe",
        "python benchmarks/bench_search.py --studies s --budget 60 --repetitions 2 --methods pbt "
        "--interval 4 --warmup 24",
    ]


def test_tpe_with_its_own_startup_trials_is_a_search_of_its_own_with_its_command():
    """--startup sets TPE's n_startup_trials (a setting, so a row of its own, whose command names
    the flag); the pruner's n_startup_trials is not TPE's."""
    spec = load_spec("mlp100_step")
    plain = bench.settings_of(bench.variant(spec, "tpe", 600, 1, 4), spec)
    early = bench.settings_of(bench.variant(spec, "tpe", 600, 1, 4, startup=3), spec)
    assert early != plain and "n_startup_trials=3" in early.split(";")[0]
    assert "n_startup_trials" not in plain.split(";")[0] and "pruner median n_startup_trials=4" in plain
    assert report.flags(early) == " --startup 3" and report.flags(plain) == ""
    assert report.commands("s", 60, "no", 3, [("random", "random"), ("tpe", early)]) == [
        "python benchmarks/bench_search.py --studies s --budget 60 --repetitions 3 --no-baseline "
        "--methods random",
        "python benchmarks/bench_search.py --studies s --budget 60 --repetitions 3 --no-baseline "
        "--methods tpe --startup 3",
    ]


def test_the_report_says_how_many_trials_tpes_model_chose():
    """Optuna's TPE draws its first n_startup_trials (10 by default) at random: at 10 trials of 60
    epochs (600 trial-epochs) TPE is a random search, and a reader comparing it with random search
    is told so."""
    n = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    rows = [row("tpe", s, 0.96, trials=n, settings="tpe; pruner median n_startup_trials=4") for s in (1, 2)]
    text = report.markdown(pd.DataFrame(rows))
    assert f"TPE's model chose 0.0 of its {n:.1f} trials on average (the first {n}" in text
    assert "so at this budget TPE was a random search" in text
    own = "tpe n_startup_trials=4; pruner none"
    rows = [row("tpe", s, 0.96, trials=10 + s, settings=own) for s in (1, 2)]
    text = report.markdown(pd.DataFrame(rows))
    assert "TPE's model chose 7.5 of its 11.5 trials on average (the first 4," in text
    assert "random search)" not in text


def test_pbt_is_compared_with_each_tpe_search():
    rows = pd.DataFrame(
        [row("tpe", s, 0.96) for s in (1, 2, 3)]
        + [row("tpe", s, 0.98, settings="tpe n_startup_trials=3; final_seeds=3") for s in (1, 2, 3)]
        + [row("pbt", s, 0.97) for s in (1, 2, 3)]
    )
    text = report.markdown(rows)
    assert "PBT - TPE [a], finalized test accuracy: +1.00 points" in text
    assert "PBT - TPE [b], finalized test accuracy: -1.00 points" in text


def test_a_target_reached_on_fewer_than_three_repetitions_is_called_provisional():
    one = pd.DataFrame([row("tpe", 1, 0.96), row("pbt", 1, 0.97)])
    assert "**met so far (only where n < 3: provisional)**" in report.markdown(one)
    three = pd.DataFrame(
        [row(m, s, t + s / 1000) for s in (1, 2, 3) for m, t in (("tpe", 0.96), ("pbt", 0.97))]
    )
    text = report.markdown(three)
    assert "on one study: **met** (" in text and "n = 3 and 3" in text
    assert "784-30-10 with L2 (book_l2_mlp30): 96.8% within 10 min: **met**;" in text  # 97.2% mean, 12 s each


def test_a_target_is_met_by_any_study_of_its_network():
    """784-100-10's target counts every study of that network alike: the best search of any."""
    rows = [row(m, s, t, study="mlp100", wall_s=900.0) for s in (1, 2, 3) for m, t in (("tpe", 0.979),)]
    rows += [row("random", s, 0.983, study="mlp100_step", wall_s=900.0) for s in (1, 2, 3)]
    text = report.markdown(pd.DataFrame(rows))
    met = "(mlp100, mlp100_step, mlp100_shift): 98.2% within 20 min: **met**; best: mlp100_step random"
    assert met in text
    slow = [r | {"wall_s": 1300.0} if r["study"] == "mlp100_step" else r for r in rows]
    assert "98.2% within 20 min: **not met**" in report.markdown(pd.DataFrame(slow))


def test_a_target_met_by_finalizing_the_baseline_says_so():
    """book_l2_mlp30's random search met 96.8% by finalizing the spec's hand-tuned baseline in every
    repetition: the same retraining three times, not a setting the search found."""
    rows = [row("random", s, 0.9681, baseline="yes", best_is_baseline=True) for s in (1, 2, 3)]
    text = report.markdown(pd.DataFrame(rows))
    assert "96.8% within 10 min: **met**; best: book_l2_mlp30 random" in text
    assert "every repetition finalized the spec's baseline" in text
    rows[0]["best_is_baseline"] = False
    assert "2 of 3 repetitions finalized the spec's baseline" in report.markdown(pd.DataFrame(rows))
    rows = [r | {"best_is_baseline": False} for r in rows]
    assert "finalized the spec's baseline (the hand" not in report.markdown(pd.DataFrame(rows))


def test_every_pbt_setting_of_a_group_is_compared_with_tpe():
    """A second PBT setting (e.g. warm-up 24 beside 0) labels the two PBT rows [a] and [b]; each is
    set against TPE, in its section and in the targets."""
    rows = pd.DataFrame(
        [row("tpe", s, 0.96) for s in (1, 2, 3)]
        + [row("pbt", s, 0.95, settings="pbt warmup=0; final_seeds=3") for s in (1, 2, 3)]
        + [row("pbt", s, 0.97, settings="pbt warmup=24; final_seeds=3") for s in (1, 2)]
    )
    text = report.markdown(rows)
    assert "PBT [a] - TPE, finalized test accuracy: -1.00 points, 95% interval" in text
    assert "PBT [b] - TPE, finalized test accuracy: +1.00 points (n = 2 and 3: too few" in text
    assert (
        "PBT [a] - TPE -1.00 points, interval [-1.00, -1.00], n = 3 and 3; " in text
        and "PBT [b] - TPE +1.00 points, n = 2 and 3" in text
    )
    assert "on one study: **met so far (only where n < 3: provisional)**" in text


def test_pbt_matching_tpe_by_the_means_only_is_called_a_tie_within_noise():
    """+0.1 points with seeds that spread by a point: 'met' by the means, but the interval holds PBT
    below TPE as well, and the verdict says so; a clear gain stays plain 'met'."""
    spread = (-0.01, 0.0, 0.01)
    tie = pd.DataFrame(
        [row("tpe", s, 0.96 + d) for s, d in zip((1, 2, 3), spread, strict=True)]
        + [row("pbt", s, 0.961 + d) for s, d in zip((1, 2, 3), spread, strict=True)]
    )
    text = report.markdown(tie)
    assert (
        "**met by the means only (each such interval also holds PBT below TPE: a tie within noise)**" in text
    )
    assert "PBT - TPE +0.10 points, interval [-2." in text
    clear = pd.DataFrame(
        [row("tpe", s, 0.96 + d / 10) for s, d in zip((1, 2, 3), spread, strict=True)]
        + [row("pbt", s, 0.97 + d / 10) for s, d in zip((1, 2, 3), spread, strict=True)]
    )
    assert "on one study: **met** (" in report.markdown(clear)


def test_a_retry_resumed_in_its_trials_folder_is_not_counted_twice():
    def trial(number: int, run_dir: str, epochs: int):
        state = optuna.trial.TrialState.FAIL
        return optuna.trial.create_trial(state=state, user_attrs={"run_dir": run_dir, "epochs_run": epochs})

    interrupted = [trial(k, f"members/{k:02d}", 14) for k in range(2)]
    resumed = [trial(2 + k, f"members/{k:02d}", 60) for k in range(2)]  # restored 14, trained 46
    fresh = [trial(4, "trials/0004", 10), trial(5, "trials/0005", 30)]  # a retry in a new folder
    assert bench.epochs_used(interrupted + resumed + fresh) == 2 * 60 + 10 + 30
