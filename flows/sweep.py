"""The sweep flow ``digitflow-sweep``: the classifier's training and evaluation over many configurations.

Read top to bottom, :func:`sweep` is the table of contents: the search space and the Optuna study
that keeps the trials (so an interrupted sweep resumes), one MLflow parent run, the data prepared
once, the trials as Prefect tasks on the flow's task runner (threads, Dask or Ray:
:func:`task_runner`), then the summary: the best trial, the comparison table, the plots, and the best
trial's model exported and registered, ready for ``digitflow promote``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed

from digitflow.config import RunConfig
from digitflow.config.options import SWEEP_FIXED_OPTIONS, SWEEP_OPTIONS, defaults
from digitflow.config.sweep_space import (
    Dimension,
    check_direction,
    default_direction,
    describe,
    grid,
    parse_space,
    trial_parameters,
    workers_and_threads,
)
from digitflow.errors import ConfigError
from digitflow.params.run import build_config, check_experiment, check_output_dir
from digitflow.training.cpu_share import cpu_cores
from flows.signature import takes_options
from reporting.logs import quiet_expected_errors
from tasks.data import prepare_data
from tasks.export import export_model
from tasks.sweep import (
    PARENT_ATTR,
    PruneSettings,
    TrialResult,
    best_row,
    default_storage,
    distribution,
    finished,
    log_sweep_plots,
    recorded_outcomes,
    reopen_interrupted,
    run_trial,
    sampler,
    tell,
    trials_table,
)
from tasks.train import TrainedModel
from tracking import runlog
from tracking.comparison import render
from tracking.runs import flow_run_tags, tracked_run
from tracking.store import setup_tracking, tracking_uri
from tracking.ui import open_ui_line, run_url, ui_command

RUNNERS = ("threads", "dask", "ray")
PROGRESS = {"finished": 0, "total": 0}  # of the sweep running in this process: for the line Ctrl-C prints
RAY_MISSING = "--runner ray needs prefect-ray and ray, which are an optional extra: pip install -e '.[ray]'"


def sweepable_keys() -> set[str]:
    """Every option of ``digitflow run`` a trial takes: any of them can be swept or fixed."""
    return {option.name for option in SWEEP_FIXED_OPTIONS}


def check_sweepable(base: RunConfig, space: Mapping[str, Any]) -> None:
    """A one-line ConfigError for what a trial cannot train: domain adaptation (a trial trains with
    ``fit``, which has no adaptation step)."""
    if base.adapt.method is not None or {"adapt", "adapt_target", "adapt_options"} & set(space):
        raise ConfigError("sweep: --adapt is not supported in sweeps yet; run the adapted configurations one by one")


def check_runner(runner: str) -> None:
    """A one-line ConfigError for an unknown runner, or Ray when its optional extra is not installed."""
    if runner not in RUNNERS:
        raise ConfigError(f"unknown --runner {runner!r}; runners: {', '.join(RUNNERS)}")
    if runner == "ray":
        try:
            import prefect_ray  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_MISSING) from None


def task_runner(runner: str, workers: int, dask_address: str | None = None, ray_address: str | None = None) -> Any:
    """The Prefect task runner the trials run on: ``threads`` (a thread per trial in this process),
    ``dask`` (prefect-dask: the cluster at ``dask_address``, else a LocalCluster of ``workers``
    single-threaded worker processes) or ``ray`` (prefect-ray: ``ray_address``, else a local Ray)."""
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    check_runner(runner)
    if runner in ("dask", "ray") and not (dask_address or ray_address):
        share_prefect_api()
    if runner == "dask":
        from prefect_dask.task_runners import DaskTaskRunner

        # the cluster's own bookkeeping (workers registering, a worker killed at close) stays out of the log
        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
        )
    if runner == "ray":
        from prefect_ray import RayTaskRunner  # type: ignore[import-not-found, import-untyped, unused-ignore]

        init = {"num_cpus": workers} if not ray_address else {}
        return RayTaskRunner(address=ray_address, init_kwargs=init)
    raise ConfigError(f"unknown --runner {runner!r}; runners: {', '.join(RUNNERS)}")


def share_prefect_api() -> None:
    """Let worker processes this process starts report to its Prefect API: ``PREFECT_API_URL`` in the
    environment they inherit, set to the server in use (a temporary one included). Without it, each
    Dask or Ray worker started a temporary Prefect server of its own (a minute each on a busy machine),
    and the trials' task runs were recorded there, not with the flow run."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        server = SubprocessASGIServer()
        if not server.running:
            server.start()
        url = server.api_url
    os.environ["PREFECT_API_URL"] = url


@dataclass
class SweepSummary:
    """What a sweep did, for the terminal and the Prefect artifact."""

    run_id: str
    experiment_id: str
    study: str
    storage: str
    kind: str
    runner: str
    metric: str
    direction: str
    table: str  # the comparison table, as digitflow compare prints it
    counts: dict[str, int] = field(default_factory=dict)  # complete / pruned / failed
    failed: list[str] = field(default_factory=list)  # "trial 3: lr=5: TrainingDivergedError: ..."
    best: dict[str, Any] | None = None  # trial, values, value, run_id, run_name, figures
    plots: list[str] = field(default_factory=list)
    exported: dict[str, Any] | None = None
    resumed: bool = False
    ran_now: int = 0
    artifact_uri: str = ""
    run_url: str = ""
    ui_command: str = "make ui"
    seconds: float = 0.0

    def lines(self) -> list[str]:
        counts = ", ".join(f"{n} {state}" for state, n in self.counts.items() if n)
        resumed = f" (resumed: {self.ran_now} run now)" if self.resumed else ""
        lines = [
            f"{sum(self.counts.values())} trials{resumed}: {counts}; {self.kind} search on {self.runner}, "
            f"{self.seconds:.0f} s",
        ]
        if self.best:
            figures = ", ".join(f"{k} {v:.4f}" for k, v in self.best["figures"].items())
            lines.append(f"best: trial {self.best['trial']} ({describe(self.best['values'])}): {figures}")
            lines.append(f"  MLflow run {self.best['run_id']} ({self.best['run_name']})")
        else:
            lines.append(f"best: none (no trial completed with a {self.metric})")
        lines += [f"failed: {line}" for line in self.failed]
        if self.exported:
            lines.append(
                f"registered: {self.exported['model_name']} version {self.exported['model_version']} "
                f"(alias {self.exported['alias']}) from the best trial; "
                f"promote it: digitflow promote --run-id {self.best['run_id'] if self.best else ''}"
            )
        lines += ["trials:", *("  " + row for row in self.table.splitlines())]
        lines += [f"plot: {p}" for p in self.plots]
        lines += [
            f"Optuna study: {self.study} in {self.storage} (--resume continues it)",
            f"MLflow run: {self.run_id} (experiment {self.experiment_id}, store {tracking_uri()})",
            f"artifacts: {self.artifact_uri}",
            open_ui_line(self.ui_command, self.run_url),
        ]
        return lines


@flow(name="digitflow-sweep", log_prints=True)
@takes_options(SWEEP_OPTIONS)
def sweep(**options: Any) -> SweepSummary:
    """Train and evaluate the classifier for each configuration of ``space`` (``["lr=0.02,0.05",
    "epochs=3,6"]``: digitflow.config.sweep_space), with every other option from ``fixed`` (keywords of
    ``digitflow run``'s flow, e.g. ``{"train": "mnist:test[:8000]", "offline": True}``).

    ``kind``: ``grid`` (every combination of listed values), ``random`` (``trials`` samples from the
    ranges) or ``optuna`` (``trials`` TPE suggestions, pruned on the per-epoch ``metric`` unless
    ``prune=False``). ``runner`` only labels the summary: the caller sets the task runner
    (:func:`task_runner`, as ``digitflow sweep`` does). ``workers`` trials run at once (default: one
    per core), each with ``cores // workers`` torch threads.
    """
    began = time.perf_counter()
    logger = get_run_logger()
    quiet_expected_errors()
    o = {**defaults(SWEEP_OPTIONS), **options}
    space, kind, trials, metric, direction = o["space"], o["kind"], o["trials"], o["metric"], o["direction"]
    runner, workers, study, storage, resume = o["runner"], o["workers"], o["study"], o["storage"], o["resume"]
    prune, sampler_seed, export_best, experiment = o["prune"], o["sampler_seed"], o["export_best"], o["experiment"]
    fixed = dict(o["fixed"] or {})
    parsed = parse_space(space, sweepable_keys())
    if not parsed:
        raise ConfigError("sweep: nothing to sweep; give --grid KEY=VALUES... or --space KEY=RANGE...")
    direction = check_direction(direction or default_direction(metric))
    points = grid(parsed) if kind == "grid" else []
    total = len(points) if kind == "grid" else int(trials or 0)
    if total < 1:
        raise ConfigError(f"sweep: --{kind} needs a number of trials of at least 1")
    base = build_config(**fixed)  # the fixed options are checked once, before anything starts
    check_sweepable(base, parsed)
    check_experiment(experiment, how_to_change="the experiment parameter")
    check_output_dir(base.output_dir, how_to_change="the output_dir parameter")
    workers, threads = workers_and_threads(cpu_cores(), total, workers)

    experiment_id = setup_tracking(experiment, output_dir=base.output_dir)
    uri = tracking_uri()
    storage = storage or default_storage(uri, base.output_dir)
    study_name = study or default_study_name(kind, space, fixed, metric, direction, total, sampler_seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not resume:
        _delete_study(study_name, storage)
    the_study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize" if direction == "maximize" else "minimize",
        sampler=sampler(kind, sampler_seed),
        load_if_exists=True,
    )
    resumed = bool(the_study.trials)
    parent_id = the_study.user_attrs.get(PARENT_ATTR) if resumed else None
    if parent_id is not None and not _run_exists(parent_id):
        parent_id = None
    # trials an interrupted sweep left running: told what their MLflow run recorded if they finished,
    # else run again
    outcomes = recorded_outcomes(experiment_id, parent_id, metric) if parent_id else {}
    reopened = reopen_interrupted(the_study, outcomes) if resumed else []
    if kind == "grid" and not resumed:
        for point in points:
            the_study.enqueue_trial(point)
    if kind == "grid":
        waiting = optuna.trial.TrialState.WAITING
        to_run = len(the_study.get_trials(deepcopy=False, states=(waiting,)))
    else:
        to_run = max(0, total - sum(finished(t) for t in the_study.trials))

    tags = {**flow_run_tags(), "digitflow.kind": "sweep", "sweep.study": study_name, "sweep.storage": storage}
    if parent_id is not None:
        start: dict[str, Any] = {"run_id": parent_id}
    else:
        start = {"run_name": sweep_run_name(kind, parsed, total, base.data.train), "tags": tags}
    with tracked_run(**start) as parent:
        run_id = parent.info.run_id
        the_study.set_user_attr(PARENT_ATTR, run_id)
        if "run_id" in start:
            runlog.set_tags({"prefect.flow_run_id": tags["prefect.flow_run_id"], "sweep.resumed": "true"})
            _end_stale_children(experiment_id, run_id)
            logger.info(
                "--resume: continues sweep run %s; %d trial(s) finished, %d to run%s",
                run_id,
                sum(finished(t) for t in the_study.trials),
                to_run,
                f" (again: {', '.join(map(str, reopened))}, interrupted)" if reopened else "",
            )
        else:
            runlog.log_params(_flat_params(base))
            runlog.log_params(
                {
                    "sweep.kind": kind,
                    "sweep.trials": total,
                    "sweep.metric": metric,
                    "sweep.direction": direction,
                    "sweep.runner": runner,
                    "sweep.workers": workers,
                    "sweep.threads_per_trial": threads,
                    **{f"sweep.space.{k}": str(d) for k, d in parsed.items()},
                }
            )

        # 1. data: prepared once, for every trial
        data = base.data
        prepared = {
            "train": prepare_data(data.train, data.data_dir, data.cache_dir, data.offline, run_id),
            "test": prepare_data(data.test, data.data_dir, data.cache_dir, data.offline, run_id),
            "targets": [prepare_data(t, data.data_dir, data.cache_dir, data.offline, run_id) for t in data.targets],
        }

        # 2. the trials, `workers` at a time on the task runner; each outcome goes to the study as it comes
        logger.info(
            "%s sweep: %d trial(s) to run, %d at a time on %s, %d torch thread(s) each",
            kind,
            to_run,
            workers,
            runner,
            threads,
        )
        distributions = {k: distribution(d) for k, d in parsed.items()}
        weights_dir = Path(base.output_dir) / "sweeps" / study_name
        prune_on = kind == "optuna" and prune
        in_flight: dict[PrefectFuture[TrialResult], tuple[int, dict[str, Any]]] = {}
        asked = 0
        PROGRESS.update(finished=sum(finished(t) for t in the_study.trials), total=PROGRESS["finished"] + to_run)
        while asked < to_run or in_flight:
            while asked < to_run and len(in_flight) < workers:
                trial = the_study.ask(fixed_distributions=distributions)
                values = {k: trial.params[k] for k in parsed}
                future = run_trial.submit(
                    number=trial.number,
                    values=values,
                    params=trial_parameters(fixed, values),
                    data=prepared,
                    parent_run_id=run_id,
                    tracking=(uri, experiment_id),
                    metric=metric,
                    threads=threads,
                    weights=str(weights_dir / f"trial-{trial.number}.pt"),
                    prune=PruneSettings(study_name, storage, trial._trial_id) if prune_on else None,
                )
                in_flight[future] = (trial.number, values)
                asked += 1
            done = next(as_completed(list(in_flight)))
            number, values = in_flight.pop(done)
            tell(the_study, _outcome(done, number, values))
            PROGRESS["finished"] += 1

        # 3. the summary: table, best trial, plots
        table = trials_table(experiment, run_id, list(parsed))
        best = best_row(table, metric, direction)
        plots = log_sweep_plots(table, metric, parsed, best, the_study if kind == "optuna" else None)
        rendered = render(_distinct_columns(table, [_column_for(k) for k in parsed]), "table")
        runlog.log_text(render(table, "markdown"), "summary/trials.md")
        runlog.log_text(render(table, "csv"), "summary/trials.csv")
        summary = SweepSummary(
            run_id=run_id,
            experiment_id=experiment_id,
            study=study_name,
            storage=storage,
            kind=kind,
            runner=runner,
            metric=metric,
            direction=direction,
            table=rendered,
            counts={s: int((table["state"] == s).sum()) for s in ("complete", "pruned", "failed")},
            failed=[
                f"{r.run}: {r.error}" for r in table.itertuples() if r.state == "failed" and "error" in table.columns
            ],
            plots=plots,
            resumed="run_id" in start,
            ran_now=to_run,
            artifact_uri=parent.info.artifact_uri,
            run_url=run_url(run_id, experiment_id),
            ui_command=ui_command(),
        )
        if best is not None:
            row = table.loc[best]
            headline = [k for k in table.columns if k.startswith(("test/accuracy", "cross/"))]
            figures = {k: float(row[k]) for k in headline if row[k] == row[k]}  # not NaN
            best_values = {k: v for k, v in the_study.trials[int(row["trial"])].params.items() if k in parsed}
            summary.best = {
                "trial": int(row["trial"]),
                "values": best_values,
                "value": float(row[metric]),
                "run_id": str(row["run_id"]),
                "run_name": str(row["run"]),
                "figures": {metric: float(row[metric]), **{k: v for k, v in figures.items() if k != metric}},
            }
            runlog.log_metric(f"best/{metric}", float(row[metric]))
            runlog.set_tags({"sweep.best_trial": str(int(row["trial"])), "sweep.best_run_id": str(row["run_id"])})
            mlflow.MlflowClient().set_tag(str(row["run_id"]), "sweep.best", "true")
    # 4. the best trial's model: exported, verified and registered in the trial's run, as a pipeline run's is
    # (after the sweep's run ends: MLflow opens a child run only under the run that is active)
    if export_best and summary.best is not None:
        summary.exported = _export_best(summary.best, fixed, prepared, weights_dir)
        if summary.exported:
            version = f"{summary.exported['model_name']} version {summary.exported['model_version']}"
            mlflow.MlflowClient().set_tag(run_id, "sweep.best_model_version", version)
    summary.seconds = time.perf_counter() - began
    create_markdown_artifact(
        key="digitflow-sweep", markdown="\n".join(["# digitflow sweep", "", "```", *summary.lines(), "```"])
    )
    return summary


def _outcome(future: PrefectFuture[TrialResult], number: int, values: dict[str, Any]) -> TrialResult:
    """The trial's result; a task that itself failed (a lost worker, say) counts as a failed trial."""
    try:
        result = future.result()
    except Exception as exc:  # noqa: BLE001 - the sweep goes on
        return TrialResult(number, values, "failed", run_id="", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    assert isinstance(result, TrialResult)
    return result


def _export_best(
    best: Mapping[str, Any], fixed: dict[str, Any], prepared: Mapping[str, Any], weights_dir: Path
) -> dict[str, Any] | None:
    """Export, verify and register the best trial's model from its saved weights, in its own run, so
    ``digitflow promote --run-id`` takes it like a pipeline run."""
    weights = weights_dir / f"trial-{best['trial']}.pt"
    if not weights.is_file():
        get_run_logger().warning("the best trial's weights are not at %s: its model is not exported", weights)
        return None
    config = build_config(**trial_parameters(fixed, best["values"]))
    from digitflow.training.classifier import build_model

    model = build_model(prepared["train"].num_classes, config.train.seed, config.train.model)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    trained = TrainedModel(model=model, device="cpu", images_per_sec=0.0, seconds=0.0)
    test = {k: v for k, v in best["figures"].items() if k.startswith("test/")}
    cross = [{k: v for k, v in best["figures"].items() if k.startswith("cross/")}]
    result: dict[str, Any] = export_model(trained, prepared["test"], config, test, cross, best["run_id"])
    return result


def default_study_name(
    kind: str, space: list[str], fixed: Mapping[str, Any], metric: str, direction: str, total: int, seed: int
) -> str:
    """``sweep-<hash>`` of everything that defines the sweep, so the same command with ``--resume``
    finds its study, and another sweep never does."""
    key = json.dumps([kind, sorted(space), dict(fixed), metric, direction, total, seed], sort_keys=True, default=str)
    return f"sweep-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def sweep_run_name(kind: str, space: Mapping[str, Dimension], total: int, train: str) -> str:
    """``sweep grid lr x epochs (6 trials) · LeNet mnist:test[:8000]``."""
    axes = " x ".join(space)
    return f"sweep {kind} {axes} ({total} trials) · LeNet {train}"


def _delete_study(name: str, storage: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=storage)
        get_run_logger().info("a study %s was there: starting it over (--resume would continue it)", name)
    except KeyError:
        pass


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _end_stale_children(experiment_id: str, parent_id: str) -> None:
    """Trial runs an interrupted sweep left RUNNING end KILLED (their trials run again)."""
    client = mlflow.MlflowClient()
    for child in client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        if child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, "sweep.state", "interrupted")
            client.set_terminated(child.info.run_id, status="KILLED")


def _column_for(key: str) -> str:
    return {"batch_size": "batch"}.get(key, key)


def _distinct_columns(table: Any, swept: list[str]) -> Any:
    """The table for the terminal: without the start time, the export columns (filled in later) and the
    params every trial shares (the parent run has them), swept ones kept."""
    drop = ["started", "export", "version", "aliases"]
    drop += [c for c in ("status", "train", "test", "epochs", "optimizer", "lr", "batch", "seed") if c not in swept]
    shared = [
        c
        for c in drop
        if c in table.columns
        and (c in ("started", "export", "version", "aliases") or table[c].astype(str).nunique() <= 1)
    ]
    return table.drop(columns=shared)


def _flat_params(config: Any) -> dict[str, Any]:
    from digitflow.config import flatten

    return flatten(config)
