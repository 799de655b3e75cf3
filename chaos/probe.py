"""The campaign's own view of the database and of the run's processes, kept apart from popbt's
store so that watching never takes a lock (a sqlite reader in WAL mode waits for nobody) and
survives a server restart (every read is retried on a fresh connection)."""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from popbt.store import schema as s

HOST = socket.gethostname()


class DB:
    """Plain reads of one experiment's rows."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url, poolclass=NullPool)

    def _read(self, query, attempts: int = 50):
        for i in range(attempts):
            try:
                with self.engine.connect() as conn:
                    return conn.execute(query).all()
            except (OperationalError, SQLAlchemyError):
                if i == attempts - 1:
                    raise
                time.sleep(0.1)  # a restarting server: try a fresh connection

    def experiment(self, name: str):
        rows = self._read(select(s.experiments).where(s.experiments.c.name == name))
        return rows[0] if rows else None

    def tasks(self, exp_id: int):
        return self._read(select(s.tasks).where(s.tasks.c.experiment_id == exp_id))

    def done(self, exp_id: int) -> int:
        t = s.tasks
        return self._read(select(func.count()).where(t.c.experiment_id == exp_id, t.c.state == "done"))[0][0]

    def events(self, exp_id: int):
        e = s.events
        return self._read(select(e).where(e.c.experiment_id == exp_id).order_by(e.c.id))

    def checkpoints(self, exp_id: int):
        c = s.checkpoints
        return self._read(
            select(c.c.id, c.c.member, c.c.interval, c.c.path, c.c.sha256, c.c.state).where(c.c.experiment_id == exp_id)
        )

    def close(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class Proc:
    pid: int
    role: str  # "run" (the launcher) or "worker"
    state: str  # /proc state letter: R, S, T (stopped), Z, ...

    @property
    def name(self) -> str:
        return f"{HOST}:{self.pid}"


def processes(run_dir: Path) -> list[Proc]:
    """popbt processes of this run (launchers and workers, orphans too), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args]
        if "popbt" not in args or str(run_dir) not in args:
            continue
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            continue
        role = "worker" if "worker" in args else "run" if "run" in args else "other"
        found.append(Proc(int(entry), role, state))
    return found


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
