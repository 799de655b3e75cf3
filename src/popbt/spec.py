"""Loading the user's spec: the code popbt trains, and the identity of that code.

A spec is a ``.py`` file or an importable module, optionally ``:attribute`` (docs/spec.md), or
an object defined in a notebook (a module, a class or a namespace of functions) that
``popbt.run`` hands to its workers as a cloudpickle file. Every spec has a *digest* (the
sha256 of its source), stored with the experiment it creates, so that a worker started with
other code is refused instead of writing its scores into that experiment's history.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import TUNABLE, ExperimentConfig, check_settings
from .errors import ConfigError, SpaceError, SpecError
from .space import Domain, check_space, space_to_json

REQUIRED = ("build", "train", "evaluate", "save", "load")
PICKLED = ".pkl"  # a spec object written by popbt.run for its workers


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
    digest: str | None = None  # sha256 of the spec's source (None: unknown)
    source: Any = None  # the object it was made from, when it is not a file or module (a notebook's)
    name: str | None = None  # the default experiment name, when the reference does not give one
    # a worker that trains a member's next interval right after its last may go on with the
    # state in memory (no rebuild, no reload); a spec whose save() or load() does more than
    # write and read the state says reuse_state = False
    reuse_state: bool = True

    @property
    def stem(self) -> str:
        if self.name:
            stem = self.name
        else:
            base = self.ref.split(":")[0]
            stem = Path(base).stem if base.endswith((".py", PICKLED)) else base.rsplit(".", 1)[-1]
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip(".-") or "experiment"
        return "experiment" if stem == "latest" else stem[:64]

    @property
    def is_object(self) -> bool:
        """Made from an object rather than a file or module: workers get it pickled."""
        return self.source is not None

    def config(self, name: str | None = None, **overrides: Any) -> ExperimentConfig:
        """Merge popbt defaults < spec defaults < explicit overrides (None means 'not given')."""
        given = {k: v for k, v in overrides.items() if v is not None}
        check_settings(given)
        values = {**self.defaults, **given}
        if values.get("seed") is None:
            values["seed"] = random.SystemRandom().randrange(2**31)
        config = ExperimentConfig(
            name=name or self.stem, spec=self.ref, space=self.space, spec_digest=self.digest, **values
        )
        check_installed(config)
        return config


def load_spec(ref: Any) -> Spec:
    """Import a spec from ``path/to/file.py[:attr]``, ``package.module[:attr]``, a pickled
    spec object (``.pkl``, written by ``popbt.run``), or take a spec object as it is."""
    if not isinstance(ref, str):
        return spec_from_object(ref)
    if not ref.strip():
        raise SpecError("no spec given: pass a .py file or an importable module")
    target, _, attr = ref.partition(":")
    if target.endswith(PICKLED):
        return _load_pickled(target)
    module, source = _import_target(target)
    obj: Any = module
    if attr:
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(f"spec {target!r} has no attribute {attr!r}") from None
    return _spec(ref, obj, _file_digest(source) if source else None)


def spec_from_object(obj: Any, name: str | None = None) -> Spec:
    """A spec defined in a notebook or script: a module, a class or a namespace of functions.
    Its digest covers the source of its functions, so re-running the same cells resumes the
    same experiment."""
    if isinstance(obj, Spec):
        return obj
    label = name or _object_name(obj)
    spec = _spec(f"<object>:{label}", obj, _object_digest(obj))
    spec.source, spec.name = obj, label
    return spec


def write_pickled(spec: Spec, path: Path) -> Path:
    """Write an object spec for workers to load (``popbt worker PATH.pkl``): cloudpickle keeps
    functions defined in a notebook by value; modules they import must exist on the worker."""
    import cloudpickle

    payload = {"spec": spec.source, "name": spec.name, "digest": spec.digest}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            cloudpickle.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _load_pickled(target: str) -> Spec:
    import pickle

    path = Path(target)
    if not path.is_file():
        raise SpecError(f"spec file {target!r} does not exist")
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
        obj, name, digest = payload["spec"], payload["name"], payload["digest"]
    except Exception as e:
        raise SpecError(f"spec {target!r} cannot be loaded: {type(e).__name__}: {_one_line(e)}") from None
    spec = _spec(str(path), obj, digest)
    spec.name = name
    return spec


def _import_target(target: str) -> tuple[ModuleType, str | None]:
    """The module, and the file its source is in (None when it has none, e.g. a builtin)."""
    path = Path(target)
    if target.endswith(".py") or path.exists() or "/" in target:
        if not path.is_file():
            raise SpecError(f"spec file {target!r} does not exist")
        return _import_file(path.resolve()), str(path.resolve())
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name):
            raise SpecError(f"spec {target!r} is neither a .py file nor an importable module") from None
        raise SpecError(f"spec {target!r} failed to import: {type(e).__name__}: {e}") from None
    except Exception as e:  # the user's module raised at import time
        raise SpecError(f"spec {target!r} failed to import: {type(e).__name__}: {e}") from None
    return module, getattr(module, "__file__", None)


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


def _spec(ref: str, obj: Any, digest: str | None) -> Spec:
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
    if apply is not None and not callable(apply):
        raise SpecError(f"spec {ref!r}: apply must be a function")
    # ``explore`` is either the hook (a function) or the default explore rule (a string)
    hook = getattr(obj, "explore", None)
    hook = hook if callable(hook) else None
    defaults = {
        n: getattr(obj, n) for n in TUNABLE if getattr(obj, n, None) is not None and not (n == "explore" and hook)
    }
    try:
        check_settings(defaults)
    except ConfigError as e:
        raise SpecError(f"spec {ref!r}: {e}") from None
    workers = getattr(obj, "workers", None)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise SpecError(f"spec {ref!r}: workers must be an integer of at least 0, got {workers!r}")
        defaults["workers"] = workers
    reuse = getattr(obj, "reuse_state", True)
    if not isinstance(reuse, bool):
        raise SpecError(f"spec {ref!r}: reuse_state must be True or False, got {reuse!r}")
    return Spec(
        ref,
        space,
        *(getattr(obj, n) for n in REQUIRED),
        apply=apply,
        defaults=defaults,
        explore=hook,
        digest=digest,
        reuse_state=reuse,
    )


def _file_digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _object_digest(obj: Any) -> str:
    """sha256 of the space and of the source of the spec's functions (their bytecode when the
    source cannot be read)."""
    digest = hashlib.sha256(repr(space_to_json(check_space(getattr(obj, "space", None) or {"?": None}))).encode())
    for name in (*REQUIRED, "apply", "explore"):
        fn = getattr(obj, name, None)
        if not callable(fn):
            continue
        try:
            code = inspect.getsource(fn).encode()
        except (OSError, TypeError):
            inner = getattr(fn, "__code__", None)
            code = inner.co_code if inner is not None else repr(fn).encode()
        digest.update(name.encode() + b"\0" + code)
    return digest.hexdigest()


def _object_name(obj: Any) -> str:
    for attr in ("name", "__name__"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value and value != "__main__":
            return value
    return "experiment"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
