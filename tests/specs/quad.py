"""A fast spec for the tests: the PBT toy quadratic, with faults switched on by env vars.

POPBT_TEST_HANG=M:K:DIR   member M, interval K: touch DIR/hang-<pid>, then block (until killed,
                          or for POPBT_TEST_HANG_SECONDS)
POPBT_TEST_FAIL=M:K       member M, interval K raises in train, every attempt
POPBT_TEST_NAN=M:K        member M, interval K evaluates to NaN, every attempt
POPBT_TEST_FAIL_SEED=M:K  member M, interval K raises in train when it is trained with the seed of
                          its first attempt (a failure that depends on the random draw)
POPBT_TEST_STEP_SECONDS=S each interval takes S more seconds, like real training
POPBT_TEST_SICK=1         every train raises, whichever member: a worker on a broken GPU
POPBT_TEST_LEASE=S        the experiment's lease, in seconds
POPBT_TEST_RETRY_DELAY=S  the experiment's retry_delay (default 0: retried at once)
"""

import os
import time
from pathlib import Path

import numpy as np

import popbt
from popbt import Uniform
from popbt.worker import seed_for

space = {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}
metric, mode = "Q", "max"
population, intervals = 4, 6
lease_seconds = float(os.environ.get("POPBT_TEST_LEASE", "60"))
retry_delay = float(os.environ.get("POPBT_TEST_RETRY_DELAY", "0"))  # no backoff: the suite stays fast


def _injected(var: str) -> list[str] | None:
    value = os.environ.get(var)
    if not value:
        return None
    parts = value.split(":")
    trial = popbt.current()
    return parts if (int(parts[0]), int(parts[1])) == (trial.member, trial.interval) else None


def popbt_seed() -> int:
    """The experiment's seed (the tests pass it with --seed)."""
    return int(os.environ["POPBT_TEST_SEED"])


def build(hparams, device):
    return np.array([0.9, 0.9])


def train(theta, hparams, interval, device):
    h = np.array([hparams["h0"], hparams["h1"]])
    for _ in range(4):
        theta -= 0.1 * h * theta
    hang = _injected("POPBT_TEST_HANG")
    if hang:
        Path(hang[2], f"hang-{os.getpid()}").touch()
        time.sleep(float(os.environ.get("POPBT_TEST_HANG_SECONDS", "3600")))
    if os.environ.get("POPBT_TEST_SICK"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    if _injected("POPBT_TEST_FAIL"):
        raise RuntimeError("injected failure")
    trial = popbt.current()
    if _injected("POPBT_TEST_FAIL_SEED") and trial.seed == seed_for(popbt_seed(), trial.member, trial.interval):
        raise RuntimeError("injected failure with this seed")
    time.sleep(float(os.environ.get("POPBT_TEST_STEP_SECONDS", "0")))
    return {"norm": float(np.linalg.norm(theta))}


def evaluate(theta, device):
    if _injected("POPBT_TEST_NAN"):
        return float("nan")
    return 1.2 - float((theta**2).sum())


def save(theta, path):
    with open(path, "wb") as f:
        np.save(f, theta)


def load(theta, path):
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)
