"""Real servers for the scale-out tests: a throwaway PostgreSQL cluster and `mlflow server`.

Each listens on a free 127.0.0.1 port and keeps its files in a temporary folder; `stop()`
ends it. A server that cannot start raises ServerError with its log: the tests fail, never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# PostgreSQL refuses to run as root; Debian's package creates this user.
POSTGRES_USER = "postgres"
# Debian keeps pg_ctl and initdb in /usr/lib/postgresql/<version>/bin, off PATH.
PG_CTL = shutil.which("pg_ctl") or max(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), default="")
PG_BIN = Path(PG_CTL).resolve().parent


class ServerError(RuntimeError):
    """A server did not start; the message carries the end of its log."""


def munge_socket() -> Path:
    """munged's compiled-in socket, as its --help gives it ("[/run/munge/munge.socket.2]" on
    Debian): sacctmgr ignores AuthInfo=socket=, so the cluster's munged must listen where every
    SLURM command looks."""
    usage = subprocess.run(["munged", "--help"], capture_output=True, text=True).stdout
    found = re.search(r"--socket=PATH.*\[(.+)\]", usage)
    if found is None:
        raise ServerError(f"munged --help names no default socket:\n{usage}")
    return Path(found.group(1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise ServerError("the SLURM cluster's daemons run as root (SlurmUser=root)")
        self.folder = Path(tempfile.mkdtemp(prefix="mnist_sweep_slurm_"))
        os.chmod(self.folder, 0o755)
        self.name = f"sweep{self.folder.name.rsplit('_', 1)[-1].lower()}"
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}
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
