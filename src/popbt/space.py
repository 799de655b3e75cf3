"""Search-space domains: what a hyperparameter may be, how to draw it, how to nudge it.

Each domain knows four things: ``sample`` a fresh value, ``perturb`` an existing one
(PBT's explore step), ``clip`` a value into bounds and ``validate`` a user-supplied
value. Domains are plain frozen dataclasses so a space can be stored as JSON with the
experiment and compared on resume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import SpaceError


@dataclass(frozen=True)
class Change:
    """How explore changed one value: ``x1.2``, ``x0.8``, ``resample``, ``neighbour``, ``keep``."""

    rule: str
    before: Any
    after: Any


class Domain:
    """Base of all domains. Subclasses set ``kind`` and implement the four methods."""

    kind = "domain"

    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def perturb(self, value: Any, rng: random.Random, factors: Sequence[float]) -> Change:
        raise NotImplementedError

    def clip(self, value: Any) -> Any:
        raise NotImplementedError

    def validate(self, value: Any) -> Any:
        raise NotImplementedError

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{name} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Uniform(Domain):
    """A real number drawn uniformly from [low, high]; explore multiplies it by a factor."""

    low: float
    high: float
    kind = "uniform"

    def __post_init__(self) -> None:
        _check_number(f"{type(self).__name__} low", self.low)
        _check_number(f"{type(self).__name__} high", self.high)
        if self.low >= self.high:
            raise SpaceError(f"{type(self).__name__}({self.low}, {self.high}): low must be below high")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def perturb(self, value: float, rng: random.Random, factors: Sequence[float]) -> Change:
        factor = rng.choice(list(factors))
        return Change(f"x{factor:g}", value, self.clip(value * factor))

    def clip(self, value: float) -> float:
        return float(min(max(value, self.low), self.high))

    def validate(self, value: Any) -> float:
        _check_number("value", value)
        if not self.low <= value <= self.high:
            raise SpaceError(f"{value!r} is outside [{self.low}, {self.high}]")
        return float(value)


@dataclass(frozen=True)
class LogUniform(Uniform):
    """A positive real drawn uniformly in log space, e.g. a learning rate in [1e-5, 1].

    Explore multiplies by the factor in linear space (x0.8, x1.2), which is a step of
    log(1.2) in log space: the same move at every scale.
    """

    kind = "loguniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low <= 0:
            raise SpaceError(f"LogUniform({self.low}, {self.high}): low must be above 0")

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class IntUniform(Domain):
    """An integer drawn uniformly from [low, high] inclusive.

    Explore multiplies and rounds to the nearest integer; when rounding would leave the
    value where it was (small integers), it moves one step in the factor's direction so
    that a value is never stuck.
    """

    low: int
    high: int
    kind = "intuniform"

    def __post_init__(self) -> None:
        for name, v in (("low", self.low), ("high", self.high)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpaceError(f"IntUniform {name} must be an integer, got {v!r}")
        if self.low >= self.high:
            raise SpaceError(f"IntUniform({self.low}, {self.high}): low must be below high")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def perturb(self, value: int, rng: random.Random, factors: Sequence[float]) -> Change:
        factor = rng.choice(list(factors))
        moved = round(value * factor)
        if moved == value and factor != 1:
            moved = value + (1 if factor > 1 else -1) * (1 if value >= 0 else -1)
        return Change(f"x{factor:g}", value, self.clip(moved))

    def clip(self, value: float) -> int:
        return int(min(max(round(value), self.low), self.high))

    def validate(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpaceError(f"{value!r} is not an integer")
        if not self.low <= value <= self.high:
            raise SpaceError(f"{value!r} is outside [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class Choice(Domain):
    """One of a list of values. Ordered choices (the default) explore to a neighbour;
    unordered ones resample."""

    options: tuple = field(default=())
    ordered: bool = True
    kind = "choice"

    def __init__(self, options: Sequence[Any], ordered: bool = True) -> None:
        if isinstance(options, (str, bytes)) or not isinstance(options, Iterable):
            raise SpaceError(f"Choice needs a list of options, got {options!r}")
        object.__setattr__(self, "options", tuple(_plain_option(o) for o in options))
        object.__setattr__(self, "ordered", bool(ordered))
        if not self.options:
            raise SpaceError("Choice needs at least one option")
        if len(set(map(repr, self.options))) != len(self.options):
            raise SpaceError(f"Choice options must be distinct, got {list(self.options)!r}")

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.options)

    def perturb(self, value: Any, rng: random.Random, factors: Sequence[float]) -> Change:
        if not self.ordered or len(self.options) == 1:
            return Change("resample", value, self.sample(rng))
        i = self.options.index(value)
        if i == 0:
            j = 1
        elif i == len(self.options) - 1:
            j = i - 1
        else:
            j = i + rng.choice((-1, 1))
        return Change("neighbour", value, self.options[j])

    def clip(self, value: Any) -> Any:
        return value if value in self.options else self.options[0]

    def validate(self, value: Any) -> Any:
        if value not in self.options:
            raise SpaceError(f"{value!r} is not one of {list(self.options)!r}")
        return value

    def to_json(self) -> dict:
        return {"kind": self.kind, "options": list(self.options), "ordered": self.ordered}


_KINDS = {cls.kind: cls for cls in (Uniform, LogUniform, IntUniform, Choice)}

Space = Mapping[str, Domain]


def _plain_option(value: Any) -> Any:
    """A Choice option as it will come back from the experiment's JSON: a string, a finite
    number, a bool or None. numpy scalars become their Python value; anything else (a tuple, a
    NaN, an object) would come back different, and no worker could join the experiment."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpaceError(f"Choice options must be finite numbers, got {value!r}")
        return value
    raise SpaceError(
        f"Choice options must be strings, numbers, booleans or None, got {value!r} ({type(value).__name__}); "
        "name the option instead (e.g. 'adam') and build the object from it in your spec"
    )


def check_space(space: Any) -> dict[str, Domain]:
    """Return ``space`` as a dict of domains, or raise SpaceError saying what is wrong."""
    if not isinstance(space, Mapping) or not space:
        raise SpaceError("space must be a non-empty dict of name -> domain")
    for name, domain in space.items():
        if not isinstance(name, str) or not name:
            raise SpaceError(f"hyperparameter names must be non-empty strings, got {name!r}")
        if not isinstance(domain, Domain):
            raise SpaceError(
                f"hyperparameter {name!r}: {domain!r} is not a domain (use Uniform, LogUniform, IntUniform or Choice)"
            )
    return dict(space)


def space_to_json(space: Space) -> dict[str, dict]:
    return {name: domain.to_json() for name, domain in space.items()}


def space_from_json(data: Mapping[str, Mapping]) -> dict[str, Domain]:
    out: dict[str, Domain] = {}
    for name, d in data.items():
        d = dict(d)
        cls = _KINDS[d.pop("kind")]
        out[name] = cls(**d)
    return out


def sample_space(space: Space, rng: random.Random) -> dict[str, Any]:
    """Draw one configuration, in the space's declaration order (so a seed reproduces it)."""
    return {name: domain.sample(rng) for name, domain in space.items()}


def validate_hparams(space: Space, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Check a user-supplied configuration against the space; raise SpaceError if it is off."""
    missing = set(space) - set(hparams)
    extra = set(hparams) - set(space)
    if missing or extra:
        raise SpaceError(
            f"hyperparameters must be exactly {sorted(space)}; missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    out = {}
    for name, domain in space.items():
        try:
            out[name] = domain.validate(hparams[name])
        except SpaceError as e:
            raise SpaceError(f"hyperparameter {name!r}: {e}") from None
    return out
