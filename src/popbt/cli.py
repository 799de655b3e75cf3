"""The ``popbt`` command: argparse subcommands that call the Python API.

Every error popbt raises on purpose is one line on stderr and the exit status its class
names (``popbt.errors``): 2 for bad input, with nothing written; a failed run adds what made
it fail (the first error with its traceback). ``--debug``, anywhere on the line, shows
popbt's own traceback instead. The options of ``popbt run`` are derived from the experiment's
settings (``popbt.config``) and the run's options (``popbt.launch.RUN_OPTIONS``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import Field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from . import launch, live, report
from .config import SETTINGS
from .errors import ConfigError, NotFound, PopbtError, UsageError, exit_code
from .history import open_experiment
from .store.engine import secrets_of

if TYPE_CHECKING:
    from .replay import Replay, ReplayStep

DEMO_SPEC = "popbt.examples.digits"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and exit status 2) instead of the usage text."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _common(p: argparse.ArgumentParser, storage: bool = True) -> None:
    # SUPPRESS: a subcommand's --debug does not reset the one given before the subcommand
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    if storage:
        for option in launch.RUN_OPTIONS:
            if option.name in ("storage", "dir"):
                _add_option(p, option)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a .py file or an importable module, optionally :attribute")
    p.add_argument("--data", metavar="DIR", help="dataset directory, given to the spec as env POPBT_DATA")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_option(p: Any, option: launch.Option) -> None:
    if option.parse is bool:
        p.add_argument(_flag(option.name), action="store_true", default=None, help=option.help)
    else:
        p.add_argument(_flag(option.name), type=_parser_of(option.parse), metavar=option.metavar, help=option.help)


def _add_setting(p: Any, f: Field) -> None:
    meta = f.metadata["setting"]
    default = "" if f.default in (None, ()) or f.name == "seed" else f" (default {_shown(f.default)})"
    if meta["parse"] is bool:
        p.add_argument(_flag(f.name), action="store_true", default=None, help=meta["help"] + default)
        return
    p.add_argument(
        _flag(f.name),
        type=_parser_of(meta["parse"]),
        choices=meta["choices"],
        metavar=meta["metavar"],
        help=meta["help"] + default,
    )


def _parser_of(parse: Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    """argparse reports a ValueError of ``parse`` as an invalid value; keep its own words."""
    if parse is None or parse in (int, float):
        return parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _run_args(p: argparse.ArgumentParser) -> None:
    groups = {"run": p.add_argument_group("experiment"), "strategy": p.add_argument_group("exploit and explore")}
    for f in SETTINGS:
        _add_setting(groups[f.metadata["setting"]["group"]], f)
    options = p.add_argument_group("this run")
    for option in launch.RUN_OPTIONS:
        if option.name not in ("storage", "dir"):
            _add_option(options, option)
    _common(p)


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="popbt", description="Population Based Training on a SQL task queue.")
    top.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("run", help="create or resume an experiment and train it")
    _spec_args(p)
    _run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="join an experiment and train its tasks")
    _spec_args(p)
    p.add_argument("--experiment", default="latest", help="name, or 'latest' (default)")
    p.add_argument("--device", default="cpu", help="e.g. cuda:2 (default: cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads for this worker")
    p.add_argument(
        "--allow-spec-change", action="store_true", help="join although the spec's code differs from the experiment's"
    )
    _common(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("list", help="list experiments")
    _common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="show an experiment's population")
    p.add_argument("--experiment", default="latest")
    p.add_argument(
        "--watch",
        action="store_true",
        help="live view (progress, workers, exploits) until the experiment finishes; Ctrl-C leaves",
    )
    p.add_argument("--errors", action="store_true", help="every failure, with the traceback of the user's code")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("best", help="show the best final model and its hyperparameter schedule")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--seen",
        action="store_true",
        help="the best score ever seen instead (its weights exist if the run had --keep-best)",
    )
    p.add_argument(
        "--save-weights", metavar="FILE", help="also write its checkpoint to FILE (from files or the database)"
    )
    _common(p)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("plot", help="draw PNG figures: scores, hyperparameters, schedule, lineage")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: DIR/plots/NAME)")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME",
        help="instead, draw compare.png: the best score at each interval of two or more experiments",
    )
    _common(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write the history as CSV or JSON (one record per member and interval)")
    p.add_argument("--experiment", default="latest")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", metavar="FILE", help="write to FILE (default: stdout)")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("replay", help="train one fresh model on the best (or a member's) hyperparameter schedule")
    _spec_args(p)
    p.add_argument("--experiment", default="latest")
    p.add_argument("--member", type=int, metavar="M", help="replay this member's schedule (default: the best)")
    p.add_argument("--device", default="cpu", help="e.g. cuda:0 (default: cpu)")
    _common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("dashboard", help="serve live, read-only web pages of the experiments")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 picks a free one and prints it)")
    _common(p)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="PBT on scikit-learn's digits: population 8, 2 workers")
    p.add_argument("--workers", type=int, default=2)
    _common(p)
    p.set_defaults(func=cmd_demo)
    return top


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    names = (*launch.OPTION_NAMES, *(f.name for f in SETTINGS))
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if "quantile" in options and "top" in options:
        raise UsageError("--quantile and --top are two ways to size the same groups: give one (see popbt run --help)")
    summary = launch.run(args.spec, console=console, **options)
    return _finish(console, summary, args)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    summary = launch.run(DEMO_SPEC, workers=args.workers, storage=args.storage, dir=args.dir, console=console)
    return _finish(console, summary, args, hint=True)


def _finish(console: Console, summary: launch.RunSummary, args: argparse.Namespace, hint: bool = False) -> int:
    data = report.best(summary.experiment, storage=summary.storage, dir=args.dir)
    if data is not None and (summary.finished or args.workers != 0):
        report.print_best(console, data, hint=hint)
    for line in summary.stopped_workers:
        console.print(f"popbt: note: {line}", highlight=False, markup=False, soft_wrap=True)
    if summary.given_up:
        members = ", ".join(map(str, summary.given_up))
        console.print(
            f"popbt: note: finished without member{'s' if len(summary.given_up) > 1 else ''} {members}, "
            "given up after repeated failures (popbt status --errors shows why)",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    launch.work(
        args.spec,
        experiment=args.experiment,
        device=args.device,
        storage=args.storage,
        dir=args.dir,
        threads=args.threads,
        allow_spec_change=args.allow_spec_change,
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
    if args.json:
        data = st.to_json()
        if args.errors:
            data["errors"] = [
                {
                    "kind": e.kind,
                    "member": e.member,
                    "interval": e.interval,
                    "message": e.message,
                    "traceback": e.detail,
                }
                for e in report.errors(args.experiment, args.storage, args.dir)
            ]
        print(json.dumps(data))
        return 0
    console.print(report.status_table(st))
    for ev in st.events:
        console.print(
            f"  {ev.kind}: member {ev.member} interval {ev.interval}: {ev.message}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )  # one event, one line, even in a log
    if args.errors:
        report.print_errors(console, report.errors(args.experiment, args.storage, args.dir))
    return 0


def cmd_best(args: argparse.Namespace, console: Console) -> int:
    data = report.best(args.experiment, args.storage, args.dir, seen=args.seen)
    if data is None:
        raise NotFound(f"experiment {args.experiment!r} has no results yet")
    if args.save_weights:
        data["saved"] = str(report.save_weights(args.save_weights, args.experiment, args.storage, args.dir, args.seen))
    if args.json:
        print(json.dumps(data))
    else:
        report.print_best(console, data)
        if data.get("saved"):
            console.print(f"saved to {data['saved']}", highlight=False, soft_wrap=True)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, even where parsing fails
    secrets = secrets_of(_storage_in(argv) or os.environ.get("POPBT_STORAGE"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact(secrets))
    console = make_console()
    try:
        args = parser().parse_args(argv)
        if getattr(args, "data", None):
            os.environ["POPBT_DATA"] = os.path.abspath(args.data)  # local workers inherit it
        func: Callable[[argparse.Namespace, Console], int] = args.func
        return func(args, console)
    except KeyboardInterrupt as e:
        return exit_code(e)
    except PopbtError as e:
        if debug:
            raise
        print(_redact(f"popbt: error: {_message(e)}", secrets), file=sys.stderr)
        if e.detail:
            print(_redact(e.detail, secrets), file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if debug:
            raise
        text = f"popbt: error: {type(e).__name__}: {_message(e)} (--debug shows the traceback)"
        print(_redact(text, secrets), file=sys.stderr)
        return exit_code(e)


def make_console() -> Console:
    """Rich on a terminal; when output goes to a file or a pipe, never wrapped or cut at 80
    columns (a path, a table row or a score stays on one line)."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True)


def _storage_in(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--storage="):
            return arg.split("=", 1)[1]
    return None


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class _Redact(logging.Filter):
    """Passwords of the storage URL never reach a log, whatever printed them."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = _redact(record.getMessage(), self.secrets), None
        return True


def _message(e: BaseException) -> str:
    text = str(e.args[0] if isinstance(e, (KeyError, NotFound)) and e.args else e).strip()
    return text.splitlines()[0] if text else type(e).__name__
