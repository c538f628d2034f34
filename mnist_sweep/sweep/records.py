"""The sweep's MLflow records: its parent run, its trials' runs, and keeping them true to the
Optuna study, which decides what each trial is (COMPLETE, PRUNED, FAIL)."""

from __future__ import annotations

import logging

import mlflow
import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

from mnist_sweep.config import MlflowConfig
from mnist_sweep.sweep.liveness import OWNER
from mnist_sweep.tracking import ROLE, client_for

log = logging.getLogger(__name__)
# The tags of a sweep's runs (besides tracking.ROLE and liveness.OWNER, the "host:pid" of the
# process that asked for the trial).
SWEEP_ID = "mnist_sweep.sweep_id"  # the study's name, or the grid's folder
TRIAL = "mnist_sweep.trial"  # the trial's output folder, relative to the sweep's
TRIAL_NUMBER = "mnist_sweep.trial_number"  # the Optuna trial number (Hydra's job number)
PRUNED_AT_EPOCH = "mnist_sweep.pruned_at_epoch"  # on a trial's run that its pruner stopped
RETRY_OF = "mnist_sweep.retry_of"  # a retried trial's earlier attempts (sweep/retry.py)
# What a trial's MLflow run ends as, for each state Optuna gave its trial.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED",
              TrialState.FAIL: "FAILED"}  # fmt: skip


def sweep_runs(
    client: mlflow.MlflowClient, experiment: str, sweep_id: str, role: str, status: str = ""
) -> list[mlflow.entities.Run]:
    """Runs of one sweep: its parent (`role="sweep"`) or its trials (`role="trial"`)."""
    query = f"tags.`{SWEEP_ID}` = '{sweep_id}' AND tags.`{ROLE}` = '{role}'"
    if status:
        query += f" AND attributes.status = '{status}'"
    return client.search_runs([experiment], query, max_results=50_000)


def sweep_parent(
    client: mlflow.MlflowClient, experiment: str, sweep_id: str, create: bool = False
) -> mlflow.entities.Run | None:
    """The sweep's parent run (with `create`, made if there is none yet)."""
    parents = sweep_runs(client, experiment, sweep_id, "sweep")
    if not parents and create:
        client.create_run(
            experiment, run_name=f"sweep {sweep_id.rsplit('/', 1)[-1]}",
            tags={SWEEP_ID: sweep_id, ROLE: "sweep"},
        )  # fmt: skip
        return keep_one_parent(client, experiment, sweep_id)
    return min(parents, key=_age, default=None)


def keep_one_parent(
    client: mlflow.MlflowClient, experiment: str, sweep_id: str
) -> mlflow.entities.Run:
    """After creating a parent run: the one every worker that raced to create one keeps, the
    oldest (ties by run id); the others it sees are deleted.

    Of two workers that raced, at least one sees both parents (each looks after its own is
    stored), so only the oldest survives, even when the other worker saw its own alone.
    """
    parents = sweep_runs(client, experiment, sweep_id, "sweep")
    kept = min(parents, key=_age)
    for parent in parents:
        if parent.info.run_id != kept.info.run_id:
            client.delete_run(parent.info.run_id)
    return kept


def nest_under(
    client: mlflow.MlflowClient, parent: mlflow.entities.Run, trials: list[mlflow.entities.Run]
) -> None:
    """Point trials at `parent`: a worker's first trial may have been tagged with the parent
    it created, before a racing worker's older one made it go."""
    for trial in trials:
        if trial.data.tags.get(MLFLOW_PARENT_RUN_ID) != parent.info.run_id:
            client.set_tag(trial.info.run_id, MLFLOW_PARENT_RUN_ID, parent.info.run_id)


def _age(run: mlflow.entities.Run) -> tuple[int, str]:
    return run.info.start_time, run.info.run_id


def trial_tags(
    config: MlflowConfig, sweep_id: str, trial: str, number: int, owner: str, role: str = "trial"
) -> dict[str, str]:
    """Tags that nest a trial's run under its sweep's parent run in the MLflow UI."""
    client, experiment = client_for(config)
    parent = sweep_parent(client, experiment, sweep_id)
    tags = {SWEEP_ID: sweep_id, TRIAL: trial, TRIAL_NUMBER: str(number), ROLE: role,
            OWNER: owner}  # fmt: skip
    if parent is not None:
        tags[MLFLOW_PARENT_RUN_ID] = parent.info.run_id
    return tags


def retry_tags(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """A retried trial's run names the attempts before it ("3,7"), oldest first."""
    from mnist_sweep.sweep.retry import earlier_attempts

    earlier = earlier_attempts(trial)
    return {RETRY_OF: ",".join(map(str, earlier))} if earlier else {}


def mirror_study(
    client: mlflow.MlflowClient,
    experiment: str,
    sweep_id: str,
    study: optuna.Study,
    role: str = "trial",
) -> None:
    """Make every trial run's status say what the study says of its trial: a run left RUNNING
    by a dead worker or a lost server, or FINISHED by a job whose trial was failed meanwhile
    (its worker counted as gone, an orphan of a killed sweep), is set right."""
    ended = study.get_trials(deepcopy=False, states=tuple(RUN_STATUS))
    wanted = {str(trial.number): RUN_STATUS[trial.state] for trial in ended}
    for run in sweep_runs(client, experiment, sweep_id, role):
        status = wanted.get(run.data.tags.get(TRIAL_NUMBER, ""))
        if status is not None and run.info.status != status:
            number = run.data.tags[TRIAL_NUMBER]
            log.info("Trial %s's MLflow run was %s; marked %s, as the study has it", number,
                     run.info.status, status)  # fmt: skip
            client.set_terminated(run.info.run_id, status)


def complete(trials: list[mlflow.entities.Run], study: optuna.Study) -> list[mlflow.entities.Run]:
    """The trials' runs whose trial the study has COMPLETE: the only ones a sweep keeps from."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    numbers = {str(trial.number) for trial in done}
    return [run for run in trials if run.data.tags.get(TRIAL_NUMBER) in numbers]


def close_after_fault(
    client: mlflow.MlflowClient,
    experiment: str,
    sweep_id: str,
    study: optuna.Study,
    parent: mlflow.entities.Run,
) -> None:
    """After Ctrl-C or an error: runs agree with the study and the parent run ends KILLED, as
    far as the tracking store answers at once (the next start sets right what is left)."""
    from mnist_sweep.sweep.checks import mlflow_without_retries

    try:
        with mlflow_without_retries():
            mirror_study(client, experiment, sweep_id, study)
            client.set_terminated(parent.info.run_id, "KILLED")
    except Exception as error:
        log.warning("MLflow's runs are set right at the next start of the sweep: %s", error)
