"""popbt: Population Based Training of PyTorch models, coordinated through a SQL table.

The core imports neither torch nor matplotlib; ``popbt.torch`` and the plots do.
"""

from .analysis import Best, Step
from .experiment import ConfigError, ExperimentConfig, Spec, SpecError, load_spec
from .launch import RunSummary, run, work
from .report import best, experiments, status
from .space import Choice, IntUniform, LogUniform, SpaceError, Uniform
from .store import NotFound, StoreError, open_store
from .worker import Trial, current

worker = work

__version__ = "0.1.0"

__all__ = [
    "Best", "Choice", "Trial", "current", "ConfigError", "ExperimentConfig", "IntUniform", "LogUniform", "NotFound",
    "RunSummary", "SpaceError", "Spec", "SpecError", "Step", "StoreError", "Uniform", "best",
    "experiments", "load_spec", "open_store", "run", "status", "work", "worker", "__version__",
]
