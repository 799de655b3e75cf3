"""The experiment's settings: declared once, here, with their defaults, help and checks.

``ExperimentConfig`` is everything that defines an experiment's course; it is stored as JSON
with the experiment so that every worker, on any machine, follows the same one. Each field
declared with ``setting(...)`` is a *setting*: a spec module may give it a default, and the
command line (``popbt run --population 16``) and ``popbt.run(population=16)`` may override it.
The CLI options, ``popbt.run``'s keywords and the checks are all derived from these fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError, StrategyError
from .space import Domain, space_from_json, space_to_json
from .strategy import EXPLOITS, EXPLORES, NONFINITE, check_quantile, check_top

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = ("latest",)  # "latest" names the newest experiment in every command

Check = Callable[[str, Any], None]


# -- checks: each raises ConfigError naming the setting ------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int) -> Check:
    def check(name: str, value: Any) -> None:
        if not is_int(value) or value < low:
            raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")

    return check


def number(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False) -> Check:
    def check(name: str, value: Any) -> None:
        ok = is_finite_number(value) and (value > low if open_low else value >= low)
        if ok and high is not None:
            ok = value < high if open_high else value <= high
        if not ok:
            lo, hi = "(" if open_low else "[", ")" if open_high else "]"
            where = (
                f"in {lo}{low:g}, {high:g}{hi}"
                if high is not None
                else f"{'above' if open_low else 'at least'} {low:g}"
            )
            raise ConfigError(f"{name} must be a number {where}, got {value!r}")

    return check


def one_of(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices or not isinstance(value, str):
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ConfigError(f"{name} must be a non-empty one-line string, got {value!r}")


def optional(check: Check) -> Check:
    def maybe(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)

    return maybe


def factors_check(name: str, value: Any) -> None:
    """Explore multiplies by one of these: each must be a positive finite number."""
    items = list(value) if isinstance(value, (list, tuple)) else None
    if not items or not all(is_finite_number(f) and f > 0 for f in items):
        raise ConfigError(f"{name} must be a non-empty list of positive numbers, got {value!r}")


def quantile_check(name: str, value: Any) -> None:
    try:
        check_quantile(value)
    except StrategyError as e:
        raise ConfigError(str(e)) from None


def parse_floats(text: str) -> tuple[float, ...]:
    """``0.8,1.2`` -> (0.8, 1.2), for ``--factors``."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected numbers separated by commas, e.g. 0.8,1.2; got {text!r}") from None


# -- the declaration ------------------------------------------------------------------------


def setting(
    default: Any,
    help: str,
    *,
    check: Check,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    fixed: bool = True,
    group: str = "run",
) -> Any:
    """A dataclass field that is a setting. ``fixed``: it cannot change when the experiment is
    resumed; ``parse``: turns the command line's text into the value (``bool``: a flag);
    ``group``: where ``--help`` lists it."""
    meta = dict(help=help, check=check, metavar=metavar, choices=choices, parse=parse, fixed=fixed, group=group)
    return field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines an experiment's course. Stored as JSON with the experiment."""

    name: str
    spec: str
    space: dict[str, Domain]
    population: int = setting(8, "members trained in parallel", check=integer(2), metavar="N", parse=int)
    intervals: int = setting(10, "intervals each member trains", check=integer(1), metavar="N", parse=int)
    metric: str = setting("score", "the score's name in what evaluate() returns", check=text, metavar="NAME")
    mode: str = setting(
        "max", "whether a higher or a lower score is better", check=one_of(("max", "min")), choices=("max", "min")
    )
    sync: bool = setting(
        False, "synchronous generations: interval k+1 starts when every member finished k", check=boolean, parse=bool
    )
    seed: int = setting(
        0,
        "seed of the initial draws and of every decision (default: a random one)",
        check=integer(0),
        metavar="S",
        parse=int,
    )
    search: str = setting(
        "pbt",
        "random: no exploit, no explore (the baseline)",
        check=one_of(("pbt", "random")),
        choices=("pbt", "random"),
    )
    max_attempts: int = setting(
        3,
        "failed attempts of an interval before its member is replaced, and replacements before it is given up",
        check=integer(1),
        metavar="N",
        parse=int,
        fixed=False,
    )
    lease_seconds: float = setting(
        60.0, "how long a claim lasts without a heartbeat", check=number(1.0), metavar="S", parse=float, fixed=False
    )
    retry_delay: float = setting(
        1.0,
        "seconds before a failed interval is retried, doubled at each attempt (at most 60)",
        check=number(0.0),
        metavar="S",
        parse=float,
        fixed=False,
    )
    keep_best: bool = setting(
        False,
        "also keep the checkpoint of the best score ever seen, not only the final models' (popbt best --seen)",
        check=boolean,
        parse=bool,
        fixed=False,
    )
    quantile: float = setting(
        0.2,
        "truncation: the top/bottom fraction, in (0, 0.5]",
        check=quantile_check,
        metavar="Q",
        parse=float,
        group="strategy",
    )
    top: int | None = setting(
        None,
        "truncation: top/bottom groups of N members (instead of --quantile)",
        check=optional(integer(1)),
        metavar="N",
        parse=int,
        group="strategy",
    )
    exploit: str = setting("truncation", "who copies whom", check=one_of(EXPLOITS), choices=EXPLOITS, group="strategy")
    ttest_window: int = setting(
        4, "ttest: the scores compared per member", check=integer(2), metavar="N", parse=int, group="strategy"
    )
    ttest_alpha: float = setting(
        0.05,
        "ttest: the significance level",
        check=number(0, 1, open_low=True, open_high=True),
        metavar="P",
        parse=float,
        group="strategy",
    )
    ready_every: int = setting(
        1,
        "exploit only before intervals that are multiples of K",
        check=integer(1),
        metavar="K",
        parse=int,
        group="strategy",
    )
    burn_in: int = setting(
        0, "no exploit before interval B", check=integer(0), metavar="B", parse=int, group="strategy"
    )
    explore: str = setting(
        "perturb", "how a copy's hyperparameters change", check=one_of(EXPLORES), choices=EXPLORES, group="strategy"
    )
    factors: tuple[float, ...] = setting(
        (0.8, 1.2),
        "perturb: the factors a value is multiplied by",
        check=factors_check,
        metavar="LIST",
        parse=parse_floats,
        group="strategy",
    )
    resample_probability: float = setting(
        0.25,
        "perturb: resample a value with this probability",
        check=number(0, 1),
        metavar="P",
        parse=float,
        group="strategy",
    )
    nonfinite: str = setting(
        "worst",
        "a NaN or infinite score: 'worst' (the member copies a top member at once) or 'fail' (a failed attempt)",
        check=one_of(NONFINITE),
        choices=NONFINITE,
        group="strategy",
    )
    spec_digest: str | None = None  # sha256 of the spec's source: a worker running other code is refused

    def __post_init__(self) -> None:
        check_name(self.name, "experiment name")
        for f in SETTINGS:
            f.metadata["setting"]["check"](f.name, getattr(self, f.name))
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
        try:
            check_top(self.top, self.population)
        except StrategyError as e:
            raise ConfigError(str(e)) from None

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


SETTINGS = tuple(f for f in fields(ExperimentConfig) if "setting" in f.metadata)
TUNABLE = tuple(f.name for f in SETTINGS)  # what a spec module may default and the CLI override
FIXED_ON_RESUME = tuple(f.name for f in SETTINGS if f.metadata["setting"]["fixed"])


def check_name(name: str, what: str) -> str:
    """Names become file paths: allow only a safe alphabet, never '/', '..' or a leading dot."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{what} {name!r} is invalid: use letters, digits, '.', '_' or '-' "
            "(at most 64, not starting with '.' or '-')"
        )
    if name in RESERVED_NAMES:
        raise ConfigError(f"{what} {name!r} is reserved: it names the newest experiment")
    return name


def check_settings(values: Mapping[str, Any]) -> None:
    """Check settings given on their own (a spec's defaults, CLI options) before any merge,
    so that an error names the value the user wrote."""
    by_name = {f.name: f for f in SETTINGS}
    for name, value in values.items():
        if name not in by_name:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            by_name[name].metadata["setting"]["check"](
                name, tuple(value) if name == "factors" and isinstance(value, list) else value
            )


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
