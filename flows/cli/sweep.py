"""``digitflow sweep``: the classifier over a grid, random samples or an Optuna search, trials in parallel
on threads, Dask or Ray (the flow ``digitflow-sweep``, flows/sweep.py)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from digitflow.config.options import SWEEP_FIXED_OPTIONS, SWEEP_OPTIONS
from digitflow.config.sweep_space import check_direction, default_direction, grid, parse_space, workers_and_threads
from digitflow.errors import DigitflowError
from flows.cli.checks import check_before_start, exit_unless_tracking_server_answers
from flows.cli.options import EXIT_BAD_INPUT, add_options, flow_params, run_flow

NAME = "sweep"
EPILOG = """\
what to sweep (any option of digitflow run, by its name with _ or -; lr, opt.NAME, sched.NAME):
  --grid lr=0.02,0.05 batch_size=64,128      every combination of the listed values
  --random 8 --space lr=log:0.005:0.2 epochs=int:2:6 optimizer=SGD,AdamW
  --optuna 20 --space lr=log:0.005:0.2 opt.momentum=0.8:0.99 --metric test/accuracy --direction maximize
  ranges: LOW:HIGH (uniform), log:LOW:HIGH, int:LOW:HIGH, int:log:LOW:HIGH; lists: A,B,C
every other digitflow run option is fixed for all trials (--train, --epochs, --augment, ...).
examples:
  DIGITFLOW_DATA_DIR=../shared/data digitflow sweep --train 'mnist:test[:8000]' --test 'mnist:test[8000:]' \\
      --offline --runner dask --grid lr=0.02,0.05,0.1 epochs=3,6
  digitflow sweep ... --resume             # an interrupted sweep: finished trials are not run again
  digitflow sweep ... --runner dask --dask-address tcp://scheduler:8786
results: one MLflow parent run (comparison table and plots as artifacts), a child run per trial;
  the best trial's model is registered (alias candidate): digitflow promote --run-id <its run>
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow sweep`` and its options."""
    sweep = commands.add_parser(
        NAME,
        help="train and evaluate over a grid, random samples or an Optuna search; trials in parallel",
        description="Run the classifier's training and evaluation for many configurations: one MLflow parent "
        "run, a child run per trial, then the best trial, a comparison table and plots. Trials run in "
        "parallel on threads, a Dask cluster or Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search = sweep.add_argument_group("search")
    how = search.add_mutually_exclusive_group(required=True)
    how.add_argument("--grid", nargs="+", metavar="KEY=A,B", help="a grid: every combination of the listed values")
    how.add_argument("--random", type=int, metavar="N", help="N random samples from --space")
    how.add_argument("--optuna", type=int, metavar="N", help="N trials suggested by Optuna (TPE) from --space")
    add_options(sweep, SWEEP_OPTIONS[:-1])  # the sweep's own options (its experiment comes last)
    where = next(g for g in sweep._action_groups if g.title == "where trials run")
    where.add_argument(
        "--dask-address", metavar="tcp://HOST:PORT", help="an existing Dask scheduler (default: a LocalCluster)"
    )
    where.add_argument("--ray-address", metavar="ADDRESS", help="an existing Ray cluster (default: a local Ray)")
    add_options(sweep, (*SWEEP_FIXED_OPTIONS, SWEEP_OPTIONS[-1]))  # digitflow run's options: fixed for all trials
    return sweep


def sweep_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed options -> keyword arguments of :func:`flows.sweep.sweep`."""
    if args.grid is not None:
        kind, items, trials = "grid", args.grid, None
        if args.space:
            raise DigitflowError("sweep: --space goes with --random or --optuna; --grid lists its own values")
    else:
        kind = "random" if args.random is not None else "optuna"
        trials = args.random if args.random is not None else args.optuna
        items = args.space or []
        if not items:
            raise DigitflowError(f"sweep: --{kind} needs --space KEY=RANGE ... (e.g. --space lr=log:0.005:0.2)")
        if trials < 1:
            raise DigitflowError(f"sweep: --{kind} takes a number of trials >= 1, got {trials}")
    params = flow_params(args, SWEEP_OPTIONS)
    params.update(space=list(items), kind=kind, trials=trials, fixed=flow_params(args, SWEEP_FIXED_OPTIONS))
    return params


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Check every option, then run :func:`flows.sweep.sweep` in this process on the chosen task runner."""
    from digitflow.params.run import build_config  # torch: only once the options parse

    try:
        params = sweep_parameters(args)
        config = build_config(**params["fixed"])
        from flows.sweep import check_runner, check_sweepable, sweepable_keys  # Prefect: only once the options parse

        space = parse_space(params["space"], sweepable_keys())
        check_sweepable(config, space)
        if params["kind"] == "grid":
            grid(space)
        check_direction(params["direction"] or default_direction(params["metric"]))
        data = config.data
        check_before_start(
            experiment=args.experiment,
            output_dir=config.output_dir,
            offline=data.offline,
            data_dir=data.data_dir,
            specs=(data.train, data.test, *data.targets),
        )
        if args.workers is not None and args.workers < 1:
            raise DigitflowError(f"sweep: --workers must be at least 1, got {args.workers}")
        check_runner(args.runner)  # Ray without its extra: one line, before anything starts
    except DigitflowError as exc:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: {exc}\n")
    exit_unless_tracking_server_answers(parser)

    def load() -> Callable[[], Any]:
        from digitflow.training.cpu_share import cpu_cores
        from flows.sweep import sweep, task_runner

        total = len(grid(space)) if params["kind"] == "grid" else int(params["trials"])
        workers, _ = workers_and_threads(cpu_cores(), total, args.workers)
        chosen = task_runner(args.runner, workers, args.dask_address, args.ray_address)
        return functools.partial(sweep.with_options(task_runner=chosen), **params)

    def where() -> str:
        from flows.sweep import PROGRESS

        return f"with {PROGRESS['finished']} of {PROGRESS['total']} trials finished"

    return run_flow(
        argv,
        config.train.epochs,
        load,
        finished="digitflow sweep finished",
        summary_lines=lambda s: s.lines(),
        where=where,
    )
