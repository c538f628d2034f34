"""A sweep's summary on its MLflow parent run: best trial, table of trials, Optuna plots."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import warnings
from pathlib import Path

import mlflow
import optuna

from mnist_sweep import tracking
from mnist_sweep.objective import METRIC as OBJECTIVE
from mnist_sweep.sweep import confirm, records

log = logging.getLogger(__name__)
PRUNED_AT = "pruned_at_epoch"


def reported(trials: list[mlflow.entities.Run], study: optuna.Study) -> list[mlflow.entities.Run]:
    """The trials a summary lists: those the study has COMPLETE or PRUNED."""
    done = {str(trial.number) for trial in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )}  # fmt: skip
    return [run for run in trials if run.data.tags.get(records.TRIAL_NUMBER) in done]


def trial_table(trials: list[mlflow.entities.Run]) -> list[dict[str, object]]:
    """One row per trial, finished ones first, each group by best objective, with the epoch a
    pruned trial stopped at and the params that vary."""
    varying = sorted(
        key for key in {k for run in trials for k in run.data.params}
        if len({run.data.params.get(key) for run in trials}) > 1
    )  # fmt: skip
    rows = [
        {"trial": run.data.tags[records.TRIAL], "run_id": run.info.run_id,
         OBJECTIVE: run.data.metrics.get(OBJECTIVE), "test_accuracy":
         run.data.metrics.get("test_accuracy"), PRUNED_AT: run.data.tags.get(
         records.PRUNED_AT_EPOCH, ""), **{k: run.data.params.get(k) for k in varying}}
        for run in trials
    ]  # fmt: skip
    return sorted(rows, key=lambda row: (bool(row[PRUNED_AT]), -(row[OBJECTIVE] or 0.0)))


def markdown_table(rows: list[dict[str, object]]) -> str:
    """The trial table as GitHub Markdown."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = (f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def optuna_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimization history, parameter importances and, when trials reported epochs, their
    intermediate values, as PNG files (those that can be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib says at INFO, on every sweep, that the list-valued params' axes are categorical.
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as optuna_plt

    plots = [
        ("optimization_history", optuna_plt.plot_optimization_history),
        ("param_importances", optuna_plt.plot_param_importances),
        ("parallel_coordinate", optuna_plt.plot_parallel_coordinate),
        ("slice", optuna_plt.plot_slice),
    ]
    if any(trial.intermediate_values for trial in study.get_trials(deepcopy=False)):
        # A pruning sweep: each trial's validation accuracy by epoch, where it stopped.
        plots.append(("intermediate_values", optuna_plt.plot_intermediate_values))
    paths = []
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # A parameter that all trials share (a retry's, a small sweep's) has one value.
                warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
                axes = plot(study)
        except (ValueError, RuntimeError) as error:
            log.warning("Optuna %s plot skipped: %s", name, error)
            continue
        path = folder / f"{name}.png"
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.savefig(path, bbox_inches="tight", dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def log_summary(
    client: mlflow.MlflowClient,
    parent_run_id: str,
    trials: list[mlflow.entities.Run],
    study: optuna.Study,
) -> None:
    """Best params and value, the trial table and Optuna's plots, on the parent run; the
    study says which trials count (MLflow mirrors it)."""
    rows = trial_table(reported(trials, study))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = []
        if rows:
            files.append(folder / "trials.csv")
            with files[0].open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            files.append(folder / "trials.md")
            files[-1].write_text(markdown_table(rows))
        finished = [row for row in rows if not row[PRUNED_AT]]
        if finished:
            best = finished[0]
            files.append(folder / "best.json")
            files[-1].write_text(json.dumps(best, indent=2))
            client.log_metric(parent_run_id, f"best_{OBJECTIVE}", best[OBJECTIVE])
            client.log_metric(parent_run_id, "best_test_accuracy", best["test_accuracy"])
            # Every worker of the sweep sets it as it ends, maybe at the same moment.
            tracking.once_more_if_raced(client.set_tag, parent_run_id, "best_trial", best["trial"])
        client.log_metric(parent_run_id, "finished_trials", len(finished))
        client.log_metric(parent_run_id, "pruned_trials", len(rows) - len(finished))
        if finished:
            files += optuna_plots(study, folder)
        for path in files:
            client.log_artifact(parent_run_id, str(path))


def log_confirmations(
    client: mlflow.MlflowClient,
    parent_run_id: str,
    trials: list[mlflow.entities.Run],
    confirmations: list[mlflow.entities.Run],
    candidates: list[confirm.Candidate],
) -> tuple[list[mlflow.entities.Run], dict[str, str]]:
    """The confirmations' table and the chosen configuration on the parent run; returns the
    chosen configuration's search trial (the only one eligible to be kept) and the version
    tags that say what it was chosen on."""
    tests = {run.data.tags.get(records.TRIAL_NUMBER): run.data.metrics.get("test_accuracy")
             for run in confirmations}  # fmt: skip
    rows = [
        {"trial": c.trial.number, "search_" + OBJECTIVE: c.trial.value, "seed": seed,
         OBJECTIVE: value, "test_accuracy": tests.get(str(c.numbers[seed])),
         "mean_" + OBJECTIVE: c.mean, "spread": c.spread}
        for c in candidates for seed, value in sorted(c.values.items())
    ]  # fmt: skip
    chosen = candidates[0]
    if rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "confirmations.md"
            path.write_text(markdown_table(rows))
            client.log_artifact(parent_run_id, str(path))
    client.log_metric(parent_run_id, f"confirmed_mean_{OBJECTIVE}", chosen.mean)
    client.log_metric(parent_run_id, f"confirmed_spread_{OBJECTIVE}", chosen.spread)
    luckiest = max(candidates, key=lambda c: c.trial.value)
    log.info(
        "Confirmed: trial %d's configuration, mean %s %.4f (spread %.4f) over seeds %s; the "
        "best single trial was trial %d (%.4f)", chosen.trial.number, OBJECTIVE, chosen.mean,
        chosen.spread, sorted(chosen.values), luckiest.trial.number, luckiest.trial.value,
    )  # fmt: skip
    per_seed = {seed: (value, tests.get(str(chosen.numbers[seed])))
                for seed, value in sorted(chosen.values.items())}  # fmt: skip
    tags = {
        "selection_metric": f"mean {OBJECTIVE} over {len(chosen.values)} new seeds",
        "selection_value": repr(chosen.mean),
        "selection_spread": repr(chosen.spread),
        "seeds": ",".join(str(seed) for seed in per_seed),
        "per_seed": json.dumps(
            {str(s): {OBJECTIVE: v, "test_accuracy": t} for s, (v, t) in per_seed.items()}
        ),
    }
    number = str(chosen.trial.number)
    return [run for run in trials if run.data.tags.get(records.TRIAL_NUMBER) == number], tags
