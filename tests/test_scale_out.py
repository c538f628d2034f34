"""Many workers on one sweep, against real servers: PostgreSQL for the study, `mlflow server`
(on PostgreSQL, proxying artifacts) for the runs, and a single-node SLURM cluster for trials
and workers run as jobs. The servers start once per session."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from mnist_sweep import tracking
from mnist_sweep.config import SweepConfig
from mnist_sweep.sweep.keep import promote, register
from mnist_sweep.sweep.liveness import OWNER
from mnist_sweep.sweep.storage import make_storage
from mnist_sweep.sweep.sweeper import tell

from tests.support import (
    Calls,
    Meeting,
    MlflowServer,
    Postgres,
    ServerError,
    SlurmCluster,
    at_once,
    in_threads,
    mlflow_runs,
    states,
    sweep_command,
    table_locked,
)

pytestmark = pytest.mark.server

HEARTBEAT_S, GRACE_S = 1, 4


class Sweep:
    """One study on the servers, with its own database, experiment and registered model."""

    def __init__(self, name: str, postgres: Postgres, tracking: MlflowServer, data_root: Path):
        self.name, self.tracking = name, tracking
        # One storage (one connection pool) for the test's many polls: a storage per poll would
        # leave its connections open until collected, and PostgreSQL refuses clients past 100.
        self.storage = optuna.storages.RDBStorage(postgres.create_database(name))
        self.overrides = [
            f"hydra.sweeper.storage={postgres.url(name)}", f"mlflow.tracking_uri={tracking.url}",
            f"hydra.sweeper.study_name={name}", f"mlflow.experiment_name={name}",
            f"sweep.registered_model={name}",
            "sweep.min_test_accuracy=0.5",
            f"hydra.sweeper.heartbeat_interval={HEARTBEAT_S}",
            f"hydra.sweeper.grace_period={GRACE_S}",
        ]  # fmt: skip
        self.data_root = data_root

    def start(self, folder: Path, *overrides: str) -> subprocess.Popen:
        """A worker: `python run.py -m` with the sweep's overrides; its log goes to a file."""
        command = sweep_command(self.data_root, *self.overrides, *overrides)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".log", delete=False) as log:
            worker = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        worker.log = Path(log.name)
        return worker

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.storage)

    def trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        """The study's trials (in `states`), none before a worker created the study."""
        with contextlib.suppress(KeyError):
            return self.study().get_trials(states=states or None)
        return []

    def runs(self, role: str = "trial") -> list[mlflow.entities.Run]:
        client = mlflow.MlflowClient(self.tracking.url)
        experiment = client.get_experiment_by_name(self.name)
        if experiment is None:
            return []
        query = f"tags.`mnist_sweep.role` = '{role}'"
        return client.search_runs([experiment.experiment_id], query)


def finish(process: subprocess.Popen, timeout_s: float = 600) -> None:
    """Wait for a worker; it must succeed (else show the end of its log)."""
    if process.wait(timeout=timeout_s) != 0:
        pytest.fail(process.log.read_text()[-3000:])


def wait_for(condition, timeout_s: float = 300, every_s: float = 0.1):
    """Poll until `condition()` returns something true, and return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every_s)
    raise TimeoutError(f"{condition} not met within {timeout_s} s")


def test_two_workers_share_one_study_to_exactly_n_trials_with_distinct_draws(
    postgres: Postgres, tracking_server: MlflowServer, data_root: Path, tmp_path: Path
) -> None:
    sweep = Sweep("two_workers", postgres, tracking_server, data_root)
    workers = [sweep.start(tmp_path, "hydra.sweeper.n_trials=4") for _ in range(2)]
    for worker in workers:
        finish(worker)
    logs = [worker.log.read_text() for worker in workers]
    trials = sweep.study().trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4, logs
    assert all("Kept trial" in log for log in logs), logs  # both registered, neither failed
    assert len({tuple(sorted(trial.params.items())) for trial in trials}) == 4
    assert len({trial.user_attrs[OWNER] for trial in trials}) == 2  # both workers ran some
    runs = sweep.runs()
    assert sorted(int(run.data.tags["mnist_sweep.trial_number"]) for run in runs) == [0, 1, 2, 3]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:/") for run in runs)
    [parent] = sweep.runs("sweep")
    assert parent.info.status == "FINISHED" and parent.data.metrics["finished_trials"] == 4
    assert (tmp_path / "multirun" / sweep.name / "best" / "model.pt").exists()
    client = mlflow.MlflowClient(tracking_server.url)
    champion = client.get_model_version_by_alias(sweep.name, "champion")
    model_id = champion.source.removeprefix("models:/")  # the version is the logged MLflow Model
    location = client.get_logged_model(model_id).artifact_location
    assert location.startswith("mlflow-artifacts:/")
    local = mlflow.artifacts.download_artifacts(
        location, dst_path=str(tmp_path / "champion"),
        tracking_uri=tracking_server.url,
    )  # fmt: skip
    predictions = mlflow.pyfunc.load_model(local).predict(np.zeros((2, 1, 28, 28), np.float32))
    assert predictions.shape == (2, 10)


def log_dataset_in_a_new_run(experiment: str, source: Path) -> str:
    with mlflow.start_run(experiment_id=experiment) as run:
        tracking.log_dataset("mnist", {"file": "0" * 64}, str(source))
        return run.info.run_id


def test_workers_logging_the_dataset_at_once_all_record_it(
    postgres: Postgres, tracking_server: MlflowServer, data_root: Path, monkeypatch
) -> None:
    """The store adds a dataset new to an experiment by a read, then an insert: two runs
    logging it at once used to fail one trial on the duplicate key. Here the table is held
    until both requests have read that the dataset is missing and wait to insert it."""
    client = mlflow.MlflowClient(tracking_server.url)
    logged_inputs = Calls(monkeypatch, mlflow, "log_input")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server.url)  # log_dataset logs to the active run
    try:
        experiment = client.create_experiment("dataset_race")
        with table_locked(postgres.url("mlflow"), "datasets") as waiting:
            join = in_threads(log_dataset_in_a_new_run, experiment, data_root)
            assert waiting(2) == 2  # both requests read, neither has inserted
        for run_id in join():
            [logged] = client.get_run(run_id).inputs.dataset_inputs
            assert logged.dataset.name == "mnist"
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(logged_inputs.by) == 3  # the race was lost by one, which logged once more


def test_workers_ending_at_once_both_tag_the_sweeps_run(
    postgres: Postgres, tracking_server: MlflowServer, monkeypatch
) -> None:
    """Each worker tags the parent run with the best trial as it ends: a new tag is a read,
    then an insert, and the slower of two tagging at once used to fail. Here the table is held
    until both requests have read that the tag is missing and wait to insert it."""
    client = mlflow.MlflowClient(tracking_server.url)
    experiment = client.create_experiment("tag_race")
    run_id = client.create_run(experiment).info.run_id
    tagged = Calls(monkeypatch, client, "set_tag")
    with table_locked(postgres.url("mlflow"), "tags") as waiting:
        join = in_threads(tracking.once_more_if_raced, client.set_tag, run_id, "best_trial",
                          "trial_3")  # fmt: skip
        assert waiting(2) == 2  # both requests read, neither has inserted
    join()
    assert len(tagged.by) == 3  # the race was lost by one, which tagged once more
    assert client.get_run(run_id).data.tags["best_trial"] == "trial_3"


# What register and promote read before they write: the registered model, the run's versions,
# the champion.
LOOKS = ("search_registered_models", "search_model_versions", "get_model_version_by_alias")


def register_and_promote(client, run, model_id: str, config: SweepConfig) -> str:
    version = register(client, run, model_id, config.registered_model)
    promote(client, version, config.alias, config.promote)
    return version.version


def test_workers_registering_the_best_run_at_once_leave_one_version(
    tracking_server: MlflowServer, monkeypatch
) -> None:
    """Both workers find no registered model, then no version of the run, then no champion,
    before either goes on (each waits at a barrier after each look): both create the model
    and a version, and both point the alias."""
    client = mlflow.MlflowClient(tracking_server.url)
    experiment = client.create_experiment("register_race")
    run = client.create_run(experiment)
    model = client.create_logged_model(experiment, source_run_id=run.info.run_id)
    config = SweepConfig(min_test_accuracy=0.5, registered_model="register_race",
                         alias="champion")  # fmt: skip
    looks = [Meeting(monkeypatch, client, name) for name in LOOKS]
    made = Calls(monkeypatch, client, "create_model_version")
    versions = at_once(register_and_promote, client, run, model.model_id, config)
    assert [sorted(look.passed) for look in looks] == [["worker-0", "worker-1"]] * 3
    assert sorted(made.by) == ["worker-0", "worker-1"]  # two versions made, one deleted
    assert versions == ["1", "1"]
    [kept] = client.search_model_versions(f"name = '{config.registered_model}'")
    assert kept.version == "1" and kept.run_id == run.info.run_id
    assert client.get_model_version_by_alias(config.registered_model, "champion").version == "1"


def test_a_worker_killed_mid_trial_is_failed_and_its_trial_resumed_by_the_survivor(
    postgres: Postgres, tracking_server: MlflowServer, data_root: Path, tmp_path: Path
) -> None:
    sweep = Sweep("killed_worker", postgres, tracking_server, data_root)
    # Longer trials, so that the survivor is busy training when the grace period runs out.
    longer = ["hydra.sweeper.n_trials=3", "trainer.epochs=3", "~pruner"]
    doomed, survivor = sweep.start(tmp_path, *longer), sweep.start(tmp_path, *longer)
    doomed_owner = f"{socket.gethostname()}:{doomed.pid}"

    def doomed_trial_past_its_first_epoch() -> list[optuna.trial.FrozenTrial]:
        running = sweep.trials(TrialState.RUNNING)
        return [t for t in running if t.user_attrs.get(OWNER) == doomed_owner
                and t.intermediate_values]  # fmt: skip

    [victim] = wait_for(doomed_trial_past_its_first_epoch, every_s=0.05)
    # No signal handler runs, nothing is told: as when a host is lost. Liveness by process id
    # is not used with heartbeats, so the survivor judges this worker as if it ran elsewhere.
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    doomed.wait()
    wait_for(lambda: sweep.trials()[victim.number].state is TrialState.FAIL, 60, 0.05)
    failed_after_s = time.monotonic() - killed_at
    # Its last heartbeat came at most HEARTBEAT_S before the kill; the survivor checks every
    # HEARTBEAT_S while training (every 2 s while waiting).
    assert GRACE_S - HEARTBEAT_S - 0.5 <= failed_after_s <= GRACE_S + 3

    finish(survivor)  # it ends by itself, having run the failed trial's retry
    trials = sweep.study().trials
    states = [trial.state for trial in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    [retried] = [t for t in trials if t.system_attrs.get("retry_history") == [victim.number]]
    assert retried.params == victim.params and retried.state is TrialState.COMPLETE
    assert "Continuing MLflow run" in survivor.log.read_text()
    runs = {run.data.tags["mnist_sweep.trial_number"]: run for run in sweep.runs()}
    assert str(victim.number) not in runs  # its run went on as its retry's
    assert [run.info.status for run in runs.values()] == ["FINISHED"] * 3
    client = mlflow.MlflowClient(tracking_server.url)
    curve = client.get_metric_history(runs[str(retried.number)].info.run_id, "val_accuracy")
    assert [metric.step for metric in curve] == [1, 2, 3]


def test_a_tracking_server_restarted_mid_sweep_loses_nothing(
    postgres: Postgres, tracking_server: MlflowServer, data_root: Path, tmp_path: Path
) -> None:
    sweep = Sweep("server_restart", postgres, tracking_server, data_root)
    worker = sweep.start(tmp_path, "hydra.sweeper.n_trials=2")
    wait_for(lambda: any(run.info.status == "FINISHED" for run in sweep.runs()))
    tracking_server.stop()
    time.sleep(3)  # seconds of downtime while the worker trains and logs
    tracking_server.start()
    finish(worker)
    runs = sweep.runs()
    assert sorted(run.data.tags["mnist_sweep.trial_number"] for run in runs) == ["0", "1"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert all("val_accuracy" in run.data.metrics for run in runs)
    assert [trial.state for trial in sweep.study().trials] == [TrialState.COMPLETE] * 2


def test_trials_run_as_slurm_jobs(slurm: SlurmCluster, data_root: Path, tmp_path: Path) -> None:
    command = sweep_command(
        data_root, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
        "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2", "sweep.min_test_accuracy=0.5",
    )  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=slurm.env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert states(tmp_path) == [TrialState.COMPLETE] * 2
    _, runs = mlflow_runs(tmp_path, "trial")
    assert {run.info.status for run in runs} == {"FINISHED"} and len(runs) == 2
    jobs = slurm.command("sacct", "-X", "-n", "-P", "-o", "JobName,State").split()
    assert jobs.count("run|COMPLETED") == 2  # submitit names the jobs after run.py


# submitit's job ignores SLURM's SIGTERM, so a requeued job trains on until SIGKILL, KillWait
# (5 s) later: 60 epochs of 3,000 images take several times that.
LONG_EPOCHS = 60


def test_a_trial_whose_slurm_job_is_requeued_continues_from_its_last_epoch(
    slurm: SlurmCluster, data_root: Path, tmp_path: Path
) -> None:
    command = sweep_command(
        data_root, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
        "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", "hydra.sweeper.n_trials=1",
        f"trainer.epochs={LONG_EPOCHS}", "sweep.min_test_accuracy=0.5",
    )  # fmt: skip
    sweep = subprocess.Popen(command, cwd=tmp_path, env=slurm.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    state = tmp_path / "multirun" / "mlp" / "trial_0" / "state.pt"
    wait_for(state.exists, every_s=0.05)
    [job] = slurm.command("squeue", "-h", "-o", "%i").split()
    slurm.command("scontrol", "requeue", job)  # as SLURM does on preemption
    output, _ = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, output[-3000:]
    assert states(tmp_path) == [TrialState.COMPLETE]

    def accounted() -> list[str]:  # slurmdbd records the job's end a moment after it ends
        history = slurm.command("sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job).split()
        return history if history[-1:] == ["COMPLETED"] else []

    assert wait_for(accounted, 60, 0.5)[0] == "REQUEUED"
    log = (tmp_path / "multirun" / "mlp" / "trial_0" / "run.log").read_text()
    assert f"from {state}" in log  # the requeued job continued its own state
    client, [run] = mlflow_runs(tmp_path, "trial")
    assert run.info.status == "FINISHED"
    curve = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [metric.step for metric in curve] == list(range(1, LONG_EPOCHS + 1))


SLURM_ENDED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
)


class WorkerJob:
    """A worker, `python run.py -m`, submitted as a SLURM batch job."""

    def __init__(self, slurm: SlurmCluster, sweep: Sweep, folder: Path, *overrides: str):
        script = shlex.join(sweep_command(sweep.data_root, *sweep.overrides, *overrides))
        self.slurm, self.folder = slurm, folder
        self.id = slurm.command(
            "sbatch", "--parsable", "--requeue", "--open-mode=append", f"--chdir={folder}",
            f"--output={folder}/worker-%j.out", "--wrap", script,
        ).strip()  # fmt: skip

    def state(self) -> str:
        out = self.slurm.command("sacct", "-X", "-n", "-P", "-o", "State", "-j", self.id)
        return out.strip().split("\n")[-1].split()[0] if out.strip() else "PENDING"

    def wait_for_end(self, timeout_s: float) -> str:
        """Wait until the job has ended (a requeued one: ended again); its final state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (state := self.state()) in SLURM_ENDED:
                return state
            time.sleep(1)
        pytest.fail(f"job {self.id} did not end within {timeout_s} s\n{self.diagnosis()}")

    def diagnosis(self) -> str:
        """SLURM's view of the job and the node, and the job's output, for a failure message."""
        history = ("sacct", "-D", "-X", "-P", "-o", "JobID,State,ExitCode,Start,End", "-j", self.id)
        views = [history, ("scontrol", "show", "job", self.id), ("sinfo", "-R")]
        parts = []
        for view in views:
            try:
                parts.append(self.slurm.command(*view))
            except ServerError as error:
                parts.append(str(error))
        output = self.folder / f"worker-{self.id}.out"
        parts.append(output.read_text(errors="replace")[-4000:] if output.exists() else "")
        controller = self.slurm.folder / "slurmctld.log"
        parts.append(controller.read_text(errors="replace")[-4000:])
        return "\n----\n".join(parts)


def running_trial_with_its_run(sweep: Sweep) -> optuna.trial.FrozenTrial | None:
    numbers = {run.data.tags.get("mnist_sweep.trial_number") for run in sweep.runs()}
    running = sweep.trials(TrialState.RUNNING)
    return next((trial for trial in running if str(trial.number) in numbers), None)


def test_a_requeued_worker_job_resumes_the_study_and_its_trial_from_its_last_epoch(
    slurm: SlurmCluster, postgres: Postgres, tracking_server: MlflowServer, data_root: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    sweep = Sweep("slurm_requeue", postgres, tracking_server, data_root)
    worker = WorkerJob(slurm, sweep, tmp_path, "hydra.sweeper.n_trials=2", "trainer.epochs=3",
                       "~pruner")  # fmt: skip
    victim = wait_for(lambda: running_trial_past_its_first_epoch(sweep), every_s=0.05)
    slurm.command("scontrol", "requeue", worker.id)  # as SLURM does on preemption
    wait_for(lambda: sweep.trials()[victim.number].state is TrialState.FAIL, GRACE_S + 5)
    # SLURM holds a requeued job back until the old credential expires (the cluster's
    # cred_expire); starting it sooner fails its launch with "Job credential revoked".
    state = worker.wait_for_end(300)
    assert state == "COMPLETED", worker.diagnosis()
    trials = sweep.trials()
    states = [trial.state for trial in trials]
    assert states.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING not in states
    [retried] = [t for t in trials if t.system_attrs.get("retry_history") == [victim.number]]
    assert retried.state is TrialState.COMPLETE and retried.params == victim.params
    assert "Continuing MLflow run" in (tmp_path / f"worker-{worker.id}.out").read_text()
    runs = {run.data.tags["mnist_sweep.trial_number"]: run for run in sweep.runs()}
    assert {run.info.status for run in runs.values()} == {"FINISHED"} and len(runs) == 2
    client = mlflow.MlflowClient(tracking_server.url)
    curve = client.get_metric_history(runs[str(retried.number)].info.run_id, "val_accuracy")
    assert [metric.step for metric in curve] == [1, 2, 3]


def running_trial_past_its_first_epoch(sweep: Sweep) -> optuna.trial.FrozenTrial | None:
    """A running trial that has saved a training state (it reports after saving)."""
    running = sweep.trials(TrialState.RUNNING)
    return next((trial for trial in running if trial.intermediate_values), None)


def test_a_cancelled_worker_job_leaves_nothing_running(
    slurm: SlurmCluster, postgres: Postgres, tracking_server: MlflowServer, data_root: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    sweep = Sweep("slurm_cancel", postgres, tracking_server, data_root)
    worker = WorkerJob(slurm, sweep, tmp_path, "hydra.sweeper.n_trials=3", "trainer.epochs=3")
    victim = wait_for(lambda: running_trial_with_its_run(sweep))
    slurm.command("scancel", worker.id)
    wait_for(lambda: worker.state() == "CANCELLED", 60, 0.5)
    # SIGTERM fails the trial at once; a worker killed outright would take the grace period.
    wait_for(lambda: not sweep.trials(TrialState.RUNNING), GRACE_S + 5)
    assert sweep.trials()[victim.number].state is TrialState.FAIL
    runs = {run.data.tags["mnist_sweep.trial_number"]: run for run in sweep.runs()}
    assert runs[str(victim.number)].info.status == "FAILED"


def test_a_database_outage_shorter_than_the_grace_period_fails_no_live_trial(
    postgres: Postgres, tracking_server: MlflowServer, data_root: Path, tmp_path: Path
) -> None:
    sweep = Sweep("db_outage", postgres, tracking_server, data_root)
    worker = sweep.start(
        tmp_path, "hydra.sweeper.n_trials=2", "trainer.epochs=4", "~pruner",
        "hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=30",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",  # MLflow's server is on it too
    )  # fmt: skip
    # Stopped while a trial trains: it has reported an epoch and has more to go.
    wait_for(lambda: [t for t in sweep.trials(TrialState.RUNNING) if t.intermediate_values])
    postgres.stop()
    time.sleep(8)  # four heartbeats and some epochs' reports missed, within the grace period
    postgres.start()
    finish(worker)
    log = worker.log.read_text()
    storage = optuna.storages.RDBStorage(postgres.url(sweep.name, "postgresql+psycopg"))
    trials = optuna.load_study(study_name=sweep.name, storage=storage).trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2, log
    assert "the study's database is unreachable" in log and "database answers again" in log
    assert "marked FAIL" not in log


def test_a_result_told_while_the_database_is_away_is_not_lost(postgres: Postgres) -> None:
    postgres.create_database("tell_outage")
    storage = make_storage(postgres.url("tell_outage"), HEARTBEAT_S, GRACE_S)
    study = optuna.create_study(study_name="tell", storage=storage, direction="maximize")
    trial = study.ask()
    result = JobReturn(status=JobStatus.COMPLETED, _return_value=0.97)
    postgres.stop()
    back = threading.Timer(5, postgres.start)
    back.start()
    try:
        assert tell(study, trial, result) is TrialState.COMPLETE
    finally:
        back.join()
    fresh = optuna.storages.RDBStorage(postgres.url("tell_outage", "postgresql+psycopg"))
    [told] = optuna.load_study(study_name="tell", storage=fresh).trials
    assert (told.state, told.value) == (TrialState.COMPLETE, 0.97)
