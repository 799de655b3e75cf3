"""A throwaway PostgreSQL server for a benchmark that needs more connections than the shared one
allows: initdb into a temporary directory (as the postgres user when we are root), listening
on a free loopback port only, stopped and deleted afterwards. Settings are the server's
defaults (fsync and synchronous_commit on) except ``max_connections``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common import Skip


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def why_not() -> str | None:
    """Why a throwaway server cannot be started here (None: it can)."""
    if binaries() is None:
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "as root, initdb must run as the postgres user, and runuser is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(max_connections: int) -> Iterator[str]:
    """Yield the admin URL of a fresh server allowing ``max_connections``; remove it after."""
    problem = why_not()
    if problem:
        raise Skip(problem)
    bin_dir = binaries()
    data = Path(tempfile.mkdtemp(prefix="popbt-bench-pg-"))
    as_pg = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_pg, *args], check=True, capture_output=True, text=True, timeout=120)

    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c max_connections={max_connections}"
    try:
        pg(str(bin_dir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o", options, "start")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-m", "fast", "stop")
    finally:
        shutil.rmtree(data, ignore_errors=True)
