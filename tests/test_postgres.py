"""Many machines' setting on one: workers sharing a PostgreSQL database, checkpoints on a
shared directory or in the database itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy.engine import make_url

from conftest import QUAD, run_popbt
from popbt.store import open_store
from popbt.store.sql import SCHEMA_LOCK


def complete_once(url, name, population, intervals):
    store = open_store(url)
    try:
        exp = store.experiment(name)
        rows = store.history(exp.id)
        keys = sorted((r.member, r.interval) for r in rows if r.state == "done")
        assert keys == [(m, k) for m in range(population) for k in range(intervals)]
        return exp, store.live_checkpoints(exp.id)
    finally:
        store.close()


def test_toy_with_three_workers_on_postgresql(pg_url, tmp_path):
    out = run_popbt(
        "run",
        "examples/toy_quadratic.py",
        "--workers",
        "3",
        "--population",
        "6",
        "--intervals",
        "8",
        "--storage",
        pg_url,
        "--dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    exp, live = complete_once(pg_url, "toy_quadratic", 6, 8)
    assert exp.status == "finished" and len(live) == 6
    assert "***" not in pg_url and "popbt_test_" in out.stdout


def test_checkpoints_in_the_database_need_nothing_but_the_url(pg_url, tmp_path):
    out = run_popbt("run", QUAD, "--workers", "2", "--checkpoints", "db", "--storage", pg_url, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    exp, live = complete_once(pg_url, "quad", 4, 6)
    assert exp.checkpoint_dir == "db"
    assert not (tmp_path / "checkpoints").exists()
    assert len(live) == 4 and all(c.path.startswith("db:quad/") for c in live)
    best = json.loads(run_popbt("best", "--json", "--storage", pg_url).stdout)
    assert best["weights"].startswith("db:quad/")
    store = open_store(pg_url)
    data = store.checkpoint_data(live[0])
    store.close()
    assert len(data) == live[0].size  # the bytes are really there, and only live ones are kept


def test_a_password_in_the_url_is_never_printed(pg_url, tmp_path):
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@")
    out = run_popbt("run", QUAD, "--workers", "0", "--storage", url, "--dir", str(tmp_path))
    status = run_popbt("status", "--storage", url)
    for proc in (out, status):
        assert proc.returncode == 0, proc.stderr
        assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert "postgres:***@" in out.stdout


def test_many_processes_open_a_current_schema_while_another_holds_the_schema_lock(pg_url):
    # a fleet starting at once must not queue on the lock that creating or upgrading the
    # schema takes: once the schema is current, opening a store only reads its version
    open_store(pg_url).close()
    url = make_url(pg_url)
    import psycopg

    opener = "import sys; from popbt.store import open_store; open_store(sys.argv[1]).close()"
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))  # the schema lock, as an upgrade holds it
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", opener, pg_url], stderr=subprocess.PIPE, text=True, env=os.environ.copy()
            )
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        holder.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
    assert [p.returncode for p in procs] == [0] * 4, errors
