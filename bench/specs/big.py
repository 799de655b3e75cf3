"""A spec with a ~100 MB model (one 5000 x 5000 linear layer, float32), for what reloading
costs: train() is a few small steps and reports its own duration as ``user_seconds``.
POPBT_BENCH_REUSE=0 makes every interval rebuild and reload the model (reuse_state = False).
"""

from __future__ import annotations

import os
import time

import torch

from popbt import LogUniform
from popbt.torch import model_and_optimizer

space = {"lr": LogUniform(1e-4, 1e-2)}
metric, mode = "score", "max"
population, intervals, search = 2, 6, "random"
reuse_state = os.environ.get("POPBT_BENCH_REUSE", "1") != "0"
torch.set_num_threads(1)

build, save, load, apply = model_and_optimizer(
    lambda hp: torch.nn.Linear(5000, 5000), lambda params, hp: torch.optim.SGD(params, lr=hp["lr"])
)
BATCH = torch.ones(8, 5000)


def train(state, hparams, interval, device):
    start = time.perf_counter()
    for _ in range(3):
        state.optimizer.zero_grad()
        state.model(BATCH).pow(2).mean().backward()
        state.optimizer.step()
    return {"user_seconds": time.perf_counter() - start}


def evaluate(state, device):
    with torch.no_grad():
        return -float(state.model(BATCH).pow(2).mean())
