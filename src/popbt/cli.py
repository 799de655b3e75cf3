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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from . import launch, live, report
from .checkpoints import CorruptCheckpoint
from .experiment import ConfigError, SpecError
from .history import open_experiment
from .space import SpaceError
from .store import NotFound, StoreError
from .strategy import EXPLOITS, EXPLORES, NONFINITE, StrategyError

if TYPE_CHECKING:
    from .replay import Replay, ReplayStep

USAGE_ERRORS = (
    SpecError,
    ConfigError,
    SpaceError,
    StrategyError,
    StoreError,
    NotFound,
    CorruptCheckpoint,
    FileNotFoundError,
)
DEMO_SPEC = "popbt.examples.digits"


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .py file or an importable module, optionally :attribute")
    p.add_argument("--data", metavar="DIR", help="dataset directory, given to the spec as env POPBT_DATA")


def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage", metavar="URL", help="SQLAlchemy URL (default: env POPBT_STORAGE, else sqlite:///DIR/popbt.db)"
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        help=f"run directory for the database, checkpoints and logs (default: ./{launch.DEFAULT_DIR})",
    )


STRATEGY_ARGS = (
    "top",
    "exploit",
    "ttest_window",
    "ttest_alpha",
    "ready_every",
    "burn_in",
    "explore",
    "factors",
    "resample_probability",
    "nonfinite",
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0.8,1.2; got {text!r}") from None


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="experiment name (default: the spec's name; resumes it if unfinished)")
    p.add_argument("--population", type=int, metavar="N")
    p.add_argument("--intervals", type=int, metavar="N")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (0: only create)")
    p.add_argument("--devices", metavar="LIST", help="e.g. cuda:0,cuda:1 (default: the GPUs, else cpu)")
    p.add_argument("--sync", action="store_true", default=None, help="synchronous generations")
    p.add_argument("--seed", type=int)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quantile", type=float, help="truncation: top/bottom fraction, in (0, 0.5] (default 0.2)")
    group.add_argument("--top", type=int, metavar="N", help="truncation: top/bottom groups of N members")
    p.add_argument("--exploit", choices=EXPLOITS, help="who copies whom (default truncation)")
    p.add_argument("--ttest-window", type=int, metavar="N", help="ttest: scores compared per member (default 4)")
    p.add_argument("--ttest-alpha", type=float, metavar="P", help="ttest: significance level (default 0.05)")
    p.add_argument("--ready-every", type=int, metavar="K", help="exploit only every K intervals (default 1)")
    p.add_argument("--burn-in", type=int, metavar="B", help="no exploit before interval B (default 0)")
    p.add_argument("--explore", choices=EXPLORES, help="how a copy's hyperparameters change (default perturb)")
    p.add_argument("--factors", type=_floats, metavar="LIST", help="perturb factors (default 0.8,1.2)")
    p.add_argument(
        "--resample-probability",
        type=float,
        metavar="P",
        help="perturb: resample a value with probability P (default 0.25)",
    )
    p.add_argument(
        "--nonfinite",
        choices=NONFINITE,
        help="a NaN or infinite score: 'worst' (the default: the member copies a top member at once) "
        "or 'fail' (a failed attempt, retried)",
    )
    p.add_argument("--search", choices=("pbt", "random"), help="random: no exploit, no explore")
    p.add_argument(
        "--checkpoints",
        metavar="DIR|db",
        help="where checkpoints live: a directory every worker reaches (default DIR/checkpoints), "
        "or 'db' to keep them in the database",
    )
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
    p.add_argument(
        "--watch",
        action="store_true",
        help="live view (progress, workers, exploits) until the experiment finishes; Ctrl-C leaves",
    )
    _storage_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("best", help="show the best member and its hyperparameter schedule")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _storage_args(p)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("plot", help="draw PNG figures: scores, hyperparameters, schedule, lineage")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: DIR/plots/NAME)")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME",
        help="instead, draw compare.png: best score so far of two or more experiments",
    )
    _storage_args(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write the history as CSV or JSON (one record per member and interval)")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", metavar="FILE", help="write to FILE (default: stdout)")
    _storage_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("replay", help="train one fresh model on the best (or a member's) hyperparameter schedule")
    _spec_args(p)
    p.add_argument("--experiment", default="latest")
    p.add_argument("--member", type=int, metavar="M", help="replay this member's schedule (default: the best)")
    p.add_argument("--device", default="cpu", help="e.g. cuda:0 (default: cpu)")
    _storage_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("dashboard", help="serve live, read-only web pages of the experiments")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 picks a free one and prints it)")
    _storage_args(p)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="PBT on scikit-learn's digits: population 8, 2 workers")
    p.add_argument("--workers", type=int, default=2)
    _storage_args(p)
    p.set_defaults(func=cmd_demo)
    return top


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    summary = launch.run(
        args.spec,
        name=args.name,
        population=args.population,
        intervals=args.intervals,
        workers=args.workers,
        devices=args.devices,
        sync=args.sync,
        seed=args.seed,
        quantile=args.quantile,
        search=args.search,
        storage=args.storage,
        dir=args.dir,
        checkpoints=args.checkpoints,
        console=console,
        **{k: getattr(args, k) for k in STRATEGY_ARGS},
    )
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
    launch.work(
        args.spec,
        experiment=args.experiment,
        device=args.device,
        storage=args.storage,
        dir=args.dir,
        threads=args.threads,
    )
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    items = report.experiments(args.storage, args.dir)
    if not items:
        console.print("no experiments yet")
    else:
        console.print(report.experiments_table(items))
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    if args.watch:
        try:
            watch(args, console)
        except KeyboardInterrupt:
            return 0
    st = report.status(args.experiment, args.storage, args.dir)
    console.print(report.status_table(st))
    for ev in st.events:
        console.print(
            f"  {ev.kind}: member {ev.member} interval {ev.interval}: {ev.message}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )  # one event, one line, even in a log
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


def watch(args: argparse.Namespace, console: Console) -> None:
    """The live view of ``popbt run``, for an experiment trained by workers started elsewhere."""
    with open_experiment(args.experiment, args.storage, args.dir) as (store, exp):
        live.watch(store, exp, lambda: True, console)


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    try:
        from .plots import plot
    except ImportError as e:
        raise ConfigError(f"popbt plot needs matplotlib ({e}); install it with: pip install matplotlib") from None
    paths = plot(args.experiment, out=args.out, storage=args.storage, dir=args.dir, compare=args.compare)
    for path in paths:
        console.print(str(path), highlight=False, soft_wrap=True)
    return 0


def cmd_dashboard(args: argparse.Namespace, console: Console) -> int:
    from .dashboard import serve

    serve(args.storage, args.dir, host=args.host, port=args.port)  # until Ctrl-C
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from .export import export

    text = export(args.experiment, args.format, out=args.out, storage=args.storage, dir=args.dir)
    if args.out is None:
        sys.stdout.write(text)
    else:
        console.print(f"wrote {args.out}", highlight=False, soft_wrap=True)
    return 0


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    from .replay import replay

    with console.status("replaying the first interval") as spinner:

        def show(step: ReplayStep) -> None:
            spinner.update(
                f"replayed interval {step.interval}: {step.replayed:.6g} (original {report.fmt(step.original)})"
            )

        done = replay(
            args.spec,
            args.experiment,
            member=args.member,
            device=args.device,
            storage=args.storage,
            dir=args.dir,
            on_step=show,
        )
    console.print(replay_table(done))
    original = "none" if done.original is None else f"{done.original:.6g}"
    console.print(
        f"replayed member {done.member} of {done.experiment}: {done.metric} {done.score:.6g} (original {original})",
        highlight=False,
    )
    console.print(f"weights: {done.weights}", highlight=False, soft_wrap=True)
    return 0


def replay_table(done: Replay) -> Table:
    names = list(done.steps[0].hparams) if done.steps else []
    table = Table(title="replay: one model trained from scratch on the schedule, no weights copied")
    for col in ("interval", "trained as member", *names, f"original {done.metric}", f"replayed {done.metric}"):
        table.add_column(col, justify="right")
    for s in done.steps:
        table.add_row(
            str(s.interval),
            str(s.member),
            *(report.fmt(s.hparams[n]) for n in names),
            report.fmt(s.original),
            report.fmt(s.replayed),
        )
    return table


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
