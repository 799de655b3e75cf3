"""Connections and transactions, for sqlite and PostgreSQL: how popbt talks to a database.

sqlite: an autocommit DBAPI connection with an explicit ``BEGIN IMMEDIATE`` per write
transaction (so a claim's read and write are one serialised step), WAL and a busy timeout;
the file is watched, so that one deleted or replaced while in use stops the run loudly
instead of writing the history into a file nobody can open any more.

PostgreSQL: every transaction bounds how long it may wait for a lock and how long the server
keeps it open while the client says nothing (``lock_timeout``,
``idle_in_transaction_session_timeout``). On a direct connection they are startup options of
the session, which costs no round trip; behind a pooler in transaction mode, where a session
is not the client's (PgBouncer refuses or ignores startup options, which the first connection
notices), each transaction sets them itself with ``set_config(..., true)``, so nothing relies
on session state; idle workers then poll rather than LISTEN (a LISTEN would stay behind on a
pooled server connection). A host that drops off the network in the middle of a report therefore holds
the experiment's lock for seconds, not for the two hours of the server's default TCP keepalive.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import String, bindparam, create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DataError, OperationalError, SQLAlchemyError

from ..errors import StoreError
from .base import Rejected

T = TypeVar("T")

SECRET_KEYS = ("password", "passwd", "pwd", "sslpassword")
MIN_TRIES = 3  # tries of a transaction before giving up, however long its patience has run

# A dropped network must surface as an error within seconds, not hang on TCP retransmits:
# the worker then retries, and gives up (stops taking work) once its lease has run out.
PG_CONNECT = {
    # no server-side prepared statements: they are session state, which a pooler in
    # transaction mode (PgBouncer before 1.21) cannot carry from one transaction to the next
    "prepare_threshold": None,
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 8000,
}
# The server's side of the same: it notices a client that vanished while idle between
# transactions (its connection slot is freed within ~20 s instead of ~2 h). Best effort: a
# pooler may hand this setting to another connection of the pool, which is harmless.
PG_SESSION = "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"


def mask_url(url: str) -> str:
    """The URL with every password (``user:pw@`` or ``?password=``) replaced by ***."""
    try:
        parsed = make_url(url)
    except Exception:
        return _mask_text(url)
    query = {k: ("***" if k.lower() in SECRET_KEYS else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def _mask_text(text: str) -> str:
    """Masking for a URL that does not parse: anything between ``:`` and ``@`` after the
    scheme, and any ``password=...`` parameter."""
    text = re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", str(text))
    return re.sub(rf"(?i)\b({'|'.join(SECRET_KEYS)})=[^&\s]*", r"\1=***", text)


def secrets_of(url: str | None) -> list[str]:
    """The passwords a URL carries, for redacting them from any text (logs, errors)."""
    if not url:
        return []
    try:
        parsed = make_url(url)
    except Exception:
        return []
    found = [parsed.password] if parsed.password else []
    found += [v for k, v in parsed.query.items() if k.lower() in SECRET_KEYS and isinstance(v, str) and v]
    return [str(s) for s in found if s]


def sqlite_url(path: str | os.PathLike) -> str:
    """The URL of a sqlite file, with '?', '%' and '#' in the path escaped."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


class Database:
    """One engine and the way every transaction runs on it (``run``)."""

    def __init__(self, url: str, patience: float = 30.0) -> None:
        self.url = url
        self._patience = patience
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(f"storage URL {mask_url(url)!r} is malformed (expected e.g. sqlite:///popbt.db)") from None
        if parsed.drivername == "postgresql":  # psycopg 3, not SQLAlchemy's default psycopg2
            parsed = parsed.set(drivername="postgresql+psycopg")
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"storage {mask_url(url)}: only sqlite and postgresql are supported")
        self.dialect = backend
        self.file: Path | None = None
        self._identity: tuple[int, int] | None = None
        self._listener = None  # PostgreSQL: the connection idle workers LISTEN on
        self._channels: set[str] = set()
        if backend == "sqlite":
            self.engine = self._sqlite_engine(parsed)
            database = parsed.database
            if database and database != ":memory:" and not database.startswith("file:"):
                self.file = Path(database).absolute()
        else:
            try:
                self.engine = create_engine(parsed, pool_size=2, connect_args=PG_CONNECT)
            except Exception as e:
                raise StoreError(f"storage {mask_url(url)}: {e}") from None
            self.session_timeouts = True  # until a pooler says otherwise
            event.listen(self.engine, "do_connect", self._pg_options)
            event.listen(self.engine, "connect", self._pg_session)
            event.listen(self.engine, "begin", self._pg_begin)

    # -- engines

    @staticmethod
    def _sqlite_engine(url) -> Engine:
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # a writer takes sqlite's write lock at once, so its reads and writes are one step;
            # a reader only pins a snapshot (WAL) and never blocks anyone
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("popbt_read") else "BEGIN IMMEDIATE")

        return engine

    def _pg_options(self, _dialect, _record, _args, params: dict) -> None:
        """A new connection asks for the timeouts as startup options (see the module)."""
        if self.session_timeouts:
            ms = int(self.transaction_timeout() * 1000)
            params["options"] = f"-c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms}"
        else:
            params.pop("options", None)

    def _pg_session(self, dbapi_conn, _record) -> None:
        """Server keepalives (best effort: a pooler may hand them to another client of its
        pool, which is harmless); and whether the startup options arrived (a pooler that
        ignores them does not pass them on: then every transaction sets its timeouts)."""
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute(PG_SESSION)
                if self.session_timeouts:
                    cur.execute("SELECT current_setting('lock_timeout')")
                    wanted = f"{int(self.transaction_timeout() * 1000)}ms"
                    self.session_timeouts = _same_duration(cur.fetchone()[0], wanted)
            dbapi_conn.commit()
        except Exception:
            dbapi_conn.rollback()

    def _pg_begin(self, conn: Connection) -> None:
        """Bound this transaction's lock waits and idle time on the server, when the session
        does not already (see the module)."""
        if self.session_timeouts:
            return
        ms = str(int(self.transaction_timeout() * 1000))
        conn.exec_driver_sql(
            "SELECT set_config('lock_timeout', %(ms)s, true), "
            "set_config('idle_in_transaction_session_timeout', %(ms)s, true)",
            {"ms": ms},
        )

    @property
    def patience(self) -> float:
        """Seconds a transaction is retried while the database is unreachable."""
        return self._patience

    @patience.setter
    def patience(self, seconds: float) -> None:
        changed = seconds != self._patience
        self._patience = seconds
        if changed and getattr(self, "session_timeouts", False):
            self.engine.dispose()  # the sessions' timeouts follow the patience: new connections

    def transaction_timeout(self) -> float:
        """Seconds a transaction may wait for a lock, or stay open with its client silent: half
        the patience (a worker's lease), within [2, 30], so a lost host costs under a lease."""
        return min(30.0, max(2.0, self.patience / 2))

    # -- transactions

    def run(self, fn: Callable[[Connection], T], read: bool = False) -> T:
        """Run ``fn`` in one transaction; retry a lost connection or a locked database with
        bounded backoff for up to ``patience`` seconds, then give up with StoreError.
        ``read``: ``fn`` only reads, so on sqlite it takes no write lock.

        A retried transaction is safe: each one is a compare-and-set, so one that committed
        before its connection dropped is refused (LeaseLost) rather than applied twice.
        """
        deadline = time.monotonic() + self.patience
        delay, tries = 0.1, 0
        while True:
            tries += 1
            try:
                with self.engine.connect() as conn:
                    if read:
                        conn.execution_options(popbt_read=True)
                    if self._file_changed():
                        raise self._file_gone(conn)
                    with conn.begin():
                        return fn(conn)
            except DataError as e:
                raise Rejected(f"the database refused the data: {first_line(e)}") from None
            except OperationalError as e:
                if self.dialect == "postgresql" and self.session_timeouts and "startup parameter" in str(e):
                    self.session_timeouts = False  # a pooler that refuses them: set per transaction
                    self.engine.dispose()
                    continue
                # a few tries at least: a process frozen (SIGSTOP, a stalled VM) past its
                # patience wakes with the deadline gone and the server long back up
                if time.monotonic() + delay > deadline and tries >= MIN_TRIES:
                    raise StoreError(f"storage {mask_url(self.url)}: {first_line(e)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _file_changed(self) -> bool:
        """Whether the sqlite file is gone, or another file, since this store first used it."""
        if self.file is None:
            return False
        try:
            st = os.stat(self.file)
            identity = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            identity = None
        if self._identity is None:
            self._identity = identity
            return False
        return identity != self._identity

    def _file_gone(self, conn: Connection) -> StoreError:
        """The sqlite file was deleted or replaced while in use: nobody may write on into a
        file nobody can open any more. The first process to notice saves what its connection
        still reads (through the descriptor it holds) next to where the file was."""
        what = "deleted" if not self.file.exists() else "replaced by another file"
        copy = self.salvaged() or self._salvage(conn)
        saved = f"; the history up to then is saved in {copy}" if copy else ""
        return StoreError(f"database file {self.file} was {what} while in use: popbt stops here{saved}")

    def salvaged(self) -> Path | None:
        """The copy made when the database file was found deleted, if any."""
        if self.file is None:
            return None
        target = self.file.with_name(self.file.name + ".salvaged")
        return target if target.exists() else None

    def _salvage(self, conn: Connection) -> Path | None:
        """Copy every table and index into a new file, holding the write lock, so that no
        commit lands after the copy (sqlite's backup API cannot run under that lock)."""
        target = self.file.with_name(self.file.name + ".salvaged")
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return target
        except OSError:
            return None
        raw = conn.connection.driver_connection
        try:
            raw.execute("ATTACH DATABASE ? AS salvage", (str(target),))
            raw.execute("BEGIN IMMEDIATE")
            rows = raw.execute(
                "SELECT type, name, sql FROM main.sqlite_master WHERE sql IS NOT NULL ORDER BY type = 'index'"
            ).fetchall()
            for kind, name, sql in rows:
                if kind == "table":
                    raw.execute(re.sub(r"(?i)^CREATE TABLE\s+", "CREATE TABLE salvage.", sql, count=1))
                    raw.execute(f'INSERT INTO salvage."{name}" SELECT * FROM main."{name}"')
                elif kind == "index":
                    raw.execute(re.sub(r"(?i)^CREATE (UNIQUE )?INDEX\s+", r"CREATE \1INDEX salvage.", sql, count=1))
            raw.execute("COMMIT")
            raw.execute("DETACH DATABASE salvage")
        except sqlite3.Error:
            return None
        return target

    # -- waking idle workers

    def notify(self, conn: Connection, channel: str) -> None:
        """Inside a transaction that made work claimable: wake the workers waiting on
        ``channel`` when it commits (PostgreSQL's NOTIFY; sqlite's waiters watch the file)."""
        if self.dialect == "postgresql":
            conn.execute(NOTIFY, {"channel": channel})

    def wait(self, channel: str, timeout: float, stop: threading.Event) -> None:
        """Return when ``channel`` is notified, the database changed, ``stop`` is set, or after
        ``timeout`` seconds: whichever comes first. Spurious wake-ups are allowed. Behind a
        transaction pooler (see ``_listen``) it is a plain wait of ``timeout``."""
        if self.dialect == "postgresql" and self.session_timeouts:
            self._listen(channel, timeout, stop)
        elif self.file is not None:
            self._watch_file(timeout, stop)
        else:
            stop.wait(timeout)

    def _listen(self, channel: str, timeout: float, stop: threading.Event) -> None:
        """LISTEN on a connection of its own: only on a session of our own (the startup
        options arrived). Behind a pooler that drops them, a LISTEN would stay on whichever
        server connection it ran on, and NOTIFYs would reach the pool's next client of it, not
        us; so there the caller polls (``wait``'s timeout), as on sqlite."""
        try:
            if self._listener is None or self._listener.closed:
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                self._listener = psycopg_connect(*args, **{**kwargs, "autocommit": True})
                self._channels = set()
            if channel not in self._channels:
                self._listener.execute(f'LISTEN "{channel}"')
                self._channels.add(channel)
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                break
        except Exception:  # the listener is an optimisation: a broken one only means polling
            self._close_listener()
            stop.wait(timeout)

    def _watch_file(self, timeout: float, stop: threading.Event) -> None:
        """sqlite: every commit writes the WAL file; a change of its size or time is a commit."""
        wal = self.file.with_name(self.file.name + "-wal")
        deadline = time.monotonic() + timeout
        seen = _stamp(wal)
        while not stop.wait(WATCH_EVERY) and time.monotonic() < deadline:
            if _stamp(wal) != seen:
                return

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                pass
        self._listener = None

    def dispose(self) -> None:
        self._close_listener()
        self.engine.dispose()


WATCH_EVERY = 0.01  # seconds between looks at a sqlite WAL file while waiting for work
NOTIFY = select(func.pg_notify(bindparam("channel", type_=String), ""))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def psycopg_connect(*args, **kwargs):
    import psycopg

    return psycopg.connect(*args, **kwargs)


def _same_duration(shown: str, wanted: str) -> bool:
    """PostgreSQL shows 5000ms as '5s': compare milliseconds."""
    units = {"ms": 1, "s": 1000, "min": 60000, "h": 3600000}

    def ms(text: str) -> int | None:
        match = re.fullmatch(r"(\d+)\s*(ms|s|min|h)?", text.strip())
        return int(match.group(1)) * units[match.group(2) or "ms"] if match else None

    return ms(shown) is not None and ms(shown) == ms(wanted)


def first_line(e: SQLAlchemyError) -> str:
    return str(getattr(e, "orig", e) or e).strip().splitlines()[0]
