"""The original PyTorch PBT tool's experiment: its ConvNet on MNIST-format idx files.

15 members, 10 epochs of two intervals, PBT tuning SGD's lr and momentum; the score is
accuracy on 20% of the training set held out. Data: $POPBT_DATA (``--data DIR``), default
Debian's Fashion-MNIST. POPBT_MNIST_LIMIT=N caps the training images for quick runs."""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from popbt import LogUniform, Uniform
from popbt.torch import State, model_and_optimizer

DATA_DIR = "/usr/share/datasets/fashion-mnist"
BATCH_SIZE = 64
HELD_OUT_FRACTION = 0.2
SPLIT_SEED, SHUFFLE_SEED = 0, 1000  # epoch e is shuffled with SHUFFLE_SEED + e, for everyone
MEAN, STD = 0.1307, 0.3081  # the original's normalisation

space = {"lr": LogUniform(1e-5, 1.0), "momentum": Uniform(0.1, 0.9999)}
metric = "accuracy"
mode = "max"
population = 15
intervals = 20  # 10 epochs of two halves
train_limit: int | None = int(os.environ.get("POPBT_MNIST_LIMIT") or 0) or None

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse an idx file, gzipped or not: 0, 0, dtype code, ndim, big-endian dims, data."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    code, ndim = raw[2], raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, _IDX_DTYPES[code], offset=4 + 4 * ndim).reshape(shape)


def data_dir() -> str:
    return os.environ.get("POPBT_DATA") or DATA_DIR


def find_idx(directory: str, name: str) -> str:
    for path in (os.path.join(directory, f"{name}.gz"), os.path.join(directory, name)):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no {name}[.gz] in {directory}: install Debian's dataset-fashion-mnist package or pass --data DIR"
    )


@functools.cache
def read_images(directory: str, prefix: str, limit: int | None = None):
    """Normalised images (N, 1, 28, 28) and int64 labels of the "train" or "t10k" files."""
    images = read_idx(find_idx(directory, f"{prefix}-images-idx3-ubyte"))[:limit]
    labels = read_idx(find_idx(directory, f"{prefix}-labels-idx1-ubyte"))[:limit]
    x = (torch.from_numpy(images.astype(np.float32)) / 255 - MEAN) / STD
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the held-out and the training part of the training images (fixed seed)."""
    return permutation(n, SPLIT_SEED).tensor_split([int(n * HELD_OUT_FRACTION)])


class ConvNet(nn.Module):
    """The original tool's network (PyTorch's classic MNIST example)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.view(-1, 320)))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


build, save, load, apply = model_and_optimizer(
    lambda hparams: ConvNet(),
    lambda params, h: torch.optim.SGD(params, lr=h["lr"], momentum=h["momentum"]),
)


def train(state: State, hparams: dict, interval: int, device: str) -> None:
    """Half an epoch: half (interval % 2) of epoch (interval // 2)'s shuffle."""
    x, y = read_images(data_dir(), "train", train_limit)
    _, kept = split(len(x))
    epoch, half = divmod(interval, 2)
    shuffled = kept[permutation(len(kept), SHUFFLE_SEED + epoch)]
    state.model.train()
    for batch in shuffled.tensor_split(2)[half].split(BATCH_SIZE):
        loss = F.nll_loss(state.model(x[batch].to(device)), y[batch].to(device))
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    model.eval()
    batches = zip(x.split(1000), y.split(1000))
    correct = sum((model(b.to(device)).argmax(1) == t.to(device)).sum().item() for b, t in batches)
    return correct / len(x)


def evaluate(state: State, device: str) -> float:
    """Accuracy on the held-out part of the training images."""
    x, y = read_images(data_dir(), "train", train_limit)
    held, _ = split(len(x))
    return accuracy(state.model, x[held], y[held], device)


def test_accuracy(state_or_model: State | nn.Module, device: str = "cpu") -> float:
    """Accuracy on the t10k test set, for benchmarks (PBT itself never looks at it)."""
    model = state_or_model.model if isinstance(state_or_model, State) else state_or_model
    return accuracy(model, *read_images(data_dir(), "t10k"), device)
