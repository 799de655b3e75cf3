"""The ``popbt`` command: argparse subcommands that call the Python API.

Every expected failure (bad spec, bad URL, unknown experiment, invalid domain) is one line
on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Sequence

from rich.console import Console

from . import launch, report
from .checkpoints import CorruptCheckpoint
from .experiment import ConfigError, SpecError
from .space import SpaceError
from .store import NotFound, StoreError
from .strategy import StrategyError

USAGE_ERRORS = (SpecError, ConfigError, SpaceError, StrategyError, StoreError, NotFound,
                CorruptCheckpoint, FileNotFoundError)
DEMO_SPEC = "popbt.examples.digits"


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .py file or an importable module, optionally :attribute")
    p.add_argument("--data", metavar="DIR", help="dataset directory, given to the spec as env POPBT_DATA")


def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL (default: env POPBT_STORAGE, else sqlite:///DIR/popbt.db)")
    p.add_argument("--dir", metavar="DIR", help="run directory for the database, checkpoints and logs "
                   f"(default: ./{launch.DEFAULT_DIR})")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="experiment name (default: the spec's name; resumes it if unfinished)")
    p.add_argument("--population", type=int, metavar="N")
    p.add_argument("--intervals", type=int, metavar="N")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (0: only create)")
    p.add_argument("--devices", metavar="LIST", help="e.g. cuda:0,cuda:1 (default: the GPUs, else cpu)")
    p.add_argument("--sync", action="store_true", default=None, help="synchronous generations")
    p.add_argument("--seed", type=int)
    p.add_argument("--quantile", type=float, help="truncation fraction, in (0, 0.5] (default 0.2)")
    p.add_argument("--search", choices=("pbt", "random"), help="random: no exploit, no explore")
    p.add_argument("--checkpoints", metavar="DIR|db",
                   help="where checkpoints live: a directory every worker reaches (default DIR/checkpoints), "
                        "or 'db' to keep them in the database")
    _storage_args(p)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="popbt", description="Population Based Training on a SQL task queue.")
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="create or resume an experiment and train it")
    _spec_args(p)
    _run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="join an experiment and train its tasks")
    _spec_args(p)
    p.add_argument("--experiment", default="latest", help="name, or 'latest' (default)")
    p.add_argument("--device", default="cpu", help="e.g. cuda:2 (default: cpu)")
    p.add_argument("--threads", type=int, help="torch threads for this worker")
    _storage_args(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("list", help="list experiments")
    _storage_args(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="show an experiment's population")
    p.add_argument("--experiment", default="latest")
    _storage_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("best", help="show the best member and its hyperparameter schedule")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _storage_args(p)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("demo", help="PBT on scikit-learn's digits: population 8, 2 workers")
    p.add_argument("--workers", type=int, default=2)
    _storage_args(p)
    p.set_defaults(func=cmd_demo)
    return top


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    summary = launch.run(args.spec, name=args.name, population=args.population, intervals=args.intervals,
                         workers=args.workers, devices=args.devices, sync=args.sync, seed=args.seed,
                         quantile=args.quantile, search=args.search, storage=args.storage, dir=args.dir,
                         checkpoints=args.checkpoints, console=console)
    return _finish(console, summary, args)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    summary = launch.run(DEMO_SPEC, workers=args.workers, storage=args.storage, dir=args.dir, console=console)
    return _finish(console, summary, args, hint=True)


def _finish(console: Console, summary: launch.RunSummary, args: argparse.Namespace, hint: bool = False) -> int:
    data = report.best(summary.experiment, storage=summary.storage, dir=args.dir)
    if data is not None and (summary.finished or args.workers != 0):
        report.print_best(console, data, hint=hint)
    return 0


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    launch.work(args.spec, experiment=args.experiment, device=args.device, storage=args.storage,
                dir=args.dir, threads=args.threads)
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    items = report.experiments(args.storage, args.dir)
    if not items:
        console.print("no experiments yet")
    else:
        console.print(report.experiments_table(items))
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    st = report.status(args.experiment, args.storage, args.dir)
    console.print(report.status_table(st))
    for ev in st.events:
        console.print(f"  {ev.kind}: member {ev.member} interval {ev.interval}: {ev.message}", highlight=False)
    return 0


def cmd_best(args: argparse.Namespace, console: Console) -> int:
    data = report.best(args.experiment, args.storage, args.dir)
    if data is None:
        raise NotFound(f"experiment {args.experiment!r} has no results yet")
    if args.json:
        print(json.dumps(data))
    else:
        report.print_best(console, data)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    console = Console()
    if getattr(args, "data", None):
        os.environ["POPBT_DATA"] = os.path.abspath(args.data)  # local workers inherit it
    func: Callable[[argparse.Namespace, Console], int] = args.func
    try:
        return func(args, console)
    except KeyboardInterrupt:
        return 130
    except USAGE_ERRORS as e:
        if args.debug:
            raise
        print(f"popbt: error: {_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(f"popbt: error: {type(e).__name__}: {_message(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _message(e: BaseException) -> str:
    text = str(e.args[0] if isinstance(e, (KeyError, NotFound)) and e.args else e).strip()
    return text.splitlines()[0] if text else type(e).__name__
