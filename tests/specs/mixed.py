"""A fast spec whose space has every kind of domain, for the figures: a numpy toy that
descends a quadratic with a chosen update rule (a Choice), step count (an IntUniform),
log-scaled step size (a LogUniform) and damping (a Uniform)."""

import numpy as np

from popbt import Choice, IntUniform, LogUniform, Uniform

space = {
    "rule": Choice(["plain", "heavy", "sign"]),
    "steps": IntUniform(1, 6),
    "lr": LogUniform(1e-3, 0.5),
    "damping": Uniform(0.0, 1.0),
}
metric, mode = "fit", "max"
population, intervals = 6, 6
SCALE = np.array([1.0, 3.0])


def build(hparams, device):
    return np.array([2.0, -1.5, 0.0, 0.0])  # the point, then its velocity


def train(state, hparams, interval, device):
    x, v = state[:2], state[2:]
    for _ in range(hparams["steps"]):
        grad = SCALE * x
        if hparams["rule"] == "sign":
            grad = np.sign(grad)
        if hparams["rule"] == "heavy":
            v[:] = (1 - hparams["damping"]) * v - hparams["lr"] * grad
            x += v
        else:
            x -= hparams["lr"] * (1 - 0.5 * hparams["damping"]) * grad
    return {"distance": float(np.linalg.norm(x))}


def evaluate(state, device):
    return 10.0 - float((SCALE * state[:2] ** 2).sum())


def save(state, path):
    with open(path, "wb") as f:
        np.save(f, state)


def load(state, path):
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)
