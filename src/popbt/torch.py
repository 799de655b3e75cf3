"""PyTorch helper: the usual model + optimizer state in three lines of a spec.

The core package never imports torch; only this module does. Use it as::

    build, save, load, apply = model_and_optimizer(make_model, make_optimizer)

Checkpoints are plain ``{"model": state_dict, "optimizer": state_dict}`` dicts, so they
load with ``torch.load(path, weights_only=True)`` outside popbt too.

``optimizer_settings`` and ``reapply_settings`` serve the framework adapters
(``popbt.lightning``, ``popbt.transformers``), which rebuild the optimizer and the LR scheduler
from the new hyperparameters every interval and then load the checkpoint's running state into
them: the settings of the fresh build must win over the ones the checkpoint stored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

Hparams = Mapping[str, Any]
MakeModel = Callable[[Hparams], torch.nn.Module]
MakeOptimizer = Callable[[Iterable[torch.nn.Parameter], Hparams], torch.optim.Optimizer]
Build = Callable[[Hparams, Any], "State"]
Save = Callable[["State", str], None]
Load = Callable[["State", str], "State"]
Apply = Callable[["State", Hparams], None]


@dataclass
class State:
    """One member's training state: the model and the optimizer that trains it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def model_and_optimizer(make_model: MakeModel, make_optimizer: MakeOptimizer) -> tuple[Build, Save, Load, Apply]:
    """Return a spec's ``build, save, load, apply`` for a model trained by one optimizer.

    ``make_model(hparams)`` returns the network, ``make_optimizer(params, hparams)`` the
    optimizer over ``params``.
    """

    def build(hparams: Hparams, device: Any) -> State:
        model = make_model(hparams).to(torch.device(device))
        return State(model, make_optimizer(model.parameters(), hparams))

    def save(state: State, path: str) -> None:
        checkpoint = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()}
        save_file(checkpoint, path)

    def load(state: State, path: str) -> State:
        device = _model_device(state.model)
        checkpoint = torch.load(path, weights_only=True, map_location=device)
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        return state

    def apply(state: State, hparams: Hparams) -> None:
        _set_optimizer_hparams(state.optimizer, hparams)

    return build, save, load, apply


def _set_optimizer_hparams(optimizer: torch.optim.Optimizer, hparams: Hparams) -> None:
    """Write each hyperparameter that is an optimizer setting (lr, momentum, ...) into every
    param group, in place, so running state such as momentum buffers survives exploration.

    Names the optimizer does not know are left for the user's code to read from hparams.
    """
    for group in optimizer.param_groups:
        for name, value in hparams.items():
            if name in group and name != "params":
                group[name] = value


Settings = list[dict[str, Any]]


def optimizer_settings(optimizer: torch.optim.Optimizer) -> Settings:
    """Each param group's settings (all but its parameters), taken from an optimizer (and LR
    scheduler) just built from new hyperparameters, before a checkpoint's state is loaded."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def reapply_settings(optimizer: torch.optim.Optimizer, settings: Settings, schedulers: Iterable[Any] = ()) -> None:
    """After ``optimizer.load_state_dict`` (and the schedulers' ``load_state_dict``), make the fresh
    ``settings`` win over those the checkpoint stored: momentum, weight decay, betas, a
    scheduler's ``max_lr`` are taken as built; the checkpoint keeps its running state (momentum
    buffers, Adam moments, step counts) and its place in the LR schedule.

    The new base learning rate is the fresh group's ``initial_lr`` (set by any LR scheduler) or
    its ``lr``. A scheduled group keeps its position in the schedule: its current lr is scaled by
    new base / old base (exact for LambdaLR, step, exponential, cosine-to-zero, one-cycle and
    HF's schedules), and each scheduler's ``base_lrs`` becomes the new base. ``schedulers`` are
    the LR schedulers driving this optimizer (others are ignored).
    """
    groups = optimizer.param_groups
    if len(settings) != len(groups):
        raise ValueError(f"{len(settings)} param groups of settings for an optimizer with {len(groups)}")
    for group, fresh in zip(groups, settings):
        base = _number(fresh.get("initial_lr", fresh["lr"]))
        old_base = group.get("initial_lr")
        if "initial_lr" in fresh and old_base is not None:  # the checkpoint's schedule goes on, rescaled
            old_base = _number(old_base)
            lr = _number(group["lr"]) * base / old_base if old_base else base
        else:
            lr = _number(fresh["lr"])
        group.update({k: v for k, v in fresh.items() if k != "lr"})
        _set_lr(group, lr)
    for scheduler in schedulers:
        if getattr(scheduler, "optimizer", None) is optimizer:
            _rebase(scheduler)


def _rebase(scheduler: Any) -> None:
    """Point a loaded scheduler (and those it chains) at its groups' new base lrs; a LambdaLR
    recomputes its current lr from the new base and its (possibly new) lambdas."""
    groups = scheduler.optimizer.param_groups
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [_number(g.get("initial_lr", g["lr"])) for g in groups]
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and scheduler.last_epoch >= 0:
            for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
                _set_lr(group, base * factor(scheduler.last_epoch))
    for child in getattr(scheduler, "_schedulers", ()):
        _rebase(child)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [_number(g["lr"]) for g in groups]


def _number(value: Any) -> float:
    return value.item() if isinstance(value, torch.Tensor) else value


def _set_lr(group: dict[str, Any], lr: float) -> None:
    """Write a group's lr in place: a tensor lr (capturable optimizers) stays a tensor."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def save_file(obj: Any, path: str) -> None:
    """``torch.save`` without the zip archive's CRC-32 of each record: popbt hashes every
    checkpoint with SHA-256 and verifies it before a load, and the CRC roughly doubled the time
    of a save (files still load with plain ``torch.load``)."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # torch < 2.6: no such setting
        torch.save(obj, path)
        return
    with config.patch({"save.compute_crc32": False}):
        torch.save(obj, path)


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's tensors live on (cpu for a model without any)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def load_weights(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load the weights of a popbt checkpoint (e.g. the best member's) into ``model``."""
    checkpoint = torch.load(path, weights_only=True, map_location=_model_device(model))
    model.load_state_dict(checkpoint["model"])
    return model
