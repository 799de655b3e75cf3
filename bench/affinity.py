"""What a worker saves by going on with the state it holds: a ~100 MB model, one worker.

``bench/specs/big.py`` (one 5000 x 5000 linear layer: 100 MB of float32 weights, SGD),
population 2, 6 intervals, random search (so every member's next interval starts from its own
checkpoint), one ``Worker`` in this process. With affinity the worker claims the member it just
saved and trains on the state in memory; without (``reuse_state = False``) every interval
rebuilds the model and reloads its checkpoint (verifying its sha256 first). Compared: time
outside train() per interval (wall time of the run minus train's own time, per interval). The
checkpoint is written and fsync'd in both cases. sqlite, local disk.
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
from popbt.spec import load_spec
from popbt.store import open_store
from popbt.worker import Worker

BIG = str(SPECS / "big.py")
TARGET = 3.0


def one_run(reuse: bool, seed: int) -> tuple[float, int]:
    """ms outside train() per interval, and how many intervals reused the state."""
    os.environ["POPBT_BENCH_REUSE"] = "1" if reuse else "0"
    with common.database("sqlite") as url, tempfile.TemporaryDirectory(prefix="popbt-affinity-") as tmp:
        spec = load_spec(BIG)
        store = open_store(url)
        try:
            exp = store.create_experiment(spec.config("big", seed=seed), tmp)
            worker = Worker(store, exp, spec, name="bench")
            start = time.perf_counter()
            worker.run()
            wall = time.perf_counter() - start
            rows = [r for r in store.history(exp.id) if r.state == "done"]
        finally:
            store.close()
    user = sum(r.metrics["user_seconds"] for r in rows)
    return (wall - user) / len(rows) * 1000, worker.reused


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        importlib.import_module("torch")
    except ImportError:
        print("### Affinity\n\nSkipped: torch is not installed.\n")
        return 0
    reps = 1 if args.quick else 3
    runs: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    for rep in range(reps):
        for reuse in (True, False) if rep % 2 == 0 else (False, True):
            runs[reuse].append(one_run(reuse, seed=rep))
            log(f"affinity: reuse={reuse} rep {rep}: {runs[reuse][-1][0]:.0f} ms outside train per interval")
    on, off = ([r[0] for r in runs[flag]] for flag in (True, False))
    ratio = median(off) / median(on)
    rows = [
        ["kept in memory (affinity)", f"{median(on):.0f}", spread(on, ".0f"), str(runs[True][0][1])],
        ["rebuilt and reloaded", f"{median(off):.0f}", spread(off, ".0f"), "0"],
    ]
    met = "met" if ratio >= TARGET else "missed"
    text = [
        "### Affinity: a member trained on in memory\n",
        f"Reproduce: `{common.command(argv)}`\n",
        __doc__.split("\n\n", 1)[1].rsplit("Run:", 1)[0].strip() + f" Median of {reps} repetitions.\n",
        table(
            ["next interval of the same member", "ms outside train() per interval", "range", "intervals reused"], rows
        ),
        f"\nWithout affinity / with: {ratio:.1f}×, target ≥ {TARGET:g}×: **{met}**.",
    ]
    print("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
