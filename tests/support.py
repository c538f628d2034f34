"""Helpers shared by the tests and the benchmarks (`from tests.support import ...`); fixtures
live in tests/conftest.py.

- the real config, shrunk for tests: compose_config, small_overrides;
- sweeps: `python run.py -m` in a temporary folder, and the study and runs it leaves;
- real servers: a throwaway PostgreSQL cluster, `mlflow server` and a single-node SLURM
  cluster, each on free 127.0.0.1 ports with its files in a temporary folder (`remove()` ends
  it). A server that cannot start raises ServerError with its log; one whose programs are
  missing is named by `missing()` in one line: the tests fail on it, never skip;
- `mlflow models serve` for the length of a with block, and requests to it;
- races forced to happen: threads released together, and barriers put into a function.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from optuna.trial import TrialState

from mnist_sweep.config import DatasetName, register_schema
from mnist_sweep.data import DATASETS
from mnist_sweep.sweep import plugin

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
RUN_PY = REPO / "run.py"

# -- The real config, shrunk ----------------------------------------------------------------

# Where data=fashion_mnist reads from by default; CI installs Debian's package (.ci/run).
# Without it a developer's run skips these tests; under CI (CI set) they run, and fail.
FASHION_SOURCE = Path(DATASETS[DatasetName.fashion_mnist].source)
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_SOURCE.is_dir() and not os.environ.get("CI"),
    reason=f"Fashion-MNIST is absent: {FASHION_SOURCE} comes from Debian's dataset-fashion-mnist",
)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed config of `python run.py <overrides>`, without Hydra's own node."""
    return _compose(overrides or [])


def compose_sweeper(overrides: list[str]) -> DictConfig:
    """The composed `hydra.sweeper` node of `python run.py -m <overrides>`."""
    return _compose(overrides, return_hydra_config=True).hydra.sweeper


def _compose(overrides: list[str], **options) -> DictConfig:
    register_schema()
    plugin.register()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=overrides, **options)


def small_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    """A run that takes about a second: a training subset, one epoch, a private MLflow store."""
    return [
        f"data.root={data_root}",
        "data.train_subset=2000",
        "data.batch_size=100",
        "trainer.epochs=1",
        "model.hidden_sizes=[64,32]",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]


class PlainJob:
    """A job of a sweep as experiment.run sees it (its Job protocol), doing nothing; tests
    override what they need."""

    def tags(self, config) -> dict[str, str]:
        return {}

    def states(self) -> list[Path]:
        return []

    def resumed(self, history) -> None:
        pass

    def after_epoch(self, metrics) -> None:
        pass


# -- Sweeps ---------------------------------------------------------------------------------


def sweep_command(data_root: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(RUN_PY), "-m", f"data.root={data_root}",
            "data.train_subset=3000", "trainer.epochs=1", *overrides]  # fmt: skip


def run_sweep(folder: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        sweep_command(data_root, *overrides), cwd=folder, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def study(folder: Path, name: str = "mlp") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna_journal.log"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def states(folder: Path) -> list[TrialState]:
    return [trial.state for trial in study(folder).trials]


def interrupt_mid_trial(
    data_root: Path,
    folder: Path,
    overrides: list[str],
    stop: signal.Signals,
    ended: TrialState = TrialState.COMPLETE,
) -> list[TrialState]:
    """Start a sweep, send it `stop` once a trial has `ended` and a later one is running, and
    return the trial states it leaves."""
    process, log = start_logged_sweep(data_root, folder, overrides)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):  # the journal file exists before the study does
            seen = states(folder)
            if ended in seen and seen[-1] is TrialState.RUNNING:
                break
        time.sleep(0.02)
    stop_sweep(process, stop, log)
    return states(folder)


def stop_when_saved(
    data_root: Path, folder: Path, overrides: list[str], stop: signal.Signals, trial: int = 0
) -> int:
    """Start a sweep and send it `stop` as soon as trial `trial` has saved the training state of
    an epoch; the epoch of the state it leaves."""
    state = folder / "multirun" / "mlp" / f"trial_{trial}" / "state.pt"
    process, log = start_logged_sweep(data_root, folder, overrides)
    deadline = time.monotonic() + 300
    while not state.exists():
        assert process.poll() is None and time.monotonic() < deadline, "no state was saved"
        time.sleep(0.01)
    stop_sweep(process, stop, log)
    return torch.load(state, weights_only=True)["epoch"]


def start_logged_sweep(
    data_root: Path, folder: Path, overrides: list[str]
) -> tuple[subprocess.Popen, Path]:
    """A sweep started in `folder`, its output going to a log there."""
    log = folder / "stopped-sweep.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            sweep_command(data_root, *overrides), cwd=folder, stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log


def stop_sweep(process: subprocess.Popen, stop: signal.Signals, log: Path) -> None:
    """Send `stop`; a sweep still running a minute later fails the test with its log."""
    os.kill(process.pid, stop)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the sweep ran on 60 s after {stop.name}:\n{log.read_text()[-5000:]}")


def mlflow_runs(folder: Path, role: str):
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    return client, client.search_runs([experiment], f"tags.`mnist_sweep.role` = '{role}'")


# -- Real servers ---------------------------------------------------------------------------

# PostgreSQL refuses to run as root; Debian's package creates this user.
POSTGRES_USER = "postgres"
# Debian keeps pg_ctl and initdb in /usr/lib/postgresql/<version>/bin, off PATH.
PG_CTL = shutil.which("pg_ctl") or max(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), default="")
PG_BIN = Path(PG_CTL).resolve().parent
# What a missing server's line ends with: how to get it, or how to do without.
GET_SERVERS = ("(bash .ci/run installs every server package, as root), "
               "or run the tests that need none: pytest -m 'not server'")  # fmt: skip
# SLURM with accounting, as .ci/run installs it: Debian package -> a program it brings.
SLURM_PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "slurm-client": "sbatch",
                  "munge": "munged", "slurmdbd": "slurmdbd",
                  "mariadb-server": "mariadb-install-db"}  # fmt: skip


class ServerError(RuntimeError):
    """A server did not start; the message carries the end of its log."""


def needs_root(what: str) -> str:
    """One line saying that `what` needs root, or "" when this process is root."""
    if os.geteuid() == 0:
        return ""
    return (f"{what} needs root: run the suite as root (as CI's .ci/run does), "
            "or run the tests that need no server: pytest -m 'not server'")  # fmt: skip


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def munge_socket() -> Path:
    """munged's compiled-in socket, as its --help gives it ("[/run/munge/munge.socket.2]" on
    Debian): sacctmgr ignores AuthInfo=socket=, so the cluster's munged must listen where every
    SLURM command looks."""
    usage = subprocess.run(["munged", "--help"], capture_output=True, text=True).stdout
    found = re.search(r"--socket=PATH.*\[(.+)\]", usage)
    if found is None:
        raise ServerError(f"munged --help names no default socket:\n{usage}")
    return Path(found.group(1))


def wait_until(ready, timeout_s: float, what: str, log: Path) -> None:
    """Poll `ready()` until it is true, or raise ServerError with the end of `log`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise ServerError(f"{what} did not start within {timeout_s:.0f} s:\n{tail}")


class Postgres:
    """A PostgreSQL cluster in a temporary folder, run by an unprivileged user when root."""

    @staticmethod
    def missing() -> str:
        """One line naming what this machine lacks to start one, or "" when it has it all."""
        if not PG_CTL or not (PG_BIN / "initdb").exists():
            return (
                f"PostgreSQL's pg_ctl/initdb not found: install Debian's postgresql {GET_SERVERS}"
            )
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(POSTGRES_USER)
            except KeyError:
                return (f"PostgreSQL runs as the user {POSTGRES_USER} when started by root, and"
                        f" there is none: install Debian's postgresql {GET_SERVERS}")  # fmt: skip
        return ""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mnist_sweep_pg_"))
        self.port = free_port()
        self.log = self.folder / "server.log"
        self._as = ["runuser", "-u", POSTGRES_USER, "--"] if os.geteuid() == 0 else []
        if self._as:
            user = pwd.getpwnam(POSTGRES_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "sweep", "--auth=trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self.start()

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(PG_BIN / program), *args],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"{program} {' '.join(args)} failed:\n{done.stderr[-3000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URL (psycopg 3)."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, "postgresql+psycopg")

    def url(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://sweep@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a database, serving (proxying) the artifacts itself."""

    def __init__(self, backend_store_uri: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mnist_sweep_mlflow_"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.folder / "server.log"
        self.backend_store_uri = backend_store_uri
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow), "server", "--backend-store-uri", self.backend_store_uri,
                   "--artifacts-destination", str(self.folder / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self.healthy, 120, "mlflow server", self.log)

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServerError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and its worker processes (it runs in its own process group)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def slurm_node() -> str:
    """This machine as a slurm.conf node line (from `slurmd -C`), a little under its memory."""
    detected = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    fields = dict(word.split("=", 1) for word in detected.stdout.split()[:7] if "=" in word)
    memory = int(int(fields["RealMemory"]) * 0.9)
    return (f"NodeName={socket.gethostname().split('.')[0]} NodeAddr=127.0.0.1 "
            f"CPUs={fields['CPUs']} RealMemory={memory} State=UNKNOWN")  # fmt: skip


class SlurmCluster:
    """A single-node SLURM cluster with accounting (slurmdbd on MariaDB), all on free ports,
    its files in a temporary folder; needs root. `env` points SLURM's
    commands (sbatch, squeue, sacct, scancel) at it."""

    @staticmethod
    def missing() -> str:
        """One line naming what this machine lacks to start one, or "" when it has it all."""
        if why := needs_root("a SLURM cluster (its daemons run as SlurmUser=root)"):
            return why
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        absent = [name for name, program in SLURM_PACKAGES.items()
                  if not shutil.which(program, path=path)]  # fmt: skip
        if absent:
            return (f"a SLURM cluster with accounting needs Debian's {' '.join(absent)}: "
                    f"install them {GET_SERVERS}")  # fmt: skip
        return ""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise ServerError("the SLURM cluster's daemons run as root (SlurmUser=root)")
        self.folder = Path(tempfile.mkdtemp(prefix="mnist_sweep_slurm_"))
        os.chmod(self.folder, 0o755)
        self.name = f"sweep{self.folder.name.rsplit('_', 1)[-1].lower()}"
        self.processes: list[subprocess.Popen] = []
        # Its jobs find their MLflow store by the sweep's config, never by a variable that
        # an earlier test left in this process's environment.
        inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.env = {**inherited, "SLURM_CONF": str(self.folder / "slurm.conf")}
        try:
            self._start_munge()
            self._start_mariadb()
            self._start_slurmdbd()
            self._start_slurm()
        except BaseException:
            self.remove()
            raise

    def _daemon(self, command: list[str], name: str, user: str | None = None) -> None:
        log = (self.folder / f"{name}.log").open("a")
        prefix = ["runuser", "-u", user, "--"] if user else []
        self.processes.append(subprocess.Popen([*prefix, *command], stdout=log,
                                               stderr=subprocess.STDOUT, env=self.env))  # fmt: skip

    def _owned(self, name: str, user: str, mode: int = 0o700) -> Path:
        path = self.folder / name
        path.mkdir()
        path.chmod(mode)
        account = pwd.getpwnam(user)
        os.chown(path, account.pw_uid, account.pw_gid)
        return path

    def _start_munge(self) -> None:
        """munged on its default socket, which SLURM's commands use (started unless running)."""
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        socket_path = munge_socket()
        run = socket_path.parent
        run.mkdir(exist_ok=True)
        account = pwd.getpwnam("munge")
        os.chown(run, account.pw_uid, account.pw_gid)
        munge = self._owned("munge", "munge")
        self._daemon(["munged", "--foreground", f"--log-file={munge}/munged.log",
                      f"--seed-file={munge}/seed"], "munged", "munge")  # fmt: skip
        wait_until(socket_path.exists, 30, "munged", munge / "munged.log")

    def _start_mariadb(self) -> None:
        data = self._owned("mysql", "mysql")
        self.mysql_port = free_port()
        subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       capture_output=True, check=True)  # fmt: skip
        self._daemon(["mariadbd", "--user=mysql", f"--datadir={data}", "--skip-grant-tables",
                      f"--socket={data}/mysqld.sock", f"--port={self.mysql_port}",
                      "--bind-address=127.0.0.1", f"--pid-file={data}/mysqld.pid",
                      "--innodb-flush-log-at-trx-commit=0"], "mariadbd")  # fmt: skip
        wait_until(lambda: self._accepts(self.mysql_port), 60, "mariadbd",
                   self.folder / "mariadbd.log")  # fmt: skip

    @staticmethod
    def _accepts(port: int) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def _start_slurmdbd(self) -> None:
        self.dbd_port = free_port()
        conf = self.folder / "slurmdbd.conf"
        conf.write_text(f"""AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.mysql_port}
StorageUser=root
StorageLoc=slurm_acct_db
PidFile={self.folder}/slurmdbd.pid
""")
        conf.chmod(0o600)
        self._daemon(["slurmdbd", "-D", "-s"], "slurmdbd")
        wait_until(lambda: self._accepts(self.dbd_port), 60, "slurmdbd",
                   self.folder / "slurmdbd.log")  # fmt: skip

    def _start_slurm(self) -> None:
        host = socket.gethostname().split(".")[0]
        # cred_expire: a requeued job starts again only once its old credential has expired,
        # 120 s by default; 10 s keeps the requeue test short.
        (self.folder / "slurm.conf").write_text(f"""ClusterName={self.name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmUser=root
StateSaveLocation={self.folder}/state
SlurmdSpoolDir={self.folder}/spool
SlurmctldPidFile={self.folder}/slurmctld.pid
SlurmdPidFile={self.folder}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
KillWait=5
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
{slurm_node()}
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        self.command("sacctmgr", "-i", "add", "cluster", self.name)
        self._daemon(["slurmctld", "-D", "-i"], "slurmctld")
        self._daemon(["slurmd", "-D"], "slurmd")
        wait_until(self.idle, 60, "slurmctld and slurmd", self.folder / "slurmctld.log")

    def command(self, *args: str) -> str:
        """Run a SLURM command against this cluster; its output."""
        done = subprocess.run(args, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise ServerError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def idle(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                              env=self.env)  # fmt: skip
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def remove(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- A served model -------------------------------------------------------------------------


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, log: Path) -> Iterator[str]:
    """`mlflow models serve --env-manager local` on a free 127.0.0.1 port for the length of a
    with block (tests, benchmarks); yields its URL, logs to `log`."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    # The server runs `uvicorn` by name: the venv's bin/ is on PATH, as when it is activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=environment, stdout=output, stderr=output,
                                  start_new_session=True)  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll `url` until it answers 200; an error with the server's log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(url, timeout=5) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def invoke(url: str, body: dict) -> tuple[int, dict]:
    """POST `body` as JSON to the served model's /invocations: the status and the answer,
    which must be valid JSON."""
    request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply, parse_constant=_not_json)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error, parse_constant=_not_json)


def _not_json(constant: str) -> None:
    # Python's json reads NaN and Infinity, which JSON has not; the server must not write them.
    raise ValueError(f"the answer is not valid JSON: it holds a bare {constant}")


# -- Races, forced --------------------------------------------------------------------------
# A race test makes its interleaving happen (barriers, a held lock) and checks that it did,
# rather than repeating the work and hoping two threads collide.

WAIT_S = 60  # how long a thread waits at a barrier for the others before the test fails


def in_threads(work: Callable[..., Any], *args: Any, workers: int = 2) -> Callable[[], list]:
    """Start `work(*args)` in `workers` threads (named worker-0, worker-1, ...) released
    together; returns `join`, which waits for them and gives their results in the order they
    ended, or raises the first error."""
    start, results = threading.Barrier(workers, timeout=WAIT_S), []

    def run() -> None:
        try:
            start.wait()
            results.append(work(*args))
        except Exception as error:
            results.append(error)

    threads = [threading.Thread(target=run, name=f"worker-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()

    def join() -> list:
        for thread in threads:
            thread.join()
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    return join


def at_once(work: Callable[..., Any], *args: Any, workers: int = 2) -> list:
    """`work(*args)` in `workers` threads released together; their results, or the first
    error."""
    return in_threads(work, *args, workers=workers)()


class Meeting:
    """Makes each thread's `call`-th call of `owner.name` wait, once it has returned (or
        raised), until `parties` threads have made theirs: all have read before any goes on.
        `passed` names the threads that went through; a thread left alone at it for WAIT_S breaks
        it (threading.BrokenBarrierError), and the test fails. Once `parties` have met, calls go
    straight through (the test's own checks afterwards)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str,
                 parties: int = 2, call: int = 1) -> None:  # fmt: skip
        self.barrier = threading.Barrier(parties, timeout=WAIT_S)
        self.passed: list[str] = []
        original, calls = getattr(owner, name), threading.local()

        def met(*args: Any, **kwargs: Any) -> Any:
            calls.made = getattr(calls, "made", 0) + 1
            try:
                return original(*args, **kwargs)
            finally:
                if calls.made == call and len(self.passed) < parties:  # one meeting only
                    self.barrier.wait()
                    self.passed.append(threading.current_thread().name)

        monkeypatch.setattr(owner, name, met)


class Calls:
    """Counts the calls of `owner.name`, by thread, and lets them through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.by: list[str] = []
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.by.append(threading.current_thread().name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@contextlib.contextmanager
def table_locked(url: str, table: str) -> Iterator[Callable[[int], int]]:
    """`table` of the PostgreSQL database at `url` held in EXCLUSIVE mode for the length of a
    with block: other sessions read it, and wait to write to it. Yields `waiting(n)`, which
    returns once n sessions wait for it (how many), or fails the test after WAIT_S."""
    import psycopg

    with psycopg.connect(url) as holder:
        holder.execute(f'LOCK TABLE "{table}" IN EXCLUSIVE MODE')

        def waiting(count: int) -> int:
            query = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass"
            deadline = time.monotonic() + WAIT_S
            while (found := holder.execute(query, (table,)).fetchone()[0]) < count:
                if time.monotonic() > deadline:
                    pytest.fail(f"{found} of {count} sessions came to write to {table}")
                time.sleep(0.05)
            return found

        yield waiting
        holder.rollback()


def flock_waiters(path: Path) -> int:
    """How many processes wait to flock `path` (its blocked requests in /proc/locks)."""
    inode = f":{path.stat().st_ino} "
    return sum(" -> FLOCK " in line and inode in line
               for line in Path("/proc/locks").read_text().splitlines())  # fmt: skip
