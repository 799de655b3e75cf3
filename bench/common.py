"""Helpers shared by the benchmark scripts: statistics, markdown tables, throwaway databases.

The benchmarks run on shared, noisy machines, so every figure is a median over repetitions
and every comparison is measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SPECS = BENCH / "specs"
PG_ADMIN = (
    os.environ.get("POPBT_BENCH_POSTGRES")
    or os.environ.get("POPBT_TEST_POSTGRES")
    or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


class Skip(Exception):
    """A benchmark (or one leg of it) cannot run here; the message says why."""


# -- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), numpy's default method."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: Sequence[float], fmt: str = ".3g") -> str:
    """min–max of the repetitions, so a reader sees how noisy a median is."""
    return f"{min(values):{fmt}}–{max(values):{fmt}}"


# -- output -------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command(argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this output, relative to the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT)
    return " ".join([".venv/bin/python", script, *map(shlex.quote, argv[1:])])


def heading(title: str) -> str:
    return f"### {title}\n\nReproduce: `{command()}`\n"


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays the markdown that run_all collects."""
    print(message, file=sys.stderr, flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, for development and CI")
    return p


# -- storage ------------------------------------------------------------------------------


def _pg_connect(database: str | None = None, admin: str | None = None):
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin or PG_ADMIN)
    return psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=database or url.database or "postgres",
        autocommit=True,
        connect_timeout=3,
    )


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used here, or None when the server answers."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    try:
        _pg_connect().close()
    except Exception as e:
        return f"no PostgreSQL server at {masked(PG_ADMIN)}: {str(e).strip().splitlines()[0]}"
    return None


def postgres_version() -> str | None:
    if postgres_problem():
        return None
    with _pg_connect() as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


def masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def postgres_database(admin: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (as the tests do); on the shared server
    unless ``admin`` names another."""
    problem = postgres_problem() if admin is None else None
    if problem:
        raise Skip(problem)
    from sqlalchemy.engine import make_url

    admin = admin or PG_ADMIN
    name = f"popbt_bench_{uuid.uuid4().hex[:12]}"
    with _pg_connect(admin=admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name, drivername="postgresql+psycopg").render_as_string(hide_password=False)
    finally:
        with _pg_connect(admin=admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def sqlite_database(directory: str | None = None) -> Iterator[str]:
    """A sqlite file in a fresh temporary directory (on disk unless ``directory`` says otherwise)."""
    with tempfile.TemporaryDirectory(prefix="popbt-bench-", dir=directory) as tmp:
        yield f"sqlite:///{tmp}/popbt.db"


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A throwaway database of ``backend`` ("sqlite" or "postgresql"); Skip if unavailable."""
    if backend == "sqlite":
        with sqlite_database() as url:
            yield url
    elif backend == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        raise ValueError(backend)


BACKENDS = ("sqlite", "postgresql")
