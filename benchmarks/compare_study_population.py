"""Search quality with and without population batching (issue 7): the same study, the same budget.

Runs the shipped `book_l2_mlp30` study shortened (fewer epochs and trials; eta cut 5x every
`epochs // 2.5` epochs), once with `population=1` and once with `population=K`, for a few sampler
seeds, and prints each study's best validation accuracy, the mean of its top 5 trials, the
trial-epochs it used and its wall time. The budget is the same `n_trials x epochs` for both (pruning
spends less of it). The book's baseline is not enqueued, so the search alone finds the best; keep
`trials` several times `workers x population` so that TPE and the pruner see finished trials.
Validation only: the test split is never read.

    nice -n 5 python benchmarks/compare_study_population.py [--reps 3] [--trials 32] [--epochs 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from hpexp import study


def one_study(runs: Path, population: int, seed: int, args: argparse.Namespace) -> dict[str, float]:
    step = max(1, round(args.epochs / 2.5))
    spec = study.load_spec(
        "book_l2_mlp30",
        [
            f"n_trials={args.trials}",
            f"workers={args.workers}",
            f"population={population}",
            f"sampler.seed={seed}",
            "timeout=null",
            "baseline=null",
            f"pruner.n_warmup_steps={step + 1}",
            f"pruner.n_startup_trials={min(8, args.trials // 3)}",
        ],
    )
    spec.base = [*spec.base, f"train.epochs={args.epochs}", f"schedule.step={step}"]
    started = time.perf_counter()
    s = study.search(spec, runs, quiet=True)
    seconds = time.perf_counter() - started
    trials = s.get_trials(deepcopy=False)
    values = sorted((t.value for t in trials if t.value is not None), reverse=True)
    return {
        "best": values[0],
        "top5": statistics.mean(values[:5]),
        "trial_epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="sampler seeds 0..reps-1")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--population", type=int, default=4)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"book_l2_mlp30, {args.trials} trials x {args.epochs} epochs (budget "
        f"{args.trials * args.epochs} trial-epochs), {args.workers} workers, TPE seeds 0..{args.reps - 1}"
    )
    columns = ("population", "seed", "best val", "top-5 val", "trial-ep", "pruned", "s")
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, (10, 4, 9, 9, 8, 6, 6), strict=True)))
    results: dict[int, list[dict[str, float]]] = {1: [], args.population: []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.reps):
            for k in results:
                r = one_study(Path(tmp) / f"k{k}_s{seed}", k, seed, args)
                results[k].append(r)
                print(
                    f"{k:>10} {seed:>4} {100 * r['best']:>8.2f}% {100 * r['top5']:>8.2f}% "
                    f"{r['trial_epochs']:>8.0f} {r['pruned']:>6.0f} {r['seconds']:>6.1f}",
                    flush=True,
                )
    for k, rows in results.items():
        best = [r["best"] for r in rows]
        spread = statistics.stdev(best) if len(best) > 1 else 0.0
        print(
            f"population {k}: best val mean {100 * statistics.mean(best):.2f}% (sd {100 * spread:.2f}), "
            f"top-5 mean {100 * statistics.mean(r['top5'] for r in rows):.2f}%, "
            f"{statistics.mean(r['trial_epochs'] for r in rows):.0f} trial-epochs, "
            f"{statistics.mean(r['seconds'] for r in rows):.1f} s per study"
        )


if __name__ == "__main__":
    main()
