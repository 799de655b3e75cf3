"""The toy problem of the PBT paper (Jaderberg et al. 2017, Figure 2), numpy only.

We want to maximise the true objective Q(θ) = 1.2 − (θ0² + θ1²), but can only train by
gradient ascent on a surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²) whose shape depends on
the hyperparameters h. A member whose h ignores one coordinate stalls on that axis;
PBT's exploit/explore lets the population reach θ = 0 (Q = 1.2) anyway.
"""

from __future__ import annotations

import numpy as np

from popbt import Uniform

STEP_SIZE = 0.01  # the paper's gradient-ascent step size
STEPS_PER_INTERVAL = 4  # 50 intervals = the paper's 200 steps
THETA0 = (0.9, 0.9)

space = {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}
metric = "Q"
mode = "max"
population = 2
intervals = 50


def true_q(theta: np.ndarray) -> float:
    """The objective we care about."""
    return float(1.2 - np.sum(theta**2))


def surrogate_gradient(theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    """∇θ Q̂(θ|h): the only signal training gets."""
    return -2.0 * h * theta


def build(hparams: dict, device: str) -> np.ndarray:
    return np.array(THETA0, dtype=np.float64)


def train(theta: np.ndarray, hparams: dict, interval: int, device: str) -> dict:
    """A few gradient-ascent steps on the surrogate, in place."""
    h = np.array([hparams["h0"], hparams["h1"]], dtype=np.float64)
    for _ in range(STEPS_PER_INTERVAL):
        theta += STEP_SIZE * surrogate_gradient(theta, h)
    q_hat = 1.2 - np.sum(h * theta**2)
    return {"Q_hat": float(q_hat), "theta0": float(theta[0]), "theta1": float(theta[1])}


def evaluate(theta: np.ndarray, device: str) -> float:
    return true_q(theta)


def save(theta: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npy"
        np.save(f, theta)


def load(theta: np.ndarray, path: str) -> np.ndarray:
    with open(path, "rb") as f:
        theta[:] = np.load(f, allow_pickle=False)
    return theta
