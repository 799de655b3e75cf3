"""What a worker saves by going on with the state it holds: a ~100 MB model, one worker.

``bench/specs/big.py`` (one 5000 x 5000 linear layer: 100 MB of float32 weights, SGD),
population 2, 6 intervals, random search (so every member's next interval starts from its own
checkpoint), one ``Worker`` in this process. With affinity the worker claims the member it just
saved and trains on the state in memory; without (``reuse_state = False``) every interval
rebuilds the model and reloads its checkpoint (verifying its sha256 first). Compared: time
outside train() per interval (wall time of the run minus train's own time, per interval). The
checkpoint is written and fsync'd in both cases. sqlite, local disk. The process is warmed by one
build first (torch imports its compiler lazily on the first optimizer: a one-off second).
Run: .venv/bin/python bench/affinity.py [--quick]
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time

import common
from common import SPECS, log, median, spread, table
from popbt import checkpoints
from popbt.spec import load_spec
from popbt.store import open_store
from popbt.worker import Worker

BIG = str(SPECS / "big.py")
TARGET = 3.0


class TimedWrites:
    """Times ``CheckpointDir.write`` (the user's save, fsync, sha256, rename): the part of the
    time outside train() that affinity cannot skip, since other members may exploit the file."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._write = checkpoints.CheckpointDir.write

    def __enter__(self) -> TimedWrites:
        def timed(this, *args, **kwargs):
            start = time.perf_counter()
            try:
                return self._write(this, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        checkpoints.CheckpointDir.write = timed
        return self

    def __exit__(self, *exc) -> None:
        checkpoints.CheckpointDir.write = self._write


def one_run(reuse: bool, seed: int) -> tuple[float, int, float]:
    """ms outside train() per interval, how many intervals reused the state, and ms per
    interval spent writing the checkpoint."""
    os.environ["POPBT_BENCH_REUSE"] = "1" if reuse else "0"
    with common.database("sqlite") as url, tempfile.TemporaryDirectory(prefix="popbt-affinity-") as tmp:
        spec = load_spec(BIG)
        store = open_store(url)
        try:
            exp = store.create_experiment(spec.config("big", seed=seed), tmp)
            spec.build({"lr": 1e-3}, "cpu")  # warm: torch's one-off lazy imports are not per interval
            worker = Worker(store, exp, spec, name="bench")
            with TimedWrites() as writes:
                start = time.perf_counter()
                worker.run()
                wall = time.perf_counter() - start
            rows = [r for r in store.history(exp.id) if r.state == "done"]
        finally:
            store.close()
    user = sum(r.metrics["user_seconds"] for r in rows)
    return (wall - user) / len(rows) * 1000, worker.reused, writes.seconds / len(rows) * 1000


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        importlib.import_module("torch")
    except ImportError:
        print("### Affinity\n\nSkipped: torch is not installed.\n")
        return 0
    reps = 1 if args.quick else 3
    runs: dict[bool, list[tuple[float, int, float]]] = {True: [], False: []}
    for rep in range(reps):
        for reuse in (True, False) if rep % 2 == 0 else (False, True):
            runs[reuse].append(one_run(reuse, seed=rep))
            log(f"affinity: reuse={reuse} rep {rep}: {runs[reuse][-1][0]:.0f} ms outside train per interval")
    on, off = ([r[0] for r in runs[flag]] for flag in (True, False))
    write_on, write_off = (median([r[2] for r in runs[flag]]) for flag in (True, False))
    ratio = median(off) / median(on)
    rows = [
        ["kept in memory (affinity)", f"{median(on):.0f}", spread(on, ".0f"), f"{write_on:.0f}", str(runs[True][0][1])],
        ["rebuilt and reloaded", f"{median(off):.0f}", spread(off, ".0f"), f"{write_off:.0f}", "0"],
    ]
    met = "met" if ratio >= TARGET else "missed"
    floor = median(off) / write_on
    why = (
        ""
        if ratio >= TARGET
        else f" Writing the checkpoint, which every interval still does so that other members can exploit "
        f"it, costs {write_on:.0f} ms: even with nothing else outside train() the ratio could not pass "
        f"{floor:.1f}× without giving up a durable checkpoint before the report."
    )
    text = [
        "### Affinity: a member trained on in memory\n",
        f"Reproduce: `{common.command(argv)}`\n",
        __doc__.split("\n\n", 1)[1].rsplit("Run:", 1)[0].strip() + f" Median of {reps} repetitions.\n",
        table(
            [
                "next interval of the same member",
                "ms outside train() per interval",
                "range",
                "of which writing the checkpoint",
                "intervals reused",
            ],
            rows,
        ),
        f"\nWithout affinity / with: {ratio:.1f}×, target ≥ {TARGET:g}×: **{met}**.{why}",
    ]
    print("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
