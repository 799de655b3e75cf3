"""The digits demo as a LightningModule, tuned by PBT through ``popbt.lightning``.

The same data and split as ``examples/digits.py`` (scikit-learn's bundled 8x8 digits, no
download) and the same small MLP, written the Lightning way: the hyperparameters reach the
module through its constructor (``save_hyperparameters``), ``configure_optimizers`` builds SGD
and a cosine LR schedule from them, and the module logs ``val_accuracy``, the score.
One interval is one epoch. Takes well under a minute on a 2-core CPU::

    popbt run examples/lightning_digits.py --workers 2
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from popbt import LogUniform, Uniform
from popbt.examples.digits import BATCH_SIZE, dataset
from popbt.lightning import LightningSpec

space = {
    "lr": LogUniform(1e-3, 1.0),
    "momentum": Uniform(0.0, 0.99),
    "weight_decay": LogUniform(1e-6, 1e-2),
}
metric = "val_accuracy"
mode = "max"
population = 8
intervals = 8


def cosine(step: int, total: int) -> float:
    """The LR factor at ``step`` of ``total``: from 1 down to 0.1 along a half cosine."""
    progress = min(step / max(total, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class DigitsMLP(pl.LightningModule):
    def __init__(self, lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        total = self.trainer.estimated_stepping_batches  # the whole run: `intervals` epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        data = dataset()
        return DataLoader(TensorDataset(data["train_x"], data["train_y"]), batch_size=BATCH_SIZE, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        data = dataset()
        return DataLoader(TensorDataset(data["val_x"], data["val_y"]), batch_size=len(data["val_y"]))


# A spec object (``popbt run examples/lightning_digits.py:spec``) whose functions are also put at
# module level, where ``popbt run examples/lightning_digits.py`` reads them with the settings above.
spec = LightningSpec(
    DigitsMLP, metric=metric, mode=mode, epochs=1, space=space, population=population, intervals=intervals
)
build, train, evaluate, save, load, apply = spec.functions
