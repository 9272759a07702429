"""A throwaway PostgreSQL server from the machine's own binaries (Debian's `postgresql`), for the
Postgres instance test and `benchmarks/instance_postgres.py`: initdb into a temporary folder, start on a
free local port, create one database, and stop and remove it all afterwards."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
#: The environment variable the instance's dagster.yaml reads the connection URL from.
PG_URL_ENV = "DAGSTER_PG_URL"
DATABASE = "medvec_dagster"
_STORAGE_BLOCK = f"""
# Runs, event logs (materialisations, dynamic partitions) and schedules/sensors in PostgreSQL.
storage:
  postgres:
    postgres_url:
      env: {PG_URL_ENV}
"""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why and what to install."""


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: pg_config's answer, else Debian's newest versioned folder."""
    candidates = []
    if shutil.which("pg_config"):
        answer = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(answer.stdout.strip())
    # Debian puts initdb outside PATH, and pg_config (from libpq-dev) may point at /usr/bin without it.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    return next((Path(c) for c in candidates if c and (Path(c) / "initdb").exists()), None)


def _as_server_user(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: there, run them as the `postgres` system user."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]


def _server_user_exists() -> bool:
    import pwd

    try:
        pwd.getpwnam("postgres")
        return True
    except KeyError:
        return False


class PostgresServer:
    """`with PostgresServer() as server:` a running server; `server.url` reaches its empty database."""

    def __init__(self, database: str = DATABASE):
        self.database, self.port, self.root = database, None, None
        self.bindir = postgres_bindir()

    @property
    def dsn(self) -> str:
        """libpq's URL (psycopg2.connect, psql). Trust authentication: the server listens on 127.0.0.1
        only and lives for one test or benchmark."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def url(self) -> str:
        """The URL for dagster.yaml's postgres_url. The driver is named: SQLAlchemy 2.1 reads a bare
        postgresql:// as psycopg 3, which dagster-postgres does not install (it brings psycopg2)."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg2://", 1)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()  # a server that started but failed later must not outlive the caller
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.bindir is None:
            raise PostgresUnavailable("no PostgreSQL server binaries (initdb) found: install Debian's `postgresql`")
        if os.geteuid() == 0 and not _server_user_exists():
            raise PostgresUnavailable("running as root and there is no `postgres` user to run initdb as")
        # Under /tmp itself, not pytest's tmp_path: its 0700 parents would keep the postgres user out.
        self.root = Path(tempfile.mkdtemp(prefix="medvec-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.port = free_port()
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", options, "start")
        self._create_database()

    def _run(self, tool: str, *args: str) -> None:
        argv = _as_server_user([str(self.bindir / tool), *args])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def _create_database(self) -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            connection.close()

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                # fast: ends the clients' sessions (a test's pooled connections) instead of waiting for them.
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def write_postgres_instance(dagster_home: Path) -> Path:
    """$DAGSTER_HOME/dagster.yaml as a cluster would have it: deploy/dagster.yaml plus a `storage:
    postgres:` block reading the URL from $DAGSTER_PG_URL (set it before loading the instance)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text((ROOT / "deploy" / "dagster.yaml").read_text() + _STORAGE_BLOCK)
    return path
