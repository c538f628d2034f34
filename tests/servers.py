"""Real servers for the scale-out tests: a throwaway PostgreSQL cluster and `mlflow server`.

Each listens on a free 127.0.0.1 port and keeps its files in a temporary folder; `stop()`
ends it. A server that cannot start raises ServerError with its log: the tests fail, never skip.
"""

from __future__ import annotations

import os
import pwd
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
PG_BIN = Path(shutil.which("pg_ctl") or "/usr/lib/postgresql/15/bin/pg_ctl").resolve().parent


class ServerError(RuntimeError):
    """A server did not start; the message carries the end of its log."""


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
