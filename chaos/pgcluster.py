"""A throwaway PostgreSQL cluster the campaign may restart (never the shared server on 5432).

initdb runs as the postgres system user (``runuser -u postgres --``); the cluster listens on
127.0.0.1:PORT and on a unix socket in its own temporary directory, with trust auth.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

AS_PG = ["runuser", "-u", "postgres", "--"]


def why_not() -> str | None:
    """Why a throwaway cluster cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to run initdb as the postgres user"
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "needs PostgreSQL's server binaries (initdb, pg_ctl)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "needs the postgres system user"
    return None


def free_port(start: int) -> int:
    """The first port from ``start`` nobody listens on at 127.0.0.1 (another cluster may hold
    ``start``: then the campaign would talk to it over TCP while creating databases in its own)."""
    for port in range(start, start + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {start}-{start + 99}")


class Cluster:
    def __init__(self, port: int = 54331, also_listen: str | None = None) -> None:
        """``also_listen``: one more address to listen on (trusting its /24: the netns link)."""
        self.port = port
        self.also_listen = also_listen
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.data = Path(tempfile.mkdtemp(prefix="popbt-chaos-pg-"))
        shutil.chown(self.data, "postgres")
        self.restarts = 0

    def _pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*AS_PG, *args], capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> Cluster:
        self._pg(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        if self.also_listen:
            net = self.also_listen.rsplit(".", 1)[0] + ".0/24"
            with open(self.data / "pg_hba.conf", "a") as f:
                f.write(f"host all all {net} trust\n")
        self._pg(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.data / "log"),
            "-o",
            self._options(),
            "start",
        )
        return self

    def _options(self) -> str:
        listen = "127.0.0.1" + (f",{self.also_listen}" if self.also_listen else "")
        # fsync off: a throwaway cluster on a 2-core box; crash safety of the server is not under test
        return (
            f"-c listen_addresses={listen} -p {self.port} -k {self.data} -c fsync=off "
            f"-c max_connections=200 -c shared_buffers=32MB"
        )

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back. Seconds taken."""
        began = time.monotonic()
        self._pg(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-m",
            "fast",
            "-l",
            str(self.data / "log"),
            "-o",
            self._options(),
            "restart",
        )
        self.restarts += 1
        return time.monotonic() - began

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._pg(str(self.bin / "createdb"), "-h", str(self.data), "-p", str(self.port), name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        subprocess.run(
            [
                *AS_PG,
                str(self.bin / "dropdb"),
                "-h",
                str(self.data),
                "-p",
                str(self.port),
                "--force",
                "--if-exists",
                name,
            ],
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        subprocess.run(
            [*AS_PG, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
