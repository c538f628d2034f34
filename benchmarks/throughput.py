"""The same search three ways, one after the other: trials per hour, the best validation
accuracy after each minute, and the fixed cost per trial.

    python -m benchmarks.throughput [--trials 20] [--epochs 6] [--seeds 0 1 2] [overrides...]
    python -m benchmarks.throughput --trials 6 --epochs 2          # a short version: minutes

The search is the default one (conf/sweep/mlp.yaml: its space, TPE with 8 startup trials),
with sampler seed `--seeds`, `--trials` trials of `--epochs` epochs, each way in a fresh
folder:

- stock: Hydra's own Optuna sweeper plugin (`hydra/sweeper=optuna`, installed with the
  project) with its joblib launcher, n_jobs = the cores and 1 torch thread per trial (the best
  it can do here; it has no pruner, and its trials are single runs that log everything);
- n_jobs=1: this project's sweeper, one trial at a time in the sweep's process (the default);
- packed: this project's sweeper with `hydra/launcher=joblib hydra.sweeper.n_jobs=auto`.

Trials per hour counts the finished trials (complete or pruned) over the whole process's wall
time; the best validation accuracy after each minute is over the trials complete by then,
from the launch; a trial's fixed cost is its ask-to-tell time less its training epochs
(benchmarks/trial_cost.py), the median over its complete trials.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
from pathlib import Path

import optuna

from benchmarks.trial_cost import REPO, journal_study, sweep, trial_costs

STUDY = "throughput"
WAYS = {
    # conf/sweep/mlp.yaml names this project's sweeper as the target: set back to the plugin's.
    "stock": ["hydra/sweeper=optuna", "hydra/launcher=joblib", "~pruner",
              "hydra.sweeper._target_=hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
              "hydra.sweeper.storage=sqlite:///optuna.db", f"hydra.sweeper.n_jobs={os.cpu_count()}",
              "trainer.num_threads=1"],
    "n_jobs=1": [],
    "packed": ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=auto"],
}  # fmt: skip


def measure(way: str, seed: int, trials: int, epochs: int, overrides: list[str]) -> dict:
    arguments = [*WAYS[way], f"hydra.sweeper.n_trials={trials}", f"trainer.epochs={epochs}",
                 f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.study_name={STUDY}",
                 "sweep.min_test_accuracy=0", *overrides]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        launched = datetime.datetime.now()
        wall = sweep(REPO / "run.py", folder, arguments)
        study = (optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder}/optuna.db")
                 if way == "stock" else journal_study(folder, STUDY))  # fmt: skip
        costs = trial_costs(folder, study)
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
        epochs = sum(len(trial.intermediate_values) for trial in [*done, *pruned])
    minutes = range(1, int(wall // 60) + 2)
    best = [max((t.value for t in done
                 if (t.datetime_complete - launched).total_seconds() <= 60 * m), default=None)
            for m in minutes]  # fmt: skip
    return {"wall": wall, "per_hour": 3600 * (len(done) + len(pruned)) / wall,
            "epochs_per_hour": 3600 * epochs / wall, "best": best,
            "final": max(t.value for t in done),
            "fixed": statistics.median(cost for _, _, cost in costs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("overrides", nargs="*", help="more overrides of every way's sweep")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {args.trials} trials of {args.epochs} epochs, "
          f"sampler seeds {args.seeds}, overrides {args.overrides}", flush=True)  # fmt: skip
    results: dict[str, list[dict]] = {way: [] for way in args.ways}
    for seed in args.seeds:
        for way in args.ways:
            result = measure(way, seed, args.trials, args.epochs, args.overrides)
            results[way].append(result)
            best = " ".join("-" if b is None else f"{b:.4f}" for b in result["best"])
            print(f"seed {seed} {way:9} wall {result['wall']:6.0f} s  "
                  f"{result['per_hour']:5.0f} trials/hour  {result['epochs_per_hour']:5.0f} "
                  f"epochs/hour  fixed cost {result['fixed']:.2f} s/trial"
                  f"  best val_accuracy by minute: {best}", flush=True)  # fmt: skip
    base = statistics.mean(r["per_hour"] for r in results[args.ways[0]])
    base_epochs = statistics.mean(r["epochs_per_hour"] for r in results[args.ways[0]])
    for way, runs in results.items():
        per_hour = statistics.mean(r["per_hour"] for r in runs)
        epochs = statistics.mean(r["epochs_per_hour"] for r in runs)
        print(f"{way:9} mean over seeds: {per_hour:5.0f} trials/hour "
              f"({per_hour / base:.2f}x {args.ways[0]}), {epochs:5.0f} epochs/hour "
              f"({epochs / base_epochs:.2f}x), best val_accuracy "
              f"{statistics.mean(r['final'] for r in runs):.4f}, fixed cost "
              f"{statistics.mean(r['fixed'] for r in runs):.2f} s/trial")  # fmt: skip


if __name__ == "__main__":
    main()
