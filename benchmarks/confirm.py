"""Is the single best trial the configuration that confirmation over seeds picks, and what
does confirming cost? The default sweep, with confirmation, on several sampler seeds.

    python benchmarks/confirm.py [--seeds 0 1 2] [--top-k 3] [--confirm-seeds 3] [overrides...]

For each sampler seed, runs `python run.py -m sweep.confirm.top_k=K sweep.confirm.seeds=S` in
a temporary folder and prints: the single-seed pick (the best search trial) and the confirmed
pick (the best mean over the new seeds), whether they differ, each pick's test accuracy as a
model (the search trial's) and as a configuration (mean and spread over its confirmation
seeds), and the wall time of the search and of the confirmation (from the runs' start and end
times, so both were measured in the same process on the same machine).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def runs(client: mlflow.MlflowClient, experiment: str, role: str) -> list[mlflow.entities.Run]:
    query = f"tags.`mnist_sweep.role` = '{role}' AND attributes.status = 'FINISHED'"
    return client.search_runs([experiment], query, max_results=1000)


def span_s(found: list[mlflow.entities.Run]) -> float:
    return (max(r.info.end_time for r in found) - min(r.info.start_time for r in found)) / 1000


def one_seed(seed: int, top_k: int, seeds: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(RUN_PY), "-m", f"hydra.sweeper.sampler.seed={seed}",
                   f"sweep.confirm.top_k={top_k}", f"sweep.confirm.seeds={seeds}",
                   "sweep.min_test_accuracy=0", *overrides]  # fmt: skip
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
        client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
        trials, confirmations = runs(client, experiment, "trial"), runs(client, experiment,
                                                                        "confirmation")  # fmt: skip
        by_config: dict[str, list[mlflow.entities.Run]] = {}
        for run in confirmations:
            key = config_key(run)
            by_config.setdefault(key, []).append(run)
        single = max(trials, key=lambda run: run.data.metrics["val_accuracy"])
        confirmed_key = max(by_config, key=lambda key: mean(by_config[key], "val_accuracy"))
        [confirmed] = [run for run in trials if config_key(run) == confirmed_key]
        return {
            "seed": seed,
            "differ": config_key(single) != confirmed_key,
            "single": pick(single, by_config.get(config_key(single), [])),
            "confirmed": pick(confirmed, by_config[confirmed_key]),
            "search_s": span_s(trials),
            "confirm_s": span_s(confirmations),
        }


def config_key(run: mlflow.entities.Run) -> str:
    searched = ("optimizer.lr", "data.batch_size", "model.hidden_sizes", "model.dropout")
    return "|".join(run.data.params.get(name, "") for name in searched)


def mean(found: list[mlflow.entities.Run], metric: str) -> float:
    return statistics.fmean(run.data.metrics[metric] for run in found)


def pick(model: mlflow.entities.Run, seeds: list[mlflow.entities.Run]) -> dict:
    tests = [run.data.metrics["test_accuracy"] for run in seeds]
    return {"model_test": model.data.metrics["test_accuracy"],
            "config_test_mean": statistics.fmean(tests) if tests else float("nan"),
            "config_test_spread": statistics.stdev(tests) if len(tests) > 1 else 0.0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--confirm-seeds", type=int, default=3)
    args, overrides = parser.parse_known_args()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
          f"python {platform.python_version()}; overrides: {overrides}")  # fmt: skip
    results = []
    for seed in args.seeds:
        result = one_seed(seed, args.top_k, args.confirm_seeds, overrides)
        results.append(result)
        single, confirmed = result["single"], result["confirmed"]
        print(f"sampler seed {seed}: picks differ: {result['differ']}; single pick test "
              f"{single['model_test']:.4f} (config {single['config_test_mean']:.4f} +- "
              f"{single['config_test_spread']:.4f}); confirmed pick test "
              f"{confirmed['model_test']:.4f} (config {confirmed['config_test_mean']:.4f} +- "
              f"{confirmed['config_test_spread']:.4f}); search {result['search_s']:.0f} s, "
              f"confirmation {result['confirm_s']:.0f} s", flush=True)  # fmt: skip
    differ = sum(result["differ"] for result in results)
    for name in ("single", "confirmed"):
        tests = [result[name]["model_test"] for result in results]
        configs = [result[name]["config_test_mean"] for result in results]
        print(f"{name} pick: model test accuracy mean {statistics.fmean(tests):.4f} "
              f"(spread {statistics.pstdev(tests):.4f}); its configuration over the new seeds "
              f"{statistics.fmean(configs):.4f}")  # fmt: skip
    cost = statistics.fmean(result["confirm_s"] / result["search_s"] for result in results)
    print(f"picks differ in {differ} of {len(results)} seeds; confirmation costs "
          f"{cost:.2f}x the search's wall time")  # fmt: skip


if __name__ == "__main__":
    main()
