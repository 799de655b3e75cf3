"""popbt behind a real PgBouncer in transaction pooling: each transaction may run on another
server connection, so nothing may rely on session state (prepared statements, SET, LISTEN).

The bouncer is Debian's /usr/sbin/pgbouncer, started per module on a free loopback port in
front of the test server; each test gets a fresh database through it, as the PostgreSQL
fixtures do. Under CI=true a missing pgbouncer fails these tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from conftest import PG_ADMIN, PG_SKIP, run_popbt, unavailable
from popbt.experiment import ExperimentConfig
from popbt.space import Uniform
from popbt.store import DONE, Result, open_store

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
)
START_WITHIN = 15.0  # seconds a pgbouncer gets to accept connections


@dataclass
class Bouncer:
    port: int
    logfile: Path

    def url(self, pg_url: str) -> str:
        """The same database as ``pg_url``, reached through this bouncer."""
        return make_url(pg_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def log(self) -> str:
        try:
            return self.logfile.read_text()[-4000:]
        except OSError:
            return "(no log)"


def free_port() -> int:
    """A loopback port nobody listens on (bind port 0 and let the kernel choose)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dir() -> tuple[Path, list[str]]:
    """Where pgbouncer writes its socket, pid and log, and the arguments that make it run as
    someone else when we are root (it refuses root; pytest's tmp_path is private to root)."""
    if os.geteuid() != 0:
        return Path(tempfile.mkdtemp(prefix="popbt-pgbouncer-")), []
    user = pwd.getpwnam("postgres")
    where = Path(tempfile.mkdtemp(prefix="popbt-pgbouncer-"))
    os.chown(where, user.pw_uid, user.pw_gid)
    return where, ["-u", "postgres"]


def write_config(conf_dir: Path, runtime: Path, port: int, extra: str) -> Path:
    admin = make_url(PG_ADMIN)
    user = admin.username or "postgres"
    (conf_dir / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = conf_dir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={admin.host or '127.0.0.1'} port={admin.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {runtime}\n"
        "auth_type = trust\n"
        f"auth_file = {conf_dir / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 10\n"
        f"pidfile = {runtime / 'pgbouncer.pid'}\n"
        f"logfile = {runtime / 'pgbouncer.log'}\n"
        f"{extra}"
    )
    for path in (conf_dir, conf_dir / "userlist.txt", ini):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ini


def wait_until_accepting(proc: subprocess.Popen, bouncer: Bouncer) -> None:
    """Connect until the bouncer answers a query (bounded), failing with its log if it died."""
    import psycopg

    deadline = time.monotonic() + START_WITHIN
    while True:
        if proc.poll() is not None:
            pytest.fail(f"pgbouncer exited with status {proc.returncode}:\n{bouncer.log()}")
        try:
            user = make_url(PG_ADMIN).username or "postgres"
            with psycopg.connect(
                host="127.0.0.1", port=bouncer.port, user=user, dbname="postgres", connect_timeout=2
            ) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not accept connections within {START_WITHIN:.0f} s:\n{bouncer.log()}")
            time.sleep(0.1)


def start_bouncer(conf_dir: Path, extra: str = ""):
    """Start pgbouncer (transaction pooling) on a free port; yield it; stop it."""
    if PG_SKIP:
        unavailable(PG_SKIP)
    if PGBOUNCER is None:
        unavailable("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    runtime, as_user = run_dir()
    port = free_port()
    ini = write_config(conf_dir, runtime, port, extra)
    bouncer = Bouncer(port, runtime / "pgbouncer.log")
    proc = subprocess.Popen([PGBOUNCER, *as_user, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_accepting(proc, bouncer)
        yield bouncer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncer(tmp_path_factory):
    """PgBouncer as Debian ships it: it refuses the startup option ``options``."""
    yield from start_bouncer(tmp_path_factory.mktemp("pgbouncer"))


@pytest.fixture(scope="module")
def lenient_bouncer(tmp_path_factory):
    """PgBouncer told to ignore ``options``: the connection succeeds, the settings never arrive."""
    yield from start_bouncer(tmp_path_factory.mktemp("pgbouncer-lenient"), "ignore_startup_parameters = options\n")


@pytest.fixture(scope="module")
def one_server_bouncer(tmp_path_factory):
    """Every client shares one server connection: whatever session state one client leaves
    behind, the next one gets."""
    yield from start_bouncer(tmp_path_factory.mktemp("pgbouncer-one"), "default_pool_size = 1\n")


@pytest.fixture
def pooled_url(bouncer, pg_url):
    """A fresh database, reached through the bouncer."""
    return bouncer.url(pg_url)


SPACE = {"lr": Uniform(0.0, 1.0)}


def config(**kw) -> ExperimentConfig:
    values = dict(population=4, intervals=3, seed=1, max_attempts=2, retry_delay=0.0)
    values.update(kw)
    return ExperimentConfig(name="exp", spec="quad", space=SPACE, **values)


def result(score: float, path: str) -> Result:
    return Result(float(score), {}, path, "0" * 64, 1)


def done_once(url: str, name: str, population: int, intervals: int) -> None:
    store = open_store(url)
    try:
        exp = store.experiment(name)
        keys = sorted((r.member, r.interval) for r in store.history(exp.id) if r.state == DONE)
        assert keys == [(m, k) for m in range(population) for k in range(intervals)]
        assert exp.status == "finished"
    finally:
        store.close()


def show_through(bouncer: Bouncer, pg_url: str, setting: str) -> str:
    """A setting as a plain client of the bouncer sees it (no popbt in between)."""
    import psycopg

    url = make_url(pg_url)
    with psycopg.connect(host="127.0.0.1", port=bouncer.port, user=url.username, dbname=url.database) as conn:
        return conn.execute(f"SHOW {setting}").fetchone()[0]


def test_the_store_creates_claims_reports_and_exploits_through_transaction_pooling(pooled_url):
    store = open_store(pooled_url)
    try:
        exp = store.create_experiment(config(), "/tmp")
        first = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
        assert sorted(t.member for t in first) == [0, 1, 2, 3]
        assert store.claim(exp.id, "w", "cpu") is None
        for t in first:
            store.report(t, result(t.member, f"/ckpt/{t.member}-0"))
        nxt = store.claim(exp.id, "w", "cpu")  # member 0 scored worst: it copies member 3
        assert (nxt.member, nxt.interval, nxt.start.member) == (0, 1, 3)
        [x] = store.exploits(exp.id)
        assert (x.member, x.donor, x.reason) == (0, 3, "exploit")
        store.report(nxt, result(5.0, "/ckpt/0-1"))
        while (task := store.claim(exp.id, "w", "cpu")) is not None:
            store.report(task, result(task.member, f"/ckpt/{task.member}-{task.interval}"))
        assert store.progress(exp.id).finished
    finally:
        store.close()
    done_once(pooled_url, "exp", 4, 3)


@pytest.mark.parametrize("which", ["refuses", "ignores"])
def test_timeouts_are_set_per_transaction_when_the_pooler_drops_startup_options(which, request, pg_url):
    bouncer = request.getfixturevalue("bouncer" if which == "refuses" else "lenient_bouncer")
    store = open_store(bouncer.url(pg_url))
    try:
        assert store.db.session_timeouts is False
        shown = store.db.run(
            lambda c: (
                c.exec_driver_sql("SHOW lock_timeout").scalar(),
                c.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar(),
            )
        )
        assert shown == ("15s", "15s")  # half the default 30 s patience
        # transaction-scoped: nothing is left on the server connections for the pool's next client
        for _ in range(3):
            assert show_through(bouncer, pg_url, "lock_timeout") == "0"
    finally:
        store.close()


def test_a_direct_connection_keeps_its_timeouts_as_startup_options(pg_url):
    store = open_store(pg_url)
    try:
        assert store.db.session_timeouts is True
        assert store.db.run(lambda c: c.exec_driver_sql("SHOW lock_timeout").scalar()) == "15s"
    finally:
        store.close()


def test_popbt_run_with_three_workers_through_pgbouncer_finishes_every_result_once(pooled_url, tmp_path):
    out = run_popbt(
        "run",
        "examples/toy_quadratic.py",
        "--workers",
        "3",
        "--population",
        "6",
        "--intervals",
        "6",
        "--storage",
        pooled_url,
        "--dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    done_once(pooled_url, "toy_quadratic", 6, 6)


def test_sync_mode_finishes_through_pgbouncer_with_idle_workers_polling(pooled_url, tmp_path):
    # sync: every worker that finishes its share of a generation idles until the slowest
    # member reports; no NOTIFY reaches it through transaction pooling, so only polling wakes it
    out = run_popbt(
        "run",
        "examples/toy_quadratic.py",
        "--sync",
        "--workers",
        "3",
        "--population",
        "4",
        "--intervals",
        "5",
        "--storage",
        pooled_url,
        "--dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    done_once(pooled_url, "toy_quadratic", 4, 5)


def test_idle_workers_poll_and_leave_no_listen_behind_in_the_pool(one_server_bouncer, pg_url):
    # A LISTEN sent through a transaction pooler stays on the server connection it ran on;
    # NOTIFYs then reach whichever client gets that connection next (piling up unread in its
    # driver), never the waiting worker. popbt must not LISTEN there, only poll.
    url = one_server_bouncer.url(pg_url)
    waiter, reporter = open_store(url), open_store(url)
    heard = []
    reporter.engine.dispose()
    event.listen(reporter.engine, "connect", lambda dbapi_conn, _record: dbapi_conn.add_notify_handler(heard.append))
    try:
        exp = reporter.create_experiment(config(), "/tmp")
        waiter.wait_for_work(exp.id, 0.2)  # nothing claimable: returns after its timeout
        for t in [reporter.claim(exp.id, "w", "cpu") for _ in range(4)]:
            reporter.report(t, result(t.member, f"/ckpt/{t.member}-0"))  # each wakes "waiters"
        waiter.wait_for_work(exp.id, 0.2)
        assert waiter.claim(exp.id, "w", "cpu") is not None  # polling finds the work
        assert heard == []
    finally:
        waiter.close()
        reporter.close()
