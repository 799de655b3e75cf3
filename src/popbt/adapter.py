"""What the framework adapters (``popbt.lightning``, ``popbt.transformers``) share.

An adapter is a spec object: it holds the spec's defaults (``space``, ``metric``, ``mode``,
``population``, ...) as attributes and its functions as methods, so ``popbt run file.py:spec``
reads it directly, and ``build, train, evaluate, save, load, apply = spec.functions`` puts them
at module level for ``popbt run file.py``. Imports no framework: each adapter brings its own.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .experiment import TUNABLE, ExperimentConfig, SpecError


class AdapterSpec:
    """The spec's defaults as attributes (only those given, so popbt's own defaults apply to
    the rest) and its six functions; subclasses implement the functions."""

    def __init__(self, metric: str, space: Mapping[str, Any] | None = None, **defaults: Any) -> None:
        if not isinstance(metric, str) or not metric:
            raise SpecError(f"metric must name the score, got {metric!r}")
        unknown = sorted(set(defaults) - set(TUNABLE))
        if unknown:
            raise SpecError(f"unknown spec setting {', '.join(map(repr, unknown))} (settings: {', '.join(TUNABLE)})")
        self.metric = metric
        if space is not None:  # absent rather than None: popbt then says the spec lacks a space
            self.space = space
        for name, value in defaults.items():
            if value is not None:
                setattr(self, name, value)
        self.declared_intervals = defaults.get("intervals") or ExperimentConfig.intervals

    @property
    def functions(self) -> tuple[Callable, ...]:
        """``build, train, evaluate, save, load, apply``, in that order."""
        return self.build, self.train, self.evaluate, self.save, self.load, self.apply

    def horizon(self, interval: int) -> int:
        """Intervals the whole run is planned for (what a LR schedule spans): the declared
        number, or more when training goes past it (``--intervals`` raised on the command line)."""
        return max(self.declared_intervals, interval + 1)

    def build(self, hparams: Mapping[str, Any], device: str) -> Any:
        raise NotImplementedError

    def train(self, state: Any, hparams: Mapping[str, Any], interval: int, device: str) -> Any:
        raise NotImplementedError

    def evaluate(self, state: Any, device: str) -> Any:
        raise NotImplementedError

    def save(self, state: Any, path: str) -> None:
        raise NotImplementedError

    def load(self, state: Any, path: str) -> Any:
        raise NotImplementedError

    def apply(self, state: Any, hparams: Mapping[str, Any]) -> None:
        raise NotImplementedError


def interval_length(steps: int | None, epochs: int | None, allow_epochs: bool = True) -> tuple[str, int]:
    """``("steps", N)`` or ``("epochs", N)`` from the adapter's arguments: exactly one, positive."""
    given = {unit: n for unit, n in (("steps", steps), ("epochs", epochs)) if n is not None}
    if not allow_epochs and "epochs" in given:
        raise SpecError("an interval is a number of optimizer steps here: pass steps=N")
    if len(given) != 1:
        raise SpecError("say how long one interval is: steps=N or epochs=N (one of them)")
    ((unit, n),) = given.items()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SpecError(f"{unit} must be a positive integer, got {n!r}")
    return unit, n


def refuse(given: Mapping[str, Any], owned: Mapping[str, str], what: str) -> None:
    """Reject keyword arguments popbt sets itself, saying what to use instead."""
    clash = [name for name in given if name in owned]
    if clash:
        name = clash[0]
        raise SpecError(f"{what}: popbt sets {name!r} itself ({owned[name]})")


def scratch_dir(owner: object, prefix: str) -> str:
    """A private temporary directory that is removed when ``owner`` (a member's state) goes."""
    path = tempfile.mkdtemp(prefix=prefix)
    weakref.finalize(owner, shutil.rmtree, path, ignore_errors=True)
    return path


@contextlib.contextmanager
def quiet(enabled: bool, loggers: Sequence[str], modules: str) -> Iterator[None]:
    """Inside the block, the framework's loggers say only warnings and up, and Python warnings
    raised from its own modules (``modules``, a regex) are dropped: worker logs stay readable."""
    if not enabled:
        yield
        return
    chosen = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in chosen]
    for logger in chosen:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=modules)
            yield
    finally:
        for logger, level in zip(chosen, levels):
            logger.setLevel(level)
