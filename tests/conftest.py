"""Fixtures shared by the suite: a storage URL on each backend, and helpers to run popbt.

The PostgreSQL leg uses a throwaway database on the server named by POPBT_TEST_POSTGRES
(default: the local server on 127.0.0.1:5432); without a server those tests are skipped,
with the reason shown, except under CI (CI=true), where a test that cannot run fails.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from popbt.store import open_store, schema

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "specs"
QUAD = str(SPECS / "quad.py")
PG_ADMIN = os.environ.get("POPBT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_admin():
    import psycopg

    url = make_url(PG_ADMIN)
    return psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
        autocommit=True,
        connect_timeout=3,
    )


def _pg_available() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    try:
        _pg_admin().close()
    except Exception as e:
        where = make_url(PG_ADMIN).render_as_string(hide_password=True)
        return f"no PostgreSQL server at {where}: {str(e).splitlines()[0]}"
    return None


PG_SKIP = _pg_available()


def unavailable(reason: str) -> None:
    """A product feature cannot be tested here: skip with the reason, or fail under CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str):
    """Import an optional package a test needs (see ``unavailable``)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed")


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if PG_SKIP:
        unavailable(PG_SKIP)
    name = f"popbt_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(PG_ADMIN).set(database=name, drivername="postgresql+psycopg").render_as_string(hide_password=False)
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """The storage URL of each backend: the conformance suite runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'popbt.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'popbt.db'}"


def popbt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "popbt", *args]


def run_popbt(*args: str, env: dict | None = None, timeout: float = 240, cwd=None) -> subprocess.CompletedProcess:
    """Run the popbt command line as a user would, capturing its output."""
    return subprocess.run(
        popbt_cmd(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )


def expire_lease(url: str, experiment_id: int, member: int, interval: int) -> None:
    """Make a lease look expired by the database clock, as if its worker died long ago."""
    store = open_store(url)
    with store.engine.begin() as conn:
        conn.execute(
            update(schema.tasks)
            .where(
                schema.tasks.c.experiment_id == experiment_id,
                schema.tasks.c.member == member,
                schema.tasks.c.interval == interval,
            )
            .values(lease_expires=0.0)
        )
    store.close()
