"""PyTorch helper: the usual model + optimizer state in three lines of a spec.

The core package never imports torch; only this module does. Use it as::

    build, save, load, apply = model_and_optimizer(make_model, make_optimizer)

Checkpoints are plain ``{"model": state_dict, "optimizer": state_dict}`` dicts, so they
load with ``torch.load(path, weights_only=True)`` outside popbt too.
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
        torch.save(checkpoint, path)

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


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's tensors live on (cpu for a model without any)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def load_weights(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load the weights of a popbt checkpoint (e.g. the best member's) into ``model``."""
    checkpoint = torch.load(path, weights_only=True, map_location=_model_device(model))
    model.load_state_dict(checkpoint["model"])
    return model
