"""popbt: Population Based Training of PyTorch models, coordinated through a SQL table.

The core imports neither torch nor matplotlib; ``popbt.torch`` and the plots do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .analysis import Best, Step
from .config import ExperimentConfig
from .errors import ConfigError, PopbtError, RunFailed, SpecError, WorkerFault
from .export import export
from .launch import RunSummary, run, work
from .replay import Replay, replay
from .report import best, experiments, status
from .space import Choice, IntUniform, LogUniform, SpaceError, Uniform
from .spec import Spec, load_spec
from .store import NotFound, StoreError, open_store
from .worker import Trial, current

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from pathlib import Path

worker = work


def plot(
    experiment: str = "latest",
    out: str | os.PathLike | None = None,
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    compare: Sequence[str] | None = None,
) -> list[Path]:
    """Write the figures of ``popbt plot`` and return their paths (see ``popbt.plots.plot``).

    Imports matplotlib only when called, so the rest of popbt runs without it.
    """
    from .plots import plot as draw

    return draw(experiment, out=out, storage=storage, dir=dir, compare=compare)


__version__ = "0.1.0"

__all__ = [
    "Best",
    "PopbtError",
    "RunFailed",
    "WorkerFault",
    "Choice",
    "Trial",
    "current",
    "ConfigError",
    "ExperimentConfig",
    "IntUniform",
    "LogUniform",
    "NotFound",
    "RunSummary",
    "SpaceError",
    "Spec",
    "SpecError",
    "Step",
    "StoreError",
    "Uniform",
    "best",
    "experiments",
    "export",
    "load_spec",
    "open_store",
    "plot",
    "Replay",
    "replay",
    "run",
    "status",
    "work",
    "worker",
    "__version__",
]
