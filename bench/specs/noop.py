"""A spec whose user code costs ~nothing, so a run's wall time is popbt's own overhead.

The state is 16 float64s saved with numpy; each interval adds a seeded random step so scores
differ and exploits happen as in a real run. train() reports its own duration as the metric
``user_seconds``, measured inside user code, so overhead can be separated from user time.
"""

from __future__ import annotations

import time

import numpy as np

from popbt import Uniform

space = {"x": Uniform(0.0, 1.0)}
metric = "score"
mode = "max"
population = 32
intervals = 10


def build(hparams: dict, device: str) -> np.ndarray:
    return np.zeros(16)


def train(state: np.ndarray, hparams: dict, interval: int, device: str) -> dict:
    start = time.perf_counter()
    state += hparams["x"] * np.random.random(state.shape)  # popbt seeds numpy per (member, interval)
    return {"user_seconds": time.perf_counter() - start}


def evaluate(state: np.ndarray, device: str) -> float:
    return float(state.mean())


def save(state: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npy"
        np.save(f, state)


def load(state: np.ndarray, path: str) -> np.ndarray:
    with open(path, "rb") as f:
        state[:] = np.load(f, allow_pickle=False)
    return state
