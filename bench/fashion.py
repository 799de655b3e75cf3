"""PBT against random search on Fashion-MNIST, with examples/mnist.py (the original tool's
ConvNet): does PBT's best model generalise better for the same compute?

Each seed runs both searches with the same population, intervals and initial draw; the best
member's weights are scored on the t10k test set, which PBT never sees. When ``popbt.replay``
exists, the best schedule is also replayed from scratch (no weights copied) and scored.
Run: .venv/bin/python bench/fashion.py [--quick] [--population N] [--intervals N] [--limit N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import common
from common import Skip, log, median, table
from rich.console import Console

import popbt

SPEC = "popbt.examples.mnist"
REPLAY_ERRORS: list[str] = []


@dataclass(frozen=True)
class Outcome:
    seed: int
    search: str
    held_out: float  # the best member's score: accuracy on 20% of the training images
    test: float  # the same weights on the t10k test set
    wall: float
    replay_test: float | None  # the best schedule replayed from scratch, on t10k
    replay_wall: float | None


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--population", type=int, help="default 15 (--quick: 4)")
    p.add_argument("--intervals", type=int, help="half epochs, default 20 (--quick: 4)")
    p.add_argument("--limit", type=int, help="training images used (POPBT_MNIST_LIMIT), default all 60000 "
                   "(--quick: 6000)")
    p.add_argument("--seeds", type=int, help="seeds per search, default 3 (--quick: 1)")
    p.add_argument("--workers", type=int, help="worker processes (default: popbt's, one per GPU or 2 on CPU)")
    p.add_argument("--devices", help="e.g. cuda:0,cuda:1 (default: the GPUs present, else cpu)")
    p.add_argument("--data", help="directory of the idx files (default: Debian's fashion-mnist)")
    p.add_argument("--no-replay", action="store_true", help="skip replaying the best schedule")
    args = p.parse_args(argv)
    quick = args.quick
    args.population = args.population or (4 if quick else 15)
    args.intervals = args.intervals or (4 if quick else 20)
    args.limit = args.limit if args.limit is not None else (6000 if quick else 0)
    args.seeds = args.seeds or (1 if quick else 3)
    return args


def check_data() -> None:
    """Skip, with the reason, when the Fashion-MNIST files are not there."""
    from popbt.examples import mnist

    try:
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            mnist.find_idx(mnist.data_dir(), name)
    except FileNotFoundError as e:
        raise Skip(str(e)) from None


def test_accuracy(weights: str, device: str) -> float:
    """Load a checkpoint's model weights into a fresh ConvNet and score it on t10k."""
    import torch

    from popbt.examples import mnist

    model = mnist.ConvNet().to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True)["model"])
    return mnist.test_accuracy(model, device)


def eval_device(devices: str | None) -> str:
    if devices:
        return devices.split(",")[0].strip()
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def run_search(args: argparse.Namespace, search: str, seed: int, run_dir: str) -> Outcome:
    """One experiment through popbt.run, then its best model on the test set."""
    name = f"fashion-{search}-s{seed}"
    url = f"sqlite:///{run_dir}/popbt.db"
    log(f"fashion: {search} seed {seed}: population {args.population}, {args.intervals} intervals")
    start = time.perf_counter()
    summary = popbt.run(SPEC, name=name, population=args.population, intervals=args.intervals,
                        workers=args.workers, devices=args.devices, seed=seed, search=search,
                        storage=url, dir=run_dir, console=Console(file=io.StringIO()))
    wall = time.perf_counter() - start
    if not summary.finished or summary.best is None or summary.best.weights is None:
        raise RuntimeError(f"experiment {name} did not finish; see {run_dir}/logs")
    device = eval_device(args.devices)
    test = test_accuracy(summary.best.weights, device)
    replay_test = replay_wall = None
    if not args.no_replay and hasattr(popbt, "replay"):
        start = time.perf_counter()
        try:
            replayed = popbt.replay(SPEC, name, device=device, storage=url, dir=run_dir)
        except Exception as e:  # replay is optional: report why it failed, keep the rest
            REPLAY_ERRORS.append(f"{name}: {type(e).__name__}: {e}")
        else:
            replay_wall = time.perf_counter() - start
            replay_test = test_accuracy(replayed.weights, device)
    log(f"fashion: {search} seed {seed}: test accuracy {test:.4f}, {wall:.0f} s")
    return Outcome(seed, search, summary.best.score, test, wall, replay_test, replay_wall)


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary_rows(outcomes: list[Outcome]) -> list[list[object]]:
    rows = []
    for search in ("pbt", "random"):
        mine = [o for o in outcomes if o.search == search]
        replays = [o.replay_test for o in mine if o.replay_test is not None]
        rows.append([f"**{search}** (median of {len(mine)})", f"{median([o.held_out for o in mine]):.4f}",
                     f"{median([o.test for o in mine]):.4f}", f"{median([o.wall for o in mine]):.0f}",
                     f"{median(replays):.4f}" if replays else "n/a"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.data:
        os.environ["POPBT_DATA"] = args.data
    if args.limit:
        os.environ["POPBT_MNIST_LIMIT"] = str(args.limit)  # the worker processes inherit it
    else:
        os.environ.pop("POPBT_MNIST_LIMIT", None)
    print(common.heading("Fashion-MNIST: PBT against random search"))
    try:
        check_data()
    except Skip as e:
        print(f"Skipped: {e}\n")
        return 0
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="popbt-fashion-") as run_dir:
        for seed in range(args.seeds):
            for search in ("pbt", "random"):
                outcomes.append(run_search(args, search, seed, run_dir))
    images = f"the first {args.limit:,}" if args.limit else "all 60,000"
    size = "full experiment" if (args.population, args.intervals, args.limit) == (15, 20, 0) else \
        "**reduced size, not the full experiment** (15 members, 20 intervals, all images)"
    print(f"`popbt.examples.mnist` on Fashion-MNIST. Size run: population {args.population}, "
          f"{args.intervals} intervals (half epochs), {images} training images (20% held out for the "
          f"score), {args.seeds} seed{'s' if args.seeds > 1 else ''} per search, workers: "
          f"{args.workers or 'popbt default'}, devices: {args.devices or 'auto'} — {size}. *pbt*: `search=\"pbt\"`; *random*: `--search random` "
          f"(the same initial draw, no exploit, no explore). *Test*: the best member's weights on the "
          f"10,000 t10k images. *Replay*: `popbt.replay` of the best schedule from scratch, on t10k"
          f"{'' if hasattr(popbt, 'replay') and not args.no_replay else ' (not run)'}.\n")
    rows = [[f"{o.search} seed {o.seed}", f"{o.held_out:.4f}", f"{o.test:.4f}", f"{o.wall:.0f}",
             fmt(o.replay_test, ".4f")] for o in outcomes]
    print(table(["run", "best held-out accuracy", "test accuracy", "wall s", "replayed schedule, test accuracy"],
                rows + summary_rows(outcomes)))
    for error in REPLAY_ERRORS:
        print(f"\n- replay failed for {error}")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
