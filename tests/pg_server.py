"""A real PostgreSQL server for tests and benches: Debian's binaries, a throwaway cluster.

`running_postgres()` starts one (initdb into a temporary folder, trust authentication,
loopback only, durability off: the data dies with the folder) and yields the URL of its
`postgres` database. The pytest fixtures share one server per session and give each test a
database of its own; other test modules import them::

    from tests.pg_server import postgres_server, postgres_url  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

__all__ = [
    "PostgresMissing",
    "create_database",
    "drop_database",
    "postgres_server",
    "postgres_url",
    "running_postgres",
]

BINARIES = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 30.0
# PostgreSQL refuses to run as root: the tests run as root here, the server as this user.
SYSTEM_USER = "postgres"
# Durability is worthless for a cluster deleted after the run, and costs most of the time.
SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def server_binaries() -> Path:
    """The `bin` folder of the newest PostgreSQL version installed."""
    versions = sorted(
        (path for path in BINARIES.glob("*/bin") if (path / "postgres").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else -1,
    )
    if not versions:
        raise PostgresMissing(
            f"no PostgreSQL server in {BINARIES}/<version>/bin: run `make system-test` to"
            " install the Debian packages the tests need"
        )
    return versions[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh PostgreSQL server on a free loopback port, stopped and deleted at exit;
    yields the URL of its `postgres` database (user `postgres`, no password)."""
    binaries = server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="imgjobs-pg-"))
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        shutil.chown(folder, SYSTEM_USER, SYSTEM_USER)
        as_user = {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []}
    data = folder / "data"
    log = folder / "server.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=folder,
            **as_user,
        )
        port = free_port()
        options = [arg for setting in SETTINGS for arg in ("-c", setting)]
        with log.open("wb") as output:
            server = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(folder),
                    *options,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=folder,
                **as_user,
            )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait_until_ready(url, server, log)
        yield url
    finally:
        if server is not None:
            subprocess.run(
                [str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-s"],
                check=False,
                capture_output=True,
                cwd=folder,
                **as_user,
            )
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()  # our own child: pg_ctl could not stop it
                server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited at start:\n{log.read_text(errors='replace')}")
        try:
            psycopg.connect(url, connect_timeout=1).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not accept connections within {START_TIMEOUT_S} s:\n"
                    + log.read_text(errors="replace")
                ) from None
            time.sleep(0.02)


def create_database(server_url: str) -> str:
    """A new empty database on the server of `server_url`; its URL."""
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rpartition("/")[0] + "/" + name


def drop_database(database_url: str) -> None:
    """Remove a database `create_database` made, even if connections to it remain."""
    base, _, name = database_url.rpartition("/")
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL server for the whole session: the URL of its `postgres` database."""
    try:
        with running_postgres() as url:
            yield url
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database of the session's server, for one test; dropped after it."""
    url = create_database(postgres_server)
    yield url
    drop_database(url)
