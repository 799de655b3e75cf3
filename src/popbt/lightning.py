"""PyTorch Lightning adapter: a LightningModule (and Trainer keywords) as a popbt spec.

    spec = LightningSpec(LitModel, metric="val_accuracy", steps=100, intervals=10, space=space)

``LitModel(**hparams)`` (or any function ``hparams -> LightningModule``) builds a member; its
``configure_optimizers`` reads the hyperparameters (``self.hparams``). One interval is one
``Trainer.fit`` that continues from the member's checkpoint (Lightning's own: weights, optimizer,
LR schedulers, loops, step counts; one file that loads with ``torch.load(path,
weights_only=True)``) and stops ``steps`` optimizer steps or ``epochs`` epochs later. After an
exploit, the optimizer and schedulers that ``configure_optimizers`` built from the explored
hyperparameters keep their settings; the donor's checkpoint only brings running state.
The score is the validation metric ``metric`` that the module logs with ``self.log``.

The core never imports this module; it imports lightning and torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from .adapter import AdapterSpec, interval_length, quiet, refuse, scratch_dir
from .torch import Settings, optimizer_settings, reapply_settings

Hparams = Mapping[str, Any]

# Trainer keywords popbt owns, and why (a user passing them gets this in one line).
OWNED = {
    "max_steps": "an interval is steps=N or epochs=N",
    "max_epochs": "an interval is steps=N or epochs=N",
    "accelerator": "each worker trains on the device popbt gives it (--devices)",
    "devices": "each worker trains on the device popbt gives it (--devices)",
    "callbacks": "pass callbacks=[...] to LightningSpec",
}
# Defaults the user may override through ``trainer={...}``: quiet, and nothing written here.
QUIET = {
    "logger": False,
    "enable_checkpointing": False,  # popbt checkpoints
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
MODULES = r"(lightning|pytorch_lightning|lightning_fabric|lightning_utilities|torchmetrics)(\.|$)"


@dataclass(eq=False)
class LightningState:
    """One member: its module (and datamodule), and what the next fit continues from."""

    module: pl.LightningModule
    datamodule: pl.LightningDataModule | None
    hparams: dict[str, Any]
    trainer: pl.Trainer | None = None  # the trainer of the interval just trained
    resume: str | None = None  # a private copy of the checkpoint the next fit continues from
    validated_at: int | None = None  # global step of the trainer's last validation
    scratch: str = field(default="", repr=False)


def trainer_device(device: str) -> dict[str, Any]:
    """popbt's device string as Trainer keywords: ``cpu`` -> one CPU, ``cuda:1`` -> GPU 1."""
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    return {"accelerator": parsed.type, "devices": [parsed.index] if parsed.index is not None else 1}


class LightningSpec(AdapterSpec):
    """A popbt spec training a LightningModule.

    ``module``: a LightningModule class (called with the hyperparameters as keywords) or a
    function ``hparams -> LightningModule``; ``datamodule`` likewise, when the data does not
    come from the module's own ``*_dataloader`` methods. ``steps`` or ``epochs``: the length of
    one interval. ``trainer``: more ``lightning.Trainer`` keywords (e.g. ``precision``,
    ``gradient_clip_val``, ``limit_val_batches``). ``intervals`` is the run's planned length,
    which ``trainer.estimated_stepping_batches`` (and so a schedule built from it) spans.
    ``quiet``: no progress bars, summaries or framework info lines in the worker's log.
    Other keywords are spec defaults (``population``, ``mode``, ``space``, ...).
    """

    def __init__(
        self,
        module: type[pl.LightningModule] | Callable[[Hparams], pl.LightningModule],
        *,
        metric: str,
        steps: int | None = None,
        epochs: int | None = None,
        datamodule: type[pl.LightningDataModule] | Callable[[Hparams], pl.LightningDataModule] | None = None,
        trainer: Mapping[str, Any] | None = None,
        callbacks: list[pl.Callback] | None = None,
        quiet: bool = True,
        **defaults: Any,
    ) -> None:
        super().__init__(metric, **defaults)
        self.unit, self.length = interval_length(steps, epochs)
        refuse(trainer or {}, OWNED, "LightningSpec(trainer=...)")
        self.make_module, self.make_datamodule = module, datamodule
        self.trainer_kwargs = {**QUIET, **(trainer or {})}
        self.callbacks = list(callbacks or [])
        self.quiet = quiet

    # -- the spec's functions ------------------------------------------------------------

    def build(self, hparams: Hparams, device: str) -> LightningState:
        state = LightningState(_make(self.make_module, hparams), None, dict(hparams))
        if self.make_datamodule is not None:
            state.datamodule = _make(self.make_datamodule, hparams)
        state.scratch = scratch_dir(state, "popbt-lightning-")
        return state

    def load(self, state: LightningState, path: str) -> LightningState:
        """Keep a private copy of the checkpoint (a hard link where possible): popbt may delete
        ``path`` once this returns; the next fit restores everything from the copy."""
        target = os.path.join(state.scratch, "resume.ckpt")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        state.resume, state.trainer = target, None
        return state

    def apply(self, state: LightningState, hparams: Hparams) -> None:
        """New hyperparameters on a state built with others (replay trains on in memory) rebuild
        the module (and datamodule) from them; the next fit restores its weights and training
        state, and the optimizers and schedulers it builds win over the checkpoint's settings.
        A worker built the state with these already: nothing to do."""
        if dict(hparams) == state.hparams:
            return
        with torch.random.fork_rng(devices=[]):  # the random stream train() sees stays the worker's
            state.module = _make(self.make_module, hparams)
            if self.make_datamodule is not None:
                state.datamodule = _make(self.make_datamodule, hparams)
        state.hparams = dict(hparams)

    def train(self, state: LightningState, hparams: Hparams, interval: int, device: str) -> None:
        """One ``Trainer.fit`` from the member's checkpoint to the end of ``interval``."""
        until = (interval + 1) * self.length
        horizon = self.horizon(interval) * self.length
        control = _Interval(self.unit, until)
        limit = {"max_steps": horizon, "max_epochs": -1} if self.unit == "steps" else {"max_epochs": horizon}
        with quiet(self.quiet, LOGGERS, MODULES), self._resume_from(state) as ckpt_path:
            trainer = self._trainer(state, device, control, **limit)
            trainer.fit(state.module, datamodule=state.datamodule, ckpt_path=ckpt_path, weights_only=True)
        state.trainer, state.validated_at = trainer, control.validated_at

    def evaluate(self, state: LightningState, device: str) -> dict[str, float]:
        """The metrics of the validation at the interval's last step (a ``validate`` run when the
        fit did not end on one); ``metric`` among them is the score."""
        trainer = state.trainer
        if trainer is None or state.validated_at != trainer.global_step or self.metric not in trainer.callback_metrics:
            trainer = self._validate(state, device)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if _is_scalar(value)}
        if self.metric not in metrics:
            raise ValueError(
                f"the LightningModule logged no {self.metric!r} during validation (it logged: "
                f"{', '.join(sorted(metrics)) or 'nothing'}); call self.log({self.metric!r}, ...) in validation_step"
            )
        return metrics

    def save(self, state: LightningState, path: str) -> None:
        """Lightning's checkpoint of the whole training state, one file at ``path``."""
        if state.trainer is not None:
            with quiet(self.quiet, LOGGERS, MODULES):
                state.trainer.save_checkpoint(path, weights_only=False)
        elif state.resume is not None:
            shutil.copyfile(state.resume, path)
        else:
            raise RuntimeError("popbt.lightning: nothing to save before the member has trained or loaded")

    # -- helpers -------------------------------------------------------------------------

    def _trainer(self, state: LightningState, device: str, control: _Interval, **limit: Any) -> pl.Trainer:
        kwargs = {"default_root_dir": state.scratch, **self.trainer_kwargs, **trainer_device(device), **limit}
        return pl.Trainer(callbacks=[*self.callbacks, control], **kwargs)

    def _validate(self, state: LightningState, device: str) -> pl.Trainer:
        """Run validation with the interval's trainer, or, for a state loaded but not trained,
        with a new one on the checkpoint's weights."""
        trainer, ckpt = state.trainer, None
        with quiet(self.quiet, LOGGERS, MODULES):
            if trainer is None:
                trainer, ckpt = self._trainer(state, device, _Interval(self.unit, 0)), state.resume
            trainer.validate(
                state.module, datamodule=state.datamodule, ckpt_path=ckpt, weights_only=True, verbose=False
            )
        return trainer

    @contextlib.contextmanager
    def _resume_from(self, state: LightningState) -> Iterator[str | None]:
        """The checkpoint the fit continues from: the one loaded, or (training on in memory, as
        replay does) the previous interval's trainer written out; removed after the fit."""
        if state.resume is None and state.trainer is not None:
            state.resume = os.path.join(state.scratch, "resume.ckpt")
            state.trainer.save_checkpoint(state.resume, weights_only=False)
        try:
            yield state.resume
        finally:
            if state.resume is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(state.resume)
            state.resume = None


class _Interval(pl.Callback):
    """Stops the fit at the end of the interval, makes the freshly built optimizers' settings
    win over the restored ones, notes when validation last ran, and adds a ``model`` key
    (the same tensors as ``state_dict``) so ``popbt.torch.load_weights`` reads the checkpoint."""

    def __init__(self, unit: str, until: int) -> None:
        self.unit, self.until = unit, until
        self.validated_at: int | None = None
        self._fresh: list[Settings] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # configure_optimizers has run (built from the new hyperparameters); the checkpoint's
        # optimizer and scheduler states are loaded after this hook
        self._fresh = [optimizer_settings(optimizer) for optimizer in trainer.optimizers]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        for optimizer, settings in zip(trainer.optimizers, self._fresh):
            reapply_settings(optimizer, settings, schedulers)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.unit == "steps" and trainer.global_step >= self.until:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.unit == "epochs" and trainer.current_epoch + 1 >= self.until:
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_at = trainer.global_step

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["model"] = checkpoint["state_dict"]


def _make(factory: Callable, hparams: Hparams) -> Any:
    """A class is called with the hyperparameters as keywords, a function with the dict."""
    return factory(**hparams) if isinstance(factory, type) else factory(dict(hparams))


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)
