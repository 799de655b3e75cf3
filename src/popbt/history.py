"""Reading an experiment back: the one way status, best, plots, export, replay and the live
view open a store, and the history they share as plain records.

A reader never creates anything. Pointed at a sqlite file that is not there (a typo in
``--dir`` or ``--storage``), it says so instead of leaving an empty database behind, so the
next command does not find "no experiments yet" where the user expected a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig
from .places import check_sqlite_path, locate, sqlite_file
from .store import Experiment, Exploit, NotFound, Row, SQLStore, open_store


class NoDatabase(NotFound):
    """A reader was pointed at a sqlite database file that does not exist."""


@dataclass(frozen=True)
class History:
    """Everything recorded about one experiment: its rows and its exploits."""

    experiment: Experiment
    rows: list[Row]
    exploits: list[Exploit]

    @property
    def config(self) -> ExperimentConfig:
        return self.experiment.config


def run_dir(storage: str | None = None, dir: str | os.PathLike | None = None) -> Path:
    """The run directory readers write their own outputs under (plots, replays); not created."""
    return locate(dir, storage).dir


@contextmanager
def open_reader(
    storage: str | None = None, dir: str | os.PathLike | None = None, *, experiment: str | None = None
) -> Iterator[SQLStore]:
    """An open store at ``--storage``/``--dir``, closed on exit. Raises ``NoDatabase`` for a
    sqlite file that does not exist, rather than creating one; ``experiment`` is the name the
    caller looks for, so that the error can say which one is missing."""
    url = locate(dir, storage).storage
    require_database(url, experiment)
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_experiment(
    experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None
) -> Iterator[tuple[SQLStore, Experiment]]:
    """``open_reader`` and the experiment called ``experiment`` (``latest``: the newest)."""
    with open_reader(storage, dir, experiment=experiment) as store:
        yield store, store.experiment(experiment)


def read(experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None) -> History:
    """One experiment's history, read in one go."""
    with open_experiment(experiment, storage, dir) as (store, exp):
        return history_of(store, exp)


def read_many(
    experiments: Sequence[str], storage: str | None = None, dir: str | os.PathLike | None = None
) -> list[History]:
    """Several experiments' histories from one store, in the order named."""
    with open_reader(storage, dir) as store:
        return [history_of(store, store.experiment(name)) for name in experiments]


def history_of(store: SQLStore, exp: Experiment) -> History:
    return History(exp, store.history(exp.id), store.exploits(exp.id))


def require_database(url: str, experiment: str | None = None) -> None:
    """Refuse a sqlite URL whose file is missing (or is no file), in one line."""
    path = sqlite_file(url)
    if path is None:
        return
    if path.exists():
        check_sqlite_path(url)  # a directory where the file should be
        return
    message = f"no popbt database at {path}{_why_missing(path)}"
    if experiment is not None and experiment != "latest":
        message = f"no experiment named {experiment!r}: {message}"
    raise NoDatabase(message)


def _why_missing(path: Path) -> str:
    parent = path.parent
    if not parent.exists():
        return f" (directory {parent} does not exist)"
    if not parent.is_dir():
        return f" ({parent} is not a directory)"
    return ""
