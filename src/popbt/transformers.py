"""Hugging Face Transformers adapter: a ``Trainer`` recipe as a popbt spec.

    spec = TransformersSpec(make_model, train_dataset=train, eval_dataset=val, steps=100,
                            metric="eval_accuracy", mode="max", compute_metrics=accuracy,
                            args={"per_device_train_batch_size": 32}, intervals=10, space=space)

``make_model(hparams)`` builds a member's model. One interval is one ``Trainer.train()`` of
``steps`` optimizer steps; hyperparameters named like ``TrainingArguments`` fields
(``learning_rate``, ``weight_decay``, ``warmup_steps``, ``adam_beta2``, ...) go into that
interval's arguments, so the Trainer builds its optimizer and LR scheduler from them; the
member's checkpoint then brings the running state only (Adam moments, the scheduler's step),
so the explored values win over the donor's. The LR schedule spans the whole run
(``intervals`` x ``steps``). The score is a metric of ``trainer.evaluate()``.

Checkpoints are one file, ``{"model", "optimizer", "scheduler", "step", "hparams"}``, that loads
with ``torch.load(path, weights_only=True)`` (``popbt.torch.load_weights(model, path)`` too).
Nothing is reported to wandb, tensorboard and the like unless ``args`` asks for it, and the
Trainer's output directory is a private temporary one. The core never imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments

from .adapter import AdapterSpec, interval_length, quiet, refuse, scratch_dir
from .errors import SpecError
from .torch import optimizer_settings, reapply_settings, save_file

Hparams = Mapping[str, Any]

ARGUMENTS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))
# TrainingArguments popbt owns, and why (a user passing them gets this in one line).
OWNED = {
    "max_steps": "an interval is steps=N",
    "num_train_epochs": "an interval is steps=N",
    "output_dir": "the Trainer writes into a private temporary directory; popbt keeps the checkpoints",
    "save_strategy": "popbt keeps the checkpoints",
    "eval_strategy": "popbt evaluates at the end of every interval",
    "load_best_model_at_end": "popbt keeps the best member",
    "seed": "popbt seeds each member and interval",
    "use_cpu": "each worker trains on the device popbt gives it (--devices)",
}
# Defaults ``args`` may override: quiet, and no reporting anywhere.
QUIET = {"report_to": "none", "disable_tqdm": True, "logging_strategy": "no"}
LOGGERS = ("transformers", "accelerate")
MODULES = r"(transformers|accelerate)(\.|$)"
# trainer.evaluate() also times itself; those are not scores.
TIMINGS = ("_runtime", "_per_second")


@dataclass(eq=False)
class TransformersState:
    """One member: its model, and the optimizer and scheduler state the next interval continues."""

    model: torch.nn.Module
    hparams: dict[str, Any]
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    step: int = 0  # optimizer steps trained over all intervals
    trainer: Trainer | None = None  # the trainer of the interval just trained
    scratch: str = field(default="", repr=False)


@dataclass
class PinnedArguments(TrainingArguments):
    """TrainingArguments on the one device popbt gave the worker. Left alone, the Trainer takes
    ``cuda:0`` and spreads over every visible GPU (DataParallel) whatever the worker's device."""

    popbt_device: str | None = None

    @functools.cached_property
    def _setup_devices(self) -> torch.device:
        device = super()._setup_devices
        pinned = torch.device(self.popbt_device) if self.popbt_device else None
        if pinned is None or pinned.type != "cuda" or pinned.index is None:
            return device
        torch.cuda.set_device(pinned)
        self._n_gpu = 1
        return pinned


def device_arguments(device: str) -> dict[str, Any]:
    """popbt's device string as TrainingArguments: ``cpu`` even where GPUs exist, ``cuda:1`` alone."""
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return {"use_cpu": True}
    return {"popbt_device": device}


class TransformersSpec(AdapterSpec):
    """A popbt spec training a Hugging Face model with ``transformers.Trainer``.

    ``model``: ``hparams -> model`` (all hyperparameters, e.g. a dropout for its config).
    ``train_dataset`` / ``eval_dataset``: datasets, or functions of no argument returning them
    (called once per worker process). ``args``: more ``TrainingArguments`` keywords.
    ``data_collator``, ``processing_class``, ``compute_metrics``, ``callbacks`` go to the
    Trainer, ``trainer_class`` is the Trainer (sub)class. ``metric`` names a key of
    ``trainer.evaluate()`` (``eval_loss``, minimised by default, or ``eval_<name>`` of
    ``compute_metrics``). ``intervals`` is the run's planned length, which the LR schedule
    spans. Other keywords are spec defaults (``population``, ``mode``, ``space``, ...).
    """

    def __init__(
        self,
        model: Callable[[Hparams], torch.nn.Module],
        *,
        train_dataset: Any,
        eval_dataset: Any,
        steps: int,
        metric: str = "eval_loss",
        args: Mapping[str, Any] | None = None,
        data_collator: Callable | None = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        trainer_class: type[Trainer] = Trainer,
        quiet: bool = True,
        **defaults: Any,
    ) -> None:
        if metric == "eval_loss" and defaults.get("mode") is None:
            defaults["mode"] = "min"
        super().__init__(metric, **defaults)
        _, self.steps = interval_length(steps, None, allow_epochs=False)
        refuse(args or {}, OWNED, "TransformersSpec(args=...)")
        unknown = sorted(set(args or {}) - ARGUMENTS)
        if unknown:
            raise SpecError(f"args: TrainingArguments has no {', '.join(map(repr, unknown))}")
        self.make_model = model
        self.args = {**QUIET, **(args or {})}
        self.datasets = {"train_dataset": _lazy(train_dataset), "eval_dataset": _lazy(eval_dataset)}
        self.trainer_kwargs = {
            "data_collator": data_collator,
            "processing_class": processing_class,
            "compute_metrics": compute_metrics,
            "callbacks": list(callbacks) if callbacks else None,
        }
        self.trainer_class = trainer_class
        self.quiet = quiet

    # -- the spec's functions ------------------------------------------------------------

    def build(self, hparams: Hparams, device: str) -> TransformersState:
        state = TransformersState(self.make_model(dict(hparams)), dict(hparams))
        state.scratch = scratch_dir(state, "popbt-transformers-")
        return state

    def load(self, state: TransformersState, path: str) -> TransformersState:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer_state, state.scheduler_state = checkpoint["optimizer"], checkpoint["scheduler"]
        state.step, state.trainer = checkpoint["step"], None
        return state

    def apply(self, state: TransformersState, hparams: Hparams) -> None:
        """The next interval's TrainingArguments take their fields from these hyperparameters.
        Others that changed since the model was built (replay trains on in memory) rebuild it
        from them, with its weights; a worker built it with these already."""
        changed = {
            name
            for name in set(hparams) | set(state.hparams)
            if name not in ARGUMENTS and hparams.get(name) != state.hparams.get(name)
        }
        if changed:
            with torch.random.fork_rng(devices=[]):  # the random stream train() sees stays the worker's
                model = self.make_model(dict(hparams))
            model.load_state_dict(state.model.state_dict())
            state.model, state.trainer = model, None
        state.hparams = dict(hparams)

    def train(self, state: TransformersState, hparams: Hparams, interval: int, device: str) -> dict[str, float]:
        """``steps`` optimizer steps, continuing the member's optimizer and LR schedule."""
        with quiet(self.quiet, LOGGERS, MODULES):
            trainer = self._trainer(state, device)
            self._continue(trainer, state, self.horizon(interval) * self.steps)
            result = trainer.train()
        state.trainer = trainer
        state.optimizer_state = trainer.optimizer.state_dict()
        state.scheduler_state = trainer.lr_scheduler.state_dict()
        state.step += result.global_step
        return {"train_loss": result.training_loss, "step": state.step}

    def evaluate(self, state: TransformersState, device: str) -> dict[str, float]:
        """``trainer.evaluate()``'s metrics (timings left out); ``metric`` among them is the score."""
        with quiet(self.quiet, LOGGERS, MODULES):
            trainer = state.trainer or self._trainer(state, device)
            evaluated = trainer.evaluate()
        metrics = {
            name: float(value)
            for name, value in evaluated.items()
            if _is_number(value) and name != "epoch" and not name.endswith(TIMINGS)
        }
        if self.metric not in metrics:
            raise ValueError(
                f"trainer.evaluate() gave no {self.metric!r} (it gave: {', '.join(sorted(metrics)) or 'nothing'}); "
                "a metric eval_NAME comes from compute_metrics returning NAME"
            )
        return metrics

    def save(self, state: TransformersState, path: str) -> None:
        checkpoint = {
            "model": state.model.state_dict(),
            "optimizer": state.optimizer_state,
            "scheduler": state.scheduler_state,
            "step": state.step,
            "hparams": state.hparams,
        }
        save_file(checkpoint, path)

    # -- helpers -------------------------------------------------------------------------

    def arguments(self, hparams: Hparams, device: str, output_dir: str) -> TrainingArguments:
        """One interval's TrainingArguments: ``args``, then the hyperparameters that are fields,
        then what popbt owns (the interval's length, its seed, the device, no saving)."""
        values = {
            **self.args,
            **{name: value for name, value in hparams.items() if name in ARGUMENTS},
            "output_dir": output_dir,
            "max_steps": self.steps,
            "save_strategy": "no",
            "eval_strategy": "no",
            "seed": torch.initial_seed() % 2**32,  # popbt seeded torch for this member and interval
            **device_arguments(device),
        }
        return PinnedArguments(**values)

    def _trainer(self, state: TransformersState, device: str) -> Trainer:
        datasets = {name: dataset() for name, dataset in self.datasets.items()}
        trainer = self.trainer_class(
            model=state.model,
            args=self.arguments(state.hparams, device, state.scratch),
            **datasets,
            **self.trainer_kwargs,
        )
        if self.quiet:
            trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
        return trainer

    @staticmethod
    def _continue(trainer: Trainer, state: TransformersState, horizon: int) -> None:
        """Build the optimizer and a schedule over the whole run from this interval's arguments,
        then load the member's running state into them, keeping the fresh settings."""
        optimizer = trainer.create_optimizer()
        scheduler = trainer.create_scheduler(num_training_steps=horizon, optimizer=optimizer)
        # train() rebuilds a schedule it created itself, over one interval's steps: keep this one
        trainer._created_lr_scheduler = False
        if state.optimizer_state is None:
            return
        fresh = optimizer_settings(optimizer)
        optimizer.load_state_dict(state.optimizer_state)
        if state.scheduler_state is not None:
            scheduler.load_state_dict(state.scheduler_state)
        reapply_settings(optimizer, fresh, [scheduler])


def _lazy(dataset: Any) -> Callable[[], Any]:
    """A dataset, or a function returning one (called once, on first use)."""
    if callable(dataset) and not hasattr(dataset, "__getitem__") and not hasattr(dataset, "__iter__"):
        return functools.cache(dataset)
    return lambda: dataset


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
