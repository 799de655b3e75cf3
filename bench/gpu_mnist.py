"""examples/mnist.py on one GPU, with 2 workers sharing it and with 1: wall time and utilisation.

    python bench/gpu_mnist.py --device cuda:0 [--seconds 270] [--data DIR] [--out DIR]

Each configuration runs the original tool's full experiment (population 15, 10 epochs of
two intervals) under a wall-clock cap; a run that hits the cap reports how far it got and
its rate. Utilisation = time inside claimed intervals / (workers x wall time), from the
history's database timestamps. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from popbt import analysis  # noqa: E402
from popbt.store import open_store  # noqa: E402


def run(workers: int, args: argparse.Namespace) -> dict:
    name = f"gpu-w{workers}"
    cmd = [
        sys.executable,
        "-m",
        "popbt",
        "run",
        str(ROOT / "examples" / "mnist.py"),
        "--workers",
        str(workers),
        "--devices",
        args.device,
        "--name",
        name,
        "--seed",
        "1",
        "--dir",
        args.out,
    ]
    if args.data:
        cmd += ["--data", args.data]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    with open(Path(args.out) / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=args.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the workers hand their intervals back
            proc.wait()
            code = "cap"
    wall = time.perf_counter() - start
    return summarize(name, workers, wall, code, args)


def summarize(name: str, workers: int, wall: float, code, args: argparse.Namespace) -> dict:
    store = open_store(f"sqlite:///{Path(args.out).absolute() / 'popbt.db'}")
    exp = store.experiment(name)
    rows = store.history(exp.id)
    store.close()
    done = [r for r in rows if r.state == "done"]
    busy = sum(r.finished_at - r.started_at for r in done)
    span = max(r.finished_at for r in done) - min(r.started_at for r in rows if r.started_at) if done else 0
    best = analysis.best(rows, exp.config)
    return dict(
        workers=workers,
        code=code,
        wall=wall,
        done=len(done),
        total=len(rows) and exp.config.population * exp.config.intervals,
        span=span,
        utilisation=busy / (workers * span) if span else 0.0,
        per_interval=span / len(done) if done else 0.0,
        best=best.score if best else None,
        best_interval=best.interval if best else None,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--seconds", type=float, default=270)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="gpu-runs")
    p.add_argument("--workers", default="2,1")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = [run(int(n), args) for n in args.workers.split(",")]
    try:
        import torch

        card = torch.cuda.get_device_name(0)
    except Exception:
        card = args.device
    print(f"\nexamples/mnist.py (Fashion-MNIST, population 15, 20 intervals) on {card}\n")
    print(
        "| workers on one GPU | intervals done | wall s (process) | s per interval (population) "
        "| utilisation | best held-out accuracy (at interval) | exit |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        best = f"{r['best']:.4f} ({r['best_interval']})" if r["best"] is not None else "-"
        print(
            f"| {r['workers']} | {r['done']}/{r['total']} | {r['wall']:.1f} | {r['per_interval']:.2f} "
            f"| {100 * r['utilisation']:.1f}% | {best} | {r['code']} |"
        )


if __name__ == "__main__":
    main()
