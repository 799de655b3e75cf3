"""The experiment's settings, and loading the user's spec (the code popbt trains).

A spec is a ``.py`` file or an importable module, optionally ``:attribute``; see
docs/spec.md. Settings come from three layers: popbt's defaults, the spec's module-level
values, then command-line options; the merged config is stored with the experiment so that
every worker, on any machine, follows the same one.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from .space import Domain, SpaceError, check_space, space_from_json, space_to_json
from .strategy import EXPLOITS, EXPLORES, NONFINITE, check_quantile, check_top

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SpecError(ValueError):
    """The spec cannot be found, does not import, or lacks what popbt needs."""


class ConfigError(ValueError):
    """An experiment setting is invalid or conflicts with a stored experiment."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines an experiment's course. Stored as JSON with the experiment."""

    name: str
    spec: str
    space: dict[str, Domain]
    population: int = 8
    intervals: int = 10
    metric: str = "score"
    mode: str = "max"
    sync: bool = False
    seed: int = 0
    quantile: float = 0.2
    factors: tuple[float, ...] = (0.8, 1.2)
    resample_probability: float = 0.25
    max_attempts: int = 3
    lease_seconds: float = 60.0
    search: str = "pbt"
    top: int | None = None  # a count for the top/bottom groups; wins over quantile
    exploit: str = "truncation"  # truncation | tournament | ttest
    ttest_window: int = 4
    ttest_alpha: float = 0.05
    ready_every: int = 1  # exploit only before intervals that are multiples of this
    burn_in: int = 0  # no exploit before this interval
    explore: str = "perturb"  # perturb | pb2
    nonfinite: str = "worst"  # a NaN/inf score: the worst score (the member exploits at once) | a failure

    def __post_init__(self) -> None:
        check_name(self.name, "experiment name")
        if not isinstance(self.population, int) or self.population < 2:
            raise ConfigError(f"population must be an integer of at least 2, got {self.population!r}")
        if not isinstance(self.intervals, int) or self.intervals < 1:
            raise ConfigError(f"intervals must be a positive integer, got {self.intervals!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.search not in ("pbt", "random"):
            raise ConfigError(f"search must be 'pbt' or 'random', got {self.search!r}")
        if not is_finite_number(self.resample_probability) or not 0 <= self.resample_probability <= 1:
            raise ConfigError(f"resample_probability must be in [0, 1], got {self.resample_probability!r}")
        _check_factors(self.factors)
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if not self.lease_seconds > 0:
            raise ConfigError("lease_seconds must be positive")
        try:
            check_quantile(self.quantile)
            check_top(self.top, self.population)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.exploit not in EXPLOITS:
            raise ConfigError(f"exploit must be one of {', '.join(EXPLOITS)}, got {self.exploit!r}")
        if self.explore not in EXPLORES:
            raise ConfigError(f"explore must be one of {', '.join(EXPLORES)}, got {self.explore!r}")
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {self.nonfinite!r}")
        if not _is_int(self.ttest_window) or self.ttest_window < 2:
            raise ConfigError(f"ttest_window must be an integer of at least 2, got {self.ttest_window!r}")
        if not is_finite_number(self.ttest_alpha) or not 0 < self.ttest_alpha < 1:
            raise ConfigError(f"ttest_alpha must be in (0, 1), got {self.ttest_alpha!r}")
        if not _is_int(self.ready_every) or self.ready_every < 1:
            raise ConfigError(f"ready_every must be a positive integer, got {self.ready_every!r}")
        if not _is_int(self.burn_in) or self.burn_in < 0:
            raise ConfigError(f"burn_in must be an integer of at least 0, got {self.burn_in!r}")

    @property
    def exploits(self) -> bool:
        return self.search == "pbt"

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["space"] = space_to_json(self.space)
        data["factors"] = list(self.factors)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        data = dict(data)
        data["space"] = space_from_json(data["space"])
        data["factors"] = tuple(data.get("factors", (0.8, 1.2)))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Settings a spec module may default and the command line may override.
STRATEGY = (
    "quantile",
    "top",
    "exploit",
    "ttest_window",
    "ttest_alpha",
    "ready_every",
    "burn_in",
    "explore",
    "factors",
    "resample_probability",
    "nonfinite",
)
TUNABLE = (
    "population",
    "intervals",
    "sync",
    "seed",
    "metric",
    "mode",
    "max_attempts",
    "lease_seconds",
    "search",
    *STRATEGY,
)
# Settings that, once an experiment exists, cannot change on resume.
FIXED_ON_RESUME = ("population", "intervals", "sync", "seed", "metric", "mode", "search", *STRATEGY)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_factors(factors: Any) -> None:
    """Explore multiplies by one of these: each must be a positive finite number."""
    items = list(factors) if isinstance(factors, (list, tuple)) else None
    if not items or not all(is_finite_number(f) and f > 0 for f in items):
        raise ConfigError(f"factors must be a non-empty list of positive numbers, got {factors!r}")


def check_name(name: str, what: str) -> str:
    """Names become file paths: allow only a safe alphabet, never '/', '..' or a leading dot."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{what} {name!r} is invalid: use letters, digits, '.', '_' or '-' "
            "(at most 64, not starting with '.' or '-')"
        )
    return name


@dataclass
class Spec:
    """The user's code and the spec's own defaults, as loaded from the spec reference."""

    ref: str
    space: dict[str, Domain]
    build: Callable
    train: Callable
    evaluate: Callable
    save: Callable
    load: Callable
    apply: Callable | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    explore: Callable | None = None  # the spec's explore(hparams, rng) hook, if it has one

    @property
    def stem(self) -> str:
        base = self.ref.split(":")[0]
        stem = Path(base).stem if base.endswith(".py") else base.rsplit(".", 1)[-1]
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip(".-") or "experiment"
        return stem[:64]

    def config(self, name: str | None = None, **overrides: Any) -> ExperimentConfig:
        """Merge popbt defaults < spec defaults < explicit overrides (None means 'not given')."""
        values = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        if values.get("seed") is None:
            values["seed"] = random.SystemRandom().randrange(2**31)
        config = ExperimentConfig(name=name or self.stem, spec=self.ref, space=self.space, **values)
        check_installed(config)
        return config


REQUIRED = ("build", "train", "evaluate", "save", "load")


def load_spec(ref: str) -> Spec:
    """Import a spec from ``path/to/file.py[:attr]`` or ``package.module[:attr]``."""
    if not isinstance(ref, str) or not ref.strip():
        raise SpecError("no spec given: pass a .py file or an importable module")
    target, _, attr = ref.partition(":")
    obj: Any = _import_target(target)
    if attr:
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(f"spec {target!r} has no attribute {attr!r}") from None
    return _spec_from_object(ref, obj)


def _import_target(target: str) -> ModuleType:
    path = Path(target)
    if target.endswith(".py") or path.exists() or "/" in target:
        if not path.is_file():
            raise SpecError(f"spec file {target!r} does not exist")
        return _import_file(path.resolve())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name):
            raise SpecError(f"spec {target!r} is neither a .py file nor an importable module") from None
        raise SpecError(f"spec {target!r} failed to import: {type(e).__name__}: {e}") from None
    except Exception as e:  # the user's module raised at import time
        raise SpecError(f"spec {target!r} failed to import: {type(e).__name__}: {e}") from None


def _import_file(path: Path) -> ModuleType:
    name = "popbt_spec_" + re.sub(r"\W", "_", path.stem)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"spec file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    # Let a spec import helper modules that sit next to it.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise SpecError(f"spec {str(path)!r} failed to import: {type(e).__name__}: {e}") from None
    return module


def _spec_from_object(ref: str, obj: Any) -> Spec:
    missing = [n for n in ("space", *REQUIRED) if not hasattr(obj, n)]
    if missing:
        raise SpecError(f"spec {ref!r} lacks {', '.join(missing)} (see docs/spec.md)")
    not_callable = [n for n in REQUIRED if not callable(getattr(obj, n))]
    if not_callable:
        raise SpecError(f"spec {ref!r}: {', '.join(not_callable)} must be functions")
    try:
        space = check_space(obj.space)
    except SpaceError as e:
        raise SpecError(f"spec {ref!r}: {e}") from None
    apply = getattr(obj, "apply", None)
    # ``explore`` is either the hook (a function) or the default explore rule (a string)
    hook = getattr(obj, "explore", None)
    hook = hook if callable(hook) else None
    defaults = {
        n: getattr(obj, n) for n in TUNABLE if getattr(obj, n, None) is not None and not (n == "explore" and hook)
    }
    return Spec(ref, space, *(getattr(obj, n) for n in REQUIRED), apply=apply, defaults=defaults, explore=hook)


def check_installed(config: ExperimentConfig) -> None:
    """Fail before anything is written when a chosen rule needs an optional package
    (checked when an experiment is created, not when a stored one is read)."""
    needs = []
    if config.exploit == "ttest":
        needs.append(("exploit='ttest'", "scipy", "scipy"))
    if config.explore == "pb2":
        needs.append(("explore='pb2'", "scipy", "'popbt[pb2]'"))
    for what, module, package in needs:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{what} needs {module}: pip install {package}")


def check_resume(stored: ExperimentConfig, requested: Mapping[str, Any]) -> None:
    """Refuse options that contradict the experiment being resumed (e.g. --sync on async)."""
    for key in FIXED_ON_RESUME:
        value = requested.get(key)
        if isinstance(value, list):
            value = tuple(value)  # factors: a list from Python, a tuple once stored
        if value is not None and value != getattr(stored, key):
            raise ConfigError(
                f"experiment {stored.name!r} was created with {key}={getattr(stored, key)!r}; "
                f"cannot resume it with {key}={value!r} (use --name for a new experiment)"
            )


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
