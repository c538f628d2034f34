"""Faults leave the records true: bad input ends in one line and creates nothing, a torn
journal heals, MLflow mirrors the study, a killed sweep's orphans stop, heartbeats outlive a
database error."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from mnist_sweep import tracking
from mnist_sweep.config import MlflowConfig
from mnist_sweep.sweep import liveness, records
from mnist_sweep.sweep.checks import check_sweeper, probe_sqlite
from mnist_sweep.sweep.journal import HealingJournalFileBackend

from tests.support import (
    compose_sweeper,
    free_port,
    mlflow_runs,
    needs_root,
    run_sweep,
    study,
    sweep_command,
)

BAD_OVERRIDES = [
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0: must be a whole number >= 1"),
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0: must be"),
    ("hydra.sweeper.n_jobs=many", "hydra.sweeper.n_jobs=many: must be a whole number >= 1"),
    ("hydra.sweeper.trials_per_device=0", "hydra.sweeper.trials_per_device=0: must be"),
    ("hydra.sweeper.max_failure_rate=-1", "hydra.sweeper.max_failure_rate=-1.0: must be"),
    ("hydra.sweeper.heartbeat_interval=0", "hydra.sweeper.heartbeat_interval=0: must be"),
    ("hydra.sweeper.direction=minimize", "hydra.sweeper.direction=minimize: the objective"),
    ("hydra.sweeper.study_name=../elsewhere", "hydra.sweeper.study_name=../elsewhere: use"),
    ('hydra.sweeper.study_name="it\'s"', "hydra.sweeper.study_name=it's: use"),
    ("hydra.sweeper.pruner.n_startup_trials=-3", "hydra.sweeper.pruner: Number of startup"),
    ("optimizer.lr=tag(log,interval(0,1))", "optimizer.lr=tag(log,interval(0,1)): `low > 0`"),
    ("optimizer.lr=interval(1e-2,3e-4)", "hydra.sweeper.params: optimizer.lr=interval(1e-2"),
    ("data.val_size=60000", "data.val_size: must be between 1 and 59999"),
    ("mlflow.experiment_name=''", "mlflow.experiment_name: must not be empty"),
    ("mlflow.tracking_uri=htp://nowhere", "mlflow.tracking_uri=htp://nowhere: not a tracking"),
]


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    return lines[0]


def sweep_in(
    folder: Path, data_root: Path, *overrides: str, **options
) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(data_root, *overrides), cwd=folder, capture_output=True,
                          text=True, timeout=300, **options)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES)
def test_a_bad_override_ends_in_one_line_and_creates_nothing(
    data_root: Path, tmp_path: Path, override: str, message: str
) -> None:
    assert message in one_line(sweep_in(tmp_path, data_root, override))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_packing_a_remote_launcher_ends_in_one_line_and_creates_nothing(
    data_root: Path, tmp_path: Path
) -> None:
    # n_jobs=auto counts this machine's cores: SLURM jobs would get one thread each.
    line = one_line(sweep_in(tmp_path, data_root, "hydra/launcher=submitit_slurm",
                             "hydra.sweeper.n_jobs=auto"))  # fmt: skip
    assert line == ("hydra.sweeper.n_jobs=auto packs this machine with hydra/launcher=joblib; "
                    "with SlurmLauncher give the trials in flight as a number")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_traceback_is_there_on_request(data_root: Path, tmp_path: Path) -> None:
    done = sweep_in(tmp_path, data_root, "hydra.sweeper.n_trials=0",
                    env={**os.environ, "HYDRA_FULL_ERROR": "1"})  # fmt: skip
    assert done.returncode == 1 and "Traceback" in done.stderr and "SweepError" in done.stderr


def test_a_store_whose_writer_was_killed_mid_commit_is_rolled_back_not_refused(
    tmp_path: Path,
) -> None:
    """kill -9 of a sweep while MLflow commits leaves `mlflow.db-journal`, a hot journal: the
    next start must roll it back (SQLite's own recovery), not call the store unreadable."""
    import sqlite3

    database = tmp_path / "mlflow.db"
    tracking.experiment_id(MlflowConfig(f"sqlite:///{database}", "kept", None))
    writer = (
        "import os, signal, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "db.execute('PRAGMA cache_size=1')  # pages reach the file before the commit\n"
        "db.execute('BEGIN')\n"
        "db.execute('CREATE TABLE padding (x)')\n"
        "db.executemany('INSERT INTO padding VALUES (?)', [('x' * 500,)] * 5000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(database)], check=False, timeout=60)
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0
    probe_sqlite("mlflow.tracking_uri=...", database)
    assert not (tmp_path / "mlflow.db-journal").exists()
    with contextlib.closing(sqlite3.connect(database)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "experiments" in tables and "padding" not in tables
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.slow
def test_an_unwritable_data_root_and_a_corrupt_store_end_in_one_line(
    data_root: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    done = subprocess.run([*sweep_command(data_root), f"data.root={a_file}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert f"data.root={a_file}: {a_file} is not a folder" in one_line(done)
    (tmp_path / "mlflow.db").write_bytes(b"garbage, not SQLite")
    assert "is not a readable SQLite store" in one_line(sweep_in(tmp_path, data_root))
    assert (tmp_path / "mlflow.db").read_bytes() == b"garbage, not SQLite"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file", "mlflow.db"]


@pytest.mark.slow
def test_servers_that_do_not_answer_fail_the_sweep_within_the_bound_and_create_nothing(
    data_root: Path, tmp_path: Path
) -> None:
    port, bound = free_port(), "hydra.sweeper.reach_timeout=2"
    started = time.monotonic()
    line = one_line(sweep_in(tmp_path, data_root, f"mlflow.tracking_uri=http://127.0.0.1:{port}",
                             bound))  # fmt: skip
    assert line.startswith(f"mlflow.tracking_uri=http://127.0.0.1:{port}: ")
    assert "Connection refused" in line and line.endswith("(tried for 2 s)")
    assert time.monotonic() - started < 2 + 30  # the bound, plus the process's own start and end
    url = f"postgresql://sweep:s3cret@127.0.0.1:{port}/optuna"
    line = one_line(sweep_in(tmp_path, data_root, f"hydra.sweeper.storage={url}", bound))
    assert line.startswith(f"hydra.sweeper.storage=postgresql://sweep:***@127.0.0.1:{port}")
    assert "s3cret" not in line and "Connection refused" in line
    assert line.endswith("(tried for 2 s)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("value", "message"), [("0", "must be a number of seconds > 0"),
                                                ("-5", "must be a number of seconds > 0"),
                                                ("soon", "reach_timeout")])  # fmt: skip
def test_a_bad_reach_timeout_is_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(Exception, match=message) as error:
        check_sweeper(compose_sweeper([f"hydra.sweeper.reach_timeout={value}"]), "maximize")
    assert "reach_timeout" in str(error.value)


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs, unmounted after the test (mounting needs root, as in CI); without root
    the test fails with one line saying so."""
    if why := needs_root("mounting a tmpfs (a full disk)"):
        pytest.fail(why, pytrace=False)
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write to `folder` until the device is full."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 1024)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def journal_study(path: Path, backend=HealingJournalFileBackend) -> optuna.Study:
    storage = optuna.storages.JournalStorage(backend(str(path)))
    return optuna.create_study(
        study_name="mlp", storage=storage, load_if_exists=True, direction="maximize"
    )


def add_trials(study: optuna.Study, count: int) -> None:
    for _ in range(count):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, trial.params["x"])


def append_until_full(journal: Path, backend) -> tuple[bytes, int]:
    """Add trials on the full disk until an append fails (the journal's last page has room
    for a few): the journal before the failed append, and the trials added.

    Every append finds room for part of its records: were the journal's last page exactly
    full, the disk would refuse the whole append and nothing would tear, so before each append
    a page of the filler is freed if it is, and the journal goes on into a new page.
    """
    page, filler = os.sysconf("SC_PAGE_SIZE"), journal.parent / "filler"
    append = backend.append_logs

    def with_room(self, logs) -> None:
        if journal.stat().st_size % page == 0:
            os.truncate(filler, filler.stat().st_size - page)
        append(self, logs)

    backend.append_logs = with_room
    try:
        study_ = journal_study(journal, backend)
        for added in range(100):
            before = journal.read_bytes()
            try:
                add_trials(study_, 1)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                return before, added
    finally:
        backend.append_logs = append
    raise AssertionError("the full disk took 100 trials")


@pytest.mark.server
def test_a_full_disk_never_tears_our_journal(full_disk: Path) -> None:
    journal = full_disk / "journal.log"
    add_trials(journal_study(journal), 3)
    fill(full_disk)
    before, added = append_until_full(journal, HealingJournalFileBackend)
    after = journal.read_bytes()  # the failed append was cut back: whole records only
    assert after.startswith(before) and after.endswith(b"\n")
    assert all(json.loads(line) for line in after.splitlines())
    (full_disk / "filler").unlink()
    add_trials(journal_study(journal), 1)
    states_ = [t.state for t in journal_study(journal).trials]
    assert states_.count(TrialState.COMPLETE) == 3 + added + 1


@pytest.mark.server
def test_a_journal_torn_by_a_full_disk_heals_and_its_sweep_resumes(
    full_disk: Path, data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = full_disk / "optuna_journal.log"
    stock = optuna.storages.journal.JournalFileBackend
    add_trials(journal_study(journal, stock), 2)
    fill(full_disk)
    _, added = append_until_full(journal, stock)
    assert not journal.read_bytes().endswith(b"\n")  # Optuna's own backend tore a record
    (full_disk / "filler").unlink()
    workdir = tmp_path / "work"
    workdir.mkdir()
    n_trials = 2 + added + 1  # one more than the torn journal holds
    done = run_sweep(workdir, data_root, f"hydra.sweeper.n_trials={n_trials}",
                     "sweep.min_test_accuracy=0.5",
                     f"hydra.sweeper.storage.log_storage.file_path={journal}")  # fmt: skip
    [aside] = full_disk.glob("optuna_journal.log.damaged-*")
    said = [line for line in (done.stdout + done.stderr).splitlines() if aside.name in line]
    assert len(said) == 1 and "set aside 1 damaged record" in said[0]
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())
    resumed = journal_study(journal)
    assert [t.state for t in resumed.trials].count(TrialState.COMPLETE) == n_trials


def test_mlflow_mirrors_the_study_and_only_complete_trials_are_kept_from(tmp_path: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("faults")
    study_ = optuna.create_study(direction="maximize")
    runs = {}
    for number, (state, status) in enumerate([(TrialState.COMPLETE, "FINISHED"),
                                              (TrialState.FAIL, "FINISHED"),  # failed as stale
                                              (TrialState.PRUNED, "RUNNING"),
                                              (TrialState.FAIL, "RUNNING"),  # a dead worker's
                                              (TrialState.RUNNING, "RUNNING")]):  # fmt: skip
        trial = study_.ask()
        if state is not TrialState.RUNNING:
            study_.tell(trial, 0.9 if state is TrialState.COMPLETE else None, state=state)
        run = client.create_run(experiment, tags={records.SWEEP_ID: "s", tracking.ROLE: "trial",
                                                  records.TRIAL_NUMBER: str(number)})  # fmt: skip
        client.log_metric(run.info.run_id, "val_accuracy", 0.9 + number / 100)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        runs[number] = run.info.run_id
    records.mirror_study(client, experiment, "s", study_)
    status = {n: client.get_run(run_id).info.status for n, run_id in runs.items()}
    assert status == {0: "FINISHED", 1: "FAILED", 2: "KILLED", 3: "FAILED", 4: "RUNNING"}
    trials = records.sweep_runs(client, experiment, "s", "trial")
    assert [run.info.run_id for run in records.complete(trials, study_)] == [runs[0]]


def test_a_heartbeat_goes_on_through_database_errors() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def get_heartbeat_interval(self) -> int:
            return 1

        def record_heartbeat(self, trial_id: int) -> None:
            self.calls += 1
            if self.calls <= 3:
                raise optuna.exceptions.StorageInternalError("the database is away")

    storage = Flaky()
    stop = threading.Event()
    thread = threading.Thread(target=liveness.beat, args=(storage, 0, 0, 0.01, stop))
    thread.start()
    deadline = time.monotonic() + 10
    while storage.calls < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    assert storage.calls >= 6  # Optuna's own thread would have ended at the first error


@pytest.mark.slow
def test_a_killed_joblib_sweep_leaves_mlflow_and_optuna_agreeing_after_the_rerun(
    data_root: Path, tmp_path: Path
) -> None:
    overrides = ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=3",
                 "trainer.epochs=4", "sweep.min_test_accuracy=0.5"]  # fmt: skip
    sweep = subprocess.Popen(sweep_command(data_root, *overrides), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            _, running = mlflow_runs(tmp_path, "trial")
        except Exception:  # the store is being made
            running = []
        if len([run for run in running if run.info.status == "RUNNING"]) == 2:
            break
        time.sleep(0.2)
    orphans = children(sweep.pid)
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    try:
        # The orphaned jobs stop at the end of their epoch (their sweep is gone), FAILED.
        deadline = time.monotonic() + 120
        while {run.info.status for run in mlflow_runs(tmp_path, "trial")[1]} & {"RUNNING"}:
            assert time.monotonic() < deadline, "an orphaned job still trains"
            time.sleep(0.2)
        assert "FAILED" in {run.info.status for run in mlflow_runs(tmp_path, "trial")[1]}
        run_sweep(tmp_path, data_root, *overrides)
    finally:
        for pid in orphans:  # joblib's idle worker processes outlive their sweep
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    seen = {trial.number: trial.state for trial in study(tmp_path).trials}
    assert list(seen.values()).count(TrialState.COMPLETE) == 3
    _, trials = mlflow_runs(tmp_path, "trial")
    mirrored = {int(run.data.tags["mnist_sweep.trial_number"]): run.info.status for run in trials}
    assert {n: records.RUN_STATUS[seen[n]] for n in mirrored} == mirrored
    # A killed trial's run went on as its retry's, unless it had no state to continue.
    assert {n for n, state in seen.items() if state is TrialState.COMPLETE} <= set(mirrored)


def children(pid: int) -> list[int]:
    """Every descendant process of `pid` (joblib's worker processes)."""
    found, parents = [], {pid}
    for _ in range(3):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            child = int(stat.parent.name)
            if int(fields[1]) in parents and child not in found:
                found.append(child)
        parents |= set(found)
    return found
