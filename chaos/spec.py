"""The chaos campaign's spec: PBT's toy quadratic, with faults fired from inside user code.

Faults come from a small JSON control file named by env CHAOS_CONTROL (the campaign writes it
before it starts a run and may rewrite it mid-run; it is re-read whenever it changes):

    {"dir": "/tmp/.../control",      # where this spec leaves its markers
     "step_seconds": 0.05,           # each interval's "training" takes this long
     "faults": [{"id": "f7", "at": "save", "do": "oserror_half", "member": 2, "interval": 3,
                 "times": 1}, ...]}

``at`` is the spec function the fault fires in (build, train, evaluate, save, load, apply,
explore); ``member`` / ``interval`` select the task (null: any); ``times`` is how many
attempts it fires on (0: every attempt, for a member that keeps failing); ``role`` (default
"") fires it only in a worker whose env CHAOS_ROLE is the same (the campaign's netns worker),
or in every worker ("*": a member that fails or kills whoever trains it).
``foreign`` lists file names popbt must never load (each load of one leaves a marker).
A worker with env CHAOS_SICK=1 raises a CUDA error in every train (a broken GPU). Each firing leaves
``DIR/fired-ID-N`` holding "pid member interval" before it acts, so the campaign can wait on
it (a real condition) and knows which process to signal.

``do``:
    raise           raise RuntimeError("chaos ID: injected in AT")
    exit            raise SystemExit(3) (user code calling sys.exit)
    kill            SIGKILL this worker right there (in save: after writing the whole file,
                    i.e. between the checkpoint write and the result's commit)
    kill_after_rename   (save) SIGKILL this worker once popbt has renamed the checkpoint into
                    place, a few ms later: while the report (and any exploit it decides) commits
    stop_after_rename   (save) the same with SIGSTOP: frozen between the rename and the report
    cut_after_rename    (save) once renamed (and ``delay`` s later), take this network
                    namespace's link ``dev`` down: the worker is cut off inside its report;
                    DIR/cut-ID says when it was done
    oserror_half    (save) write half of the file, then raise OSError(ENOSPC)
    hang            block until DIR/release-ID exists (the campaign SIGKILLs or SIGSTOPs us)
    nan | inf | string | numeric_string | none | nometric   (evaluate) a bad score
    nan_metric      (evaluate) a good score with a NaN extra metric
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

import popbt
from popbt import Uniform

space = {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}
metric, mode = "Q", "max"
population, intervals = 4, 5
lease_seconds = float(os.environ.get("CHAOS_LEASE", "2"))

_cache: dict = {"mtime": None, "data": {}}


def _control() -> dict:
    path = os.environ.get("CHAOS_CONTROL")
    if not path:
        return {}
    try:
        mtime = os.stat(path).st_mtime_ns
        if mtime != _cache["mtime"]:
            _cache["data"], _cache["mtime"] = json.loads(Path(path).read_text()), mtime
    except (OSError, ValueError):
        pass  # mid-rewrite (the campaign renames a whole file into place): keep the last one
    return _cache["data"]


def _trial() -> tuple[int, int]:
    try:
        t = popbt.current()
        return t.member, t.interval
    except RuntimeError:
        return -1, -1


def _fire(at: str) -> dict | None:
    """The fault to fire now in ``at``, if any (claiming one of its firings atomically)."""
    ctl = _control()
    member, interval = _trial()
    role = os.environ.get("CHAOS_ROLE", "")
    for fault in ctl.get("faults", []):
        if fault["at"] != at or fault.get("role", "") not in ("*", role):
            continue
        if fault.get("member") is not None and fault["member"] != member:
            continue
        if fault.get("interval") is not None and fault["interval"] != interval:
            continue
        times = int(fault.get("times", 1))
        names = (
            [f"fired-{fault['id']}-{n}" for n in range(times)]
            if times > 0
            else [f"fired-{fault['id']}-p{os.getpid()}-{time.monotonic_ns()}"]
        )
        for name in names:
            try:
                fd = os.open(Path(ctl["dir"], name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()} {member} {interval}\n".encode())
            os.fsync(fd)
            os.close(fd)
            return fault
    return None


def _act(fault: dict | None, at: str) -> None:
    """The faults that act the same wherever they fire."""
    if fault is None:
        return
    do = fault["do"]
    if do == "raise":
        raise RuntimeError(f"chaos {fault['id']}: injected in {at}")
    if do == "exit":
        raise SystemExit(3)
    if do == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if do == "hang":
        release = Path(_control()["dir"], f"release-{fault['id']}")
        deadline = time.monotonic() + float(fault.get("max_seconds", 120))
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def build(hparams, device):
    _act(_fire("build"), "build")
    return np.array([0.9, 0.9])


def train(theta, hparams, interval, device):
    h = np.array([hparams["h0"], hparams["h1"]])
    for _ in range(4):
        theta -= 0.1 * h * theta
    _act(_fire("train"), "train")
    if os.environ.get("CHAOS_SICK"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (chaos: a sick worker)")
    time.sleep(float(_control().get("step_seconds", 0.0)))
    return {"norm": float(np.linalg.norm(theta))}


BAD_SCORES = {"nan": float("nan"), "inf": float("-inf"), "string": "high", "numeric_string": "0.5", "none": None}


def evaluate(theta, device):
    fault = _fire("evaluate")
    score = 1.2 - float((theta**2).sum())
    if fault is not None and fault["do"] in BAD_SCORES:
        return BAD_SCORES[fault["do"]]
    if fault is not None and fault["do"] == "nometric":
        return {"accuracy": score}
    if fault is not None and fault["do"] == "nan_metric":
        return {"Q": score, "loss": float("nan")}
    _act(fault, "evaluate")
    return score


def save(theta, path):
    fault = _fire("save")
    buf = io.BytesIO()
    np.save(buf, theta)
    data = buf.getvalue()
    with open(path, "wb") as f:
        if fault is not None and fault["do"] == "oserror_half":
            f.write(data[: len(data) // 2])
            f.flush()
            raise OSError(errno.ENOSPC, f"chaos {fault['id']}: No space left on device (injected)")
        f.write(data)
    if fault is not None and fault["do"] == "cut_after_rename":
        _once_renamed(path, float(fault.get("delay", 0.0)), lambda: _cut(fault))
        return
    if fault is not None and fault["do"] in ("kill_after_rename", "stop_after_rename"):
        sig = signal.SIGKILL if fault["do"] == "kill_after_rename" else signal.SIGSTOP
        _signal_once_renamed(path, float(fault.get("delay", 0.0)), sig)
        return
    _act(fault, "save")


def _signal_once_renamed(tmp: str, delay: float, sig: int) -> None:
    _once_renamed(tmp, delay, lambda: os.kill(os.getpid(), sig))


def _once_renamed(tmp: str, delay: float, then) -> None:
    """popbt writes to DIR/.tmp-FINAL-PID and renames it to DIR/FINAL once save returns: do
    ``then`` right after (the report is about to commit, or committing)."""
    p = Path(tmp)
    final = p.with_name(p.name[len(".tmp-") :].rsplit("-", 1)[0])

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not final.exists() and time.monotonic() < deadline:
            time.sleep(0.0002)
        if delay:
            time.sleep(delay)
        then()

    threading.Thread(target=watch, daemon=True).start()


def _cut(fault: dict) -> None:
    """Take this namespace's end of the link down, and say so."""
    subprocess.run(["ip", "link", "set", "dev", fault["dev"], "down"], capture_output=True, timeout=10)
    Path(_control()["dir"], f"cut-{fault['id']}").write_text(f"{time.time()}\n")


def load(theta, path):
    if os.path.basename(path) in _control().get("foreign", ()):
        Path(_control()["dir"], f"loaded-foreign-{os.path.basename(path)}").write_text(f"{os.getpid()}\n")
    _act(_fire("load"), "load")
    with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def apply(theta, hparams):
    _act(_fire("apply"), "apply")


if _control().get("explore_hook"):

    def explore(hparams, rng: random.Random):
        """A spec's own explore: PBT's perturbation, raising when the campaign says so."""
        _act(_fire("explore"), "explore")
        return {k: min(1.0, max(0.0, v * rng.choice((0.8, 1.2)))) for k, v in hparams.items()}
