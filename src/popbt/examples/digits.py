"""The demo: a small MLP on scikit-learn's bundled 8x8 digits, tuned by PBT.

Needs no download and runs on a laptop CPU: an interval is one pass over 1079 training
images, well under a second. PBT tunes SGD's learning rate, momentum and weight decay.
The score is the accuracy on a validation split; a test split that the search never sees
(``test_accuracy``) tells how well the chosen model generalises.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from popbt import LogUniform, Uniform
from popbt.torch import State, model_and_optimizer

BATCH_SIZE = 32
VALIDATION_FRACTION = 0.2
TEST_FRACTION = 0.2
SPLIT_SEED = 0

space = {
    "lr": LogUniform(1e-3, 1.0),
    "momentum": Uniform(0.0, 0.99),
    "weight_decay": LogUniform(1e-6, 1e-2),
}
metric = "accuracy"
mode = "max"
population = 8
intervals = 10


@functools.cache
def dataset() -> dict[str, torch.Tensor]:
    """Fixed seeded train/validation/test split, inputs standardised with training statistics."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val, n_test = int(len(x) * VALIDATION_FRACTION), int(len(x) * TEST_FRACTION)
    val, test, tr = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    mean, std = x[tr].mean(0), x[tr].std(0)
    x = (x - mean) / torch.where(std > 0, std, 1.0)  # border pixels are always 0
    return {"train_x": x[tr], "train_y": y[tr], "val_x": x[val], "val_y": y[val], "test_x": x[test], "test_y": y[test]}


def make_model(hparams: dict) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def make_optimizer(params, hparams: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=hparams["lr"],
        momentum=hparams["momentum"],
        weight_decay=hparams["weight_decay"],
    )


build, save, load, apply = model_and_optimizer(make_model, make_optimizer)


def train(state: State, hparams: dict, interval: int, device: str) -> dict:
    """One shuffled pass over the training split (popbt seeds torch per member and interval)."""
    data = dataset()
    x, y = data["train_x"].to(device), data["train_y"].to(device)
    state.model.train()
    total = torch.zeros((), device=device)
    for batch in torch.randperm(len(x)).split(BATCH_SIZE):
        loss = F.cross_entropy(state.model(x[batch]), y[batch])
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        total += loss.detach() * len(batch)
    return {"train_loss": total.item() / len(x)}


@torch.no_grad()
def accuracy(model: nn.Module, split: str, device: str = "cpu") -> float:
    """The model's accuracy on one split: ``val`` (the score PBT sees) or ``test`` (never seen)."""
    data = dataset()
    model.eval()
    predicted = model(data[f"{split}_x"].to(device)).argmax(1)
    return (predicted == data[f"{split}_y"].to(device)).float().mean().item()


def evaluate(state: State, device: str) -> float:
    """Accuracy on the held-out validation split."""
    return accuracy(state.model, "val", device)


def test_accuracy(state_or_model: State | nn.Module, device: str = "cpu") -> float:
    """Accuracy on the test split, which no search decision ever sees."""
    model = state_or_model.model if isinstance(state_or_model, State) else state_or_model
    return accuracy(model, "test", device)
