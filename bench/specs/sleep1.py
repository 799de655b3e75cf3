"""A spec whose training is a sleep (1 s per interval, env POPBT_BENCH_SLEEP to change it).

Sleeping stands in for a GPU busy with a real model without loading the CPU, so the share
of wall time workers spend outside user code (worker utilisation) can be measured on a
small machine. train() reports the seconds it actually spent in user code as ``user_seconds``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from popbt import Uniform

SECONDS = float(os.environ.get("POPBT_BENCH_SLEEP", "1.0"))

space = {"x": Uniform(0.0, 1.0)}
metric = "score"
mode = "max"
population = 16
intervals = 10


def build(hparams: dict, device: str) -> np.ndarray:
    return np.zeros(16)


def train(state: np.ndarray, hparams: dict, interval: int, device: str) -> dict:
    start = time.perf_counter()
    time.sleep(SECONDS)
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
