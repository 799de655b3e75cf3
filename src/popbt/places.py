"""Where an experiment lives: the run directory and the storage URL, from ``--dir``,
``--storage`` and the environment.

Writers (``popbt run``, ``popbt worker``) and readers (``popbt status``, ``plot``, ``export``,
...) resolve the same place, but only writers may create anything there: ``place`` makes the
run directory, ``locate`` only names it. Kept apart from both ``launch`` and ``history`` so
that neither has to import the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from .errors import ConfigError
from .store import StoreError, mask_url
from .store.engine import sqlite_url

DEFAULT_DIR = "popbt-runs"


@dataclass(frozen=True)
class Place:
    """Where an experiment lives: the run directory and the storage URL."""

    dir: Path
    storage: str


def locate(dir: str | os.PathLike | None = None, storage: str | None = None) -> Place:
    """Resolve ``--dir`` and ``--storage`` (flag, then env POPBT_STORAGE, then DIR/popbt.db)
    without creating anything: what a reader needs."""
    root = Path(dir or os.environ.get("POPBT_DIR") or DEFAULT_DIR).absolute()
    url = storage or os.environ.get("POPBT_STORAGE")
    return Place(root, url or sqlite_url(root / "popbt.db"))


def place(dir: str | os.PathLike | None = None, storage: str | None = None, dry_run: bool = False) -> Place:
    """Resolve the place as ``locate`` does, then make sure ``popbt run`` can use it: the run
    directory is created when the database goes in it, and probed (left as it was) when only
    checkpoints and logs will, or with ``dry_run`` (checks that leave nothing behind)."""
    where = locate(dir, storage)
    url = storage or os.environ.get("POPBT_STORAGE")
    if url is not None:
        check_sqlite_path(url)  # before anything is written
    _make_dir(where.dir, probe=dry_run or url is not None)
    return where


def _make_dir(root: Path, probe: bool = False) -> None:
    """Create the run directory, or say in one line why it cannot be. ``probe``: remove again
    what was created, so that a command refused later (e.g. by the database) wrote nothing."""
    made, p = [], root
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise ConfigError(f"run directory {root} is not writable")
    except OSError as e:
        raise ConfigError(f"cannot create run directory {root}: {e.strerror}") from None
    finally:
        if probe:
            for path in made:  # deepest first
                try:
                    path.rmdir()
                except OSError:
                    break


def sqlite_file(url: str) -> Path | None:
    """The file a sqlite URL names; None for another backend, an in-memory database, a
    ``file:`` URI or a URL that does not parse (the store says what is malformed)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute()


def check_sqlite_path(url: str) -> None:
    """A sqlite file that cannot be opened is bad input: say so at once, in one line (the store
    would first retry it as if it were a server that went away)."""
    path = sqlite_file(url)
    if path is None:
        return
    if path.exists():
        if not path.is_file():
            raise StoreError(f"storage {mask_url(url)}: {path} is not a database file")
        return
    if not path.parent.exists():
        raise StoreError(f"storage {mask_url(url)}: directory {path.parent} does not exist")
    if not path.parent.is_dir():
        raise StoreError(f"storage {mask_url(url)}: {path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK):
        raise StoreError(f"storage {mask_url(url)}: directory {path.parent} is not writable")
