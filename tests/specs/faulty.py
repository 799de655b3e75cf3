"""A fast spec for the fault tests: the toy quadratic, with faults quad.py does not have.

FAULTY_DIR=DIR               where markers go (required by the switches below)
FAULTY_HANG=M:K              member M, interval K (first attempt only): leave DIR/hang-M-K (holding
                             this process's pid) in train, then wait until DIR/release-M-K exists
FAULTY_RAISE=F:M:K[:N],...   spec function F (build, train, evaluate, save, load) raises
                             RuntimeError("injected in F") at member M, interval K, on the first N
                             attempts (default: every attempt)
FAULTY_SAVE_HALF=M:K         save writes half the file, then raises ValueError (first attempt)
FAULTY_STEP_SECONDS=S        each interval takes S more seconds
FAULTY_LEASE=S               the experiment's lease, in seconds (default 60)
"""

import io
import os
import time
from pathlib import Path

import numpy as np

import popbt
from popbt import Uniform

space = {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}
metric, mode = "Q", "max"
population, intervals = 4, 4
lease_seconds = float(os.environ.get("FAULTY_LEASE", "60"))
retry_delay = 0.0  # retried at once: the suite stays fast


def _here() -> tuple[int, int]:
    trial = popbt.current()
    return trial.member, trial.interval


def _first(name: str, times: int | None = 1) -> bool:
    """True on the first ``times`` calls across every process (None: always)."""
    if times is None:
        return True
    for n in range(times):
        try:
            os.close(os.open(Path(os.environ["FAULTY_DIR"], f"{name}-{n}"), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            continue
    return False


def _at(var: str) -> bool:
    value = os.environ.get(var)
    return bool(value) and tuple(map(int, value.split(":")[:2])) == _here()


def _raise(function: str) -> None:
    for item in filter(None, os.environ.get("FAULTY_RAISE", "").split(",")):
        parts = item.split(":")
        where = (int(parts[1]), int(parts[2]))
        times = int(parts[3]) if len(parts) > 3 else None
        if parts[0] == function and where == _here() and _first(f"raise-{item.replace(':', '_')}", times):
            raise RuntimeError(f"injected in {function}")


def build(hparams, device):
    _raise("build")
    return np.array([0.9, 0.9])


def train(theta, hparams, interval, device):
    _raise("train")
    h = np.array([hparams["h0"], hparams["h1"]])
    for _ in range(4):
        theta -= 0.1 * h * theta
    if _at("FAULTY_HANG") and _first("hang"):
        m, k = _here()
        marker = Path(os.environ["FAULTY_DIR"], f"hang-{m}-{k}")
        marker.with_suffix(".tmp").write_text(str(os.getpid()))
        marker.with_suffix(".tmp").rename(marker)
        release = Path(os.environ["FAULTY_DIR"], f"release-{m}-{k}")
        while not release.exists():
            time.sleep(0.02)
    time.sleep(float(os.environ.get("FAULTY_STEP_SECONDS", "0")))
    return {"norm": float(np.linalg.norm(theta))}


def evaluate(theta, device):
    _raise("evaluate")
    return 1.2 - float((theta**2).sum())


def save(theta, path):
    _raise("save")
    buf = io.BytesIO()
    np.save(buf, theta)
    data = buf.getvalue()
    with open(path, "wb") as f:
        if _at("FAULTY_SAVE_HALF") and _first("save-half"):
            f.write(data[: len(data) // 2])
            f.flush()
            raise ValueError("serialisation failed halfway (injected)")
        f.write(data)


def load(theta, path):
    _raise("load")
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)
