"""The names earlier popbt versions exported from here: the settings (``popbt.config``) and
spec loading (``popbt.spec``). New code imports from those modules."""

from .config import FIXED_ON_RESUME, TUNABLE, ExperimentConfig, check_name, check_resume
from .errors import ConfigError, SpecError
from .spec import Spec, load_spec

__all__ = [
    "FIXED_ON_RESUME",
    "TUNABLE",
    "ConfigError",
    "ExperimentConfig",
    "Spec",
    "SpecError",
    "check_name",
    "check_resume",
    "load_spec",
]
