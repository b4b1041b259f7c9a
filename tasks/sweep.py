"""Sweep tasks: one trial (train + evaluate one configuration, in a child run of the sweep's run), the
Optuna study that keeps the trials, and the sweep's summary (table, plots, best trial).

A trial is a Prefect task, so the flow's task runner decides where it runs: a thread of the flow's
process, a Dask worker or a Ray worker. It therefore takes everything it needs as arguments (the
tracking store, the prepared data, the Optuna storage) and sets its own torch threads.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import RunConfig, flatten
from digitflow.config.sweep_space import Choice, Dimension, Range, describe
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device
from digitflow.errors import DigitflowError
from digitflow.evaluation.classifier import EvalResult, evaluate
from digitflow.evaluation.plots import metric_against_param, training_curves
from digitflow.params.run import build_config
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit
from reporting.progress import run_logger
from tasks.data import load_prepared
from tasks.evaluate import target_key
from tracking import runlog
from tracking.comparison import KEY_PARAMS, runs_table
from tracking.runs import child_run

STATE_TAG = "sweep.state"  # complete, pruned, failed: on every trial run
TRIAL_TAG = "sweep.trial"  # the trial's number
ERROR_TAG = "digitflow.error"  # a failed trial's error, one line
PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming the sweep's MLflow run
INTERRUPTED_ATTR = "interrupted"  # a trial that was running when the sweep was interrupted


@dataclass
class PruneSettings:
    """Optuna's median pruner, rebuilt wherever a trial runs (a study's pruner is not in its storage)."""

    study_name: str
    storage: str
    trial_id: int
    startup_trials: int = 2
    warmup_epochs: int = 1


@dataclass
class TrialResult:
    """What a trial hands back to the sweep flow."""

    number: int
    values: dict[str, Any]
    state: str  # complete, pruned, failed
    run_id: str
    value: float | None = None  # the sweep's metric
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    weights: str | None = None  # the trained model's state dict, saved for the best trial's export


@task(name="trial", task_run_name="trial {number}", cache_policy=NO_CACHE, persist_result=False)
def run_trial(
    number: int,
    values: dict[str, Any],
    params: dict[str, Any],
    data: dict[str, Any],
    parent_run_id: str,
    tracking: tuple[str, str],
    metric: str,
    threads: int,
    weights: str,
    prune: PruneSettings | None = None,
) -> TrialResult:
    """Train and evaluate one configuration (``params``: keywords of ``build_config``; ``values``: the
    swept ones) in a child run ``trial N: lr=0.05 epochs=6`` of the sweep's run.

    ``data`` holds the sweep's prepared splits (``train``, ``test``, ``targets``), prepared once by the
    flow; ``tracking`` is the MLflow store and experiment id. The trial's torch threads are set to
    ``threads`` (see docs/sweeps.md "Where trials run": in the threads runner this sets the trial's own
    thread, in Dask and Ray workers the worker process). An error (a diverging loss, options that do not go together)
    ends the trial ``failed`` with that error and is not raised: the sweep goes on. With ``prune``,
    the sweep's metric is reported to Optuna after every epoch and the trial stops when its pruner says so.
    The trained weights are saved to ``weights`` (a state dict), from which the sweep exports the best trial.
    """
    torch.set_num_threads(threads)
    uri, experiment_id = tracking
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    logger = run_logger()
    name = f"trial {number}: {describe(values)}"
    tags = {TRIAL_TAG: str(number), STATE_TAG: "running"}
    start = time.perf_counter()
    with child_run(name, parent_run_id, tags=tags) as run:
        result = TrialResult(number=number, values=dict(values), state="running", run_id=run.info.run_id)
        try:
            config = build_config(**params)
            runlog.log_params(flatten(config))
            runlog.log_params({f"sweep.{k}": v for k, v in values.items()})
            result.metrics, state = _train_and_evaluate(config, data, metric, prune)
            Path(weights).parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, weights)
            result.weights = weights
            result.state, result.value = "complete", result.metrics.get(metric)
            if result.value is None or not math.isfinite(result.value):
                raise DigitflowError(f"the trial measured no finite {metric}")
        except optuna.TrialPruned as exc:
            result.state, result.error = "pruned", str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded, and the sweep goes on
            result.state = "failed"
            result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            if not isinstance(exc, DigitflowError):
                logger.debug("trial %d failed:\n%s", number, traceback.format_exc())
        result.seconds = time.perf_counter() - start
        runlog.log_metric("sweep/seconds", result.seconds)
        runlog.set_tag(STATE_TAG, result.state)
        if result.error:
            runlog.set_tag(ERROR_TAG, result.error)
        if result.state == "failed":
            runlog.end_run(run.info.run_id, "FAILED")  # the with-block then leaves it alone
    figure = f"{metric} {result.value:.4f}" if result.value is not None else result.error
    logger.info("trial %d (%s): %s, %s, %.0f s", number, describe(values), result.state, figure, result.seconds)
    return result


def _train_and_evaluate(
    config: RunConfig, data: Mapping[str, Any], metric: str, prune: PruneSettings | None
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """fit + evaluate on the held-out split and each target, logging as the pipeline's tasks do."""
    cfg, dcfg = config.train, config.data
    device = resolve_device(cfg.device)
    train_set = load_prepared(data["train"], dcfg.data_dir, dcfg.cache_dir)
    images, labels = model_inputs(train_set, dcfg.target_preprocess, device)
    evaluations: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prefix, prepared in [("test", data["test"]), *((f"cross/{target_key(t.spec)}", t) for t in data["targets"])]:
        dataset = load_prepared(prepared, dcfg.data_dir, dcfg.cache_dir)
        evaluations[prefix] = model_inputs(dataset, dcfg.target_preprocess, device)
    model = build_model(train_set.num_classes, cfg.seed, cfg.model).to(device)
    reporter = _pruning_reporter(prune, model, evaluations, metric) if prune else None

    def on_epoch(record: dict[str, float]) -> None:
        epoch = int(record["epoch"])
        runlog.log_metrics({f"train/{k}": record[k] for k in ("loss", "accuracy", "lr")}, step=epoch)
        if reporter is not None:
            reporter(epoch, record)

    result = fit(model, images, labels, cfg, augment=build_augment(cfg.augment), on_epoch=on_epoch)
    seconds = sum(h["seconds"] for h in result.history)
    metrics = {
        "train/seconds": seconds,
        "train/images_per_sec": len(labels) * len(result.history) / seconds if seconds else 0.0,
    }
    for prefix, (eval_images, eval_labels) in evaluations.items():
        outcome: EvalResult = evaluate(model, eval_images, eval_labels)
        metrics.update({f"{prefix}/accuracy": outcome.accuracy, f"{prefix}/loss": outcome.loss})
    runlog.log_metrics(metrics)
    runlog.log_figure(training_curves(result.history), "plots/training_curves.png")
    model.eval()
    return metrics, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _pruning_reporter(
    prune: PruneSettings,
    model: torch.nn.Module,
    evaluations: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    metric: str,
) -> Callable[[int, dict[str, float]], None]:
    """After each epoch: the sweep's metric (``train/*`` from the epoch's record; ``test/*`` and
    ``cross/*`` by evaluating on that split), reported to Optuna; raises optuna.TrialPruned when the pruner says so."""
    study = optuna.load_study(study_name=prune.study_name, storage=prune.storage, pruner=median_pruner(prune))
    trial = optuna.trial.Trial(study, prune.trial_id)
    prefix, _, figure = metric.rpartition("/")

    def report(epoch: int, record: dict[str, float]) -> None:
        if prefix == "train":
            value = record[figure]
        elif prefix in evaluations:
            value = getattr(evaluate(model, *evaluations[prefix]), figure)
            runlog.log_metric(f"{metric}_per_epoch", value, step=epoch)
        else:
            return
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric} {value:.4f}, below the median")

    return report


def median_pruner(prune: PruneSettings) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=prune.startup_trials, n_warmup_steps=prune.warmup_epochs)


# --- the study: where the trials are kept, so an interrupted sweep resumes -------------------------------------------


def distribution(dimension: Dimension) -> optuna.distributions.BaseDistribution:
    """An Optuna distribution for a parsed dimension (digitflow.config.sweep_space)."""
    if isinstance(dimension, Choice):
        return optuna.distributions.CategoricalDistribution(list(dimension.values))
    if dimension.integer:
        return optuna.distributions.IntDistribution(int(dimension.low), int(dimension.high), log=dimension.log)
    return optuna.distributions.FloatDistribution(dimension.low, dimension.high, log=dimension.log)


def default_storage(tracking_uri: str, output_dir: str) -> str:
    """The study's storage: ``optuna.db`` beside a SQLite MLflow store (not inside it: both keep an
    ``alembic_version`` table), else in the output folder."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """grid: the enqueued grid points (random for anything else); random; optuna: TPE."""
    if kind == "optuna":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def finished(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that ran to its end (complete, pruned or failed), not one cut short by an interruption."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return trial.state in done and not trial.user_attrs.get(INTERRUPTED_ATTR)


def recorded_outcomes(experiment_id: str, parent_run_id: str, metric: str) -> dict[int, TrialResult]:
    """What the sweep's MLflow trial runs recorded as finished (complete, pruned, failed), by trial number:
    a trial whose task finished just before an interruption, before the study was told."""
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10_000
    )
    out = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(STATE_TAG) in ("complete", "pruned", "failed") and TRIAL_TAG in tags:
            number = int(tags[TRIAL_TAG])
            out[number] = TrialResult(
                number,
                {},
                tags[STATE_TAG],
                run.info.run_id,
                value=run.data.metrics.get(metric),
                error=tags.get(ERROR_TAG),
            )
    return out


def reopen_interrupted(study: optuna.Study, recorded: Mapping[int, TrialResult] | None = None) -> list[int]:
    """Trials left RUNNING by an interrupted sweep: told the outcome their MLflow run ``recorded`` if it
    finished, else marked failed-by-interruption and enqueued again with their parameters, so they run
    again. Returns the numbers of those that run again."""
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if recorded and trial.number in recorded:
            tell(study, recorded[trial.number])
            continue
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        numbers.append(trial.number)
    return numbers


def tell(study: optuna.Study, result: TrialResult) -> None:
    """Record a trial's outcome in the study."""
    if result.state == "complete":
        study.tell(result.number, result.value)
    elif result.state == "pruned":
        study.tell(result.number, state=optuna.trial.TrialState.PRUNED)
    else:
        trial_id = study.trials[result.number]._trial_id
        study._storage.set_trial_user_attr(trial_id, "error", (result.error or "failed")[:500])
        study.tell(result.number, state=optuna.trial.TrialState.FAIL)


# --- the summary: which trial is best, the table, the plots --------------------------------------------------------


def trials_table(experiment: str, parent_run_id: str, swept: Sequence[str]) -> pd.DataFrame:
    """The sweep's trials as ``digitflow compare`` shows runs, with the trial number, its state and the
    swept options as columns, ordered by trial."""
    shown = {c for c, _ in KEY_PARAMS}
    extra_params = [(key, f"sweep.{key}") for key in swept if key not in shown]
    extra_tags = [("trial", TRIAL_TAG), ("state", STATE_TAG), ("error", ERROR_TAG)]
    table = runs_table(experiment, parent_run_id=parent_run_id, extra_params=extra_params, extra_tags=extra_tags)
    if len(table):
        table["trial"] = pd.to_numeric(table["trial"], errors="coerce")
        table = table[table["trial"].notna()]  # the trials, not the data's prepare runs
        table = table.sort_values("trial", kind="stable").reset_index(drop=True)
        for column in ("trial", "epochs", "batch", "seed"):  # whole numbers (a NaN row made them floats)
            if column in table.columns and table[column].notna().all():
                table[column] = table[column].astype(int)
        table = table.drop(columns=[c for c in ("export", "version", "aliases") if (table[c] == "").all()])
        if table["error"].isna().all():
            table = table.drop(columns=["error"])
    return table


def best_row(table: pd.DataFrame, metric: str, direction: str) -> int | None:
    """Index of the best complete trial in ``table`` (None if none completed)."""
    if metric not in table.columns:
        return None
    done = table[(table["state"] == "complete") & table[metric].notna()]
    if not len(done):
        return None
    values = pd.to_numeric(done[metric])
    return int(values.idxmax() if direction == "maximize" else values.idxmin())


def log_sweep_plots(
    table: pd.DataFrame, metric: str, space: Mapping[str, Dimension], best: int | None, study: optuna.Study | None
) -> list[str]:
    """Log the plots to the active (sweep) run: ``metric`` against each swept option; Optuna's history
    and parameter importances when Optuna searched. Returns the artifact paths."""
    logged: list[str] = []
    done = table[table["state"] == "complete"] if metric in table.columns else table.iloc[0:0]
    best_position = list(done.index).index(best) if best is not None and best in done.index else -1
    for key, dimension in space.items():
        column = _column_of(key, table)
        if column is None or not len(done):
            continue
        path = f"plots/{_safe(metric)}_vs_{_safe(key)}.png"
        log_x = isinstance(dimension, Range) and dimension.log
        runlog.log_figure(
            metric_against_param(
                list(done[column]), list(pd.to_numeric(done[metric])), metric, key, log_x=log_x, best=best_position
            ),
            path,
        )
        logged.append(path)
    if study is not None:
        logged += _optuna_plots(study)
    return logged


def _optuna_plots(study: optuna.Study) -> list[str]:
    import warnings

    from optuna.visualization import matplotlib as optuna_plots

    logged = []
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots: list[tuple[str, Callable[[optuna.Study], Any]]] = [
        ("plots/optuna_history.png", optuna_plots.plot_optimization_history)
    ]
    if len(completed) >= 2 and any(len({repr(t.params.get(k)) for t in completed}) > 1 for k in completed[0].params):
        plots.append(("plots/optuna_param_importances.png", optuna_plots.plot_param_importances))
    for path, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning: the matplotlib backend is marked experimental
                axes = plot(study)
        except (ValueError, RuntimeError) as exc:  # too few trials for importances, say
            run_logger().info("%s not drawn: %s", path, exc)
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
        figure.set_size_inches(7, 4.5)
        runlog.log_figure(figure, path)
        logged.append(path)
    return logged


def _column_of(key: str, table: pd.DataFrame) -> str | None:
    """The table column holding a swept option's values."""
    by_param = {"lr": "lr", "epochs": "epochs", "batch_size": "batch", "seed": "seed", "optimizer": "optimizer"}
    for column in (by_param.get(key), key):
        if column is not None and column in table.columns:
            return column
    return None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
