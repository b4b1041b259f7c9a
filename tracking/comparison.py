"""Pipeline runs side by side, from MLflow (``digitflow compare``): one row per parent run with its
key params, headline figures, export status and registered model version; plots of a figure across
runs or of the training curves of the runs chosen.

The columns are the keys the pipeline logs (``test/accuracy``, ``cross/<dataset>/accuracy``,
``train.epochs``, ...), the same names the MLflow UI's compare view lines up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from digitflow.config import ExportConfig
from digitflow.errors import ConfigError

# Params shown for every run, as (column, MLflow param key): what was trained on and how.
KEY_PARAMS: tuple[tuple[str, str], ...] = (
    ("train", "data.train"),
    ("model", "train.model"),
    ("test", "data.test"),
    ("epochs", "train.epochs"),
    ("optimizer", "train.optimizer.name"),
    ("lr", "train.optimizer.kwargs.lr"),
    ("batch", "train.batch_size"),
    ("seed", "train.seed"),
)
HEADLINE_METRICS = ("test/accuracy", "test/loss")  # then every cross/<dataset>/accuracy the runs have
CURVE_METRICS = ("train/loss", "train/accuracy", "train/lr")  # logged per epoch by the train step
MAX_RUNS = 1000  # one page of MLflow's search


def _filter_problem(experiment_id: str, filter_string: str | None, exc: mlflow.exceptions.MlflowException) -> str:
    """MLflow's complaint about the user's own filter (searched alone: the error for the combined one
    would also quote the clause added here to select parent runs), in one line."""
    try:
        mlflow.search_runs([experiment_id], filter_string=filter_string or "", max_results=1, output_format="list")
    except mlflow.exceptions.MlflowException as own:
        exc = own
    return str(exc.message).splitlines()[0] if exc.message else str(exc)


def runs_table(
    experiment: str,
    filter_string: str | None = None,
    last: int | None = None,
    sort: str | None = None,
    ascending: bool = False,
    model_name: str = ExportConfig.registered_model_name,
    *,
    parent_run_id: str | None = None,
    extra_params: Sequence[tuple[str, str]] = (),
    extra_tags: Sequence[tuple[str, str]] = (),
) -> pd.DataFrame:
    """The pipeline (parent) runs of ``experiment``, newest first, one row each; with
    ``parent_run_id``, the child runs of that run instead (the trials of a sweep).

    ``filter_string`` is MLflow's search syntax (``params.`train.epochs` = '6'``,
    ``metrics.`test/accuracy` > 0.99``, ``attributes.status = 'FINISHED'``); ``last`` keeps the N newest
    runs; ``sort`` orders them by a column of the table (descending unless ``ascending``). Columns:
    ``run``, ``started``, ``status``, the :data:`KEY_PARAMS`, ``test/accuracy``, ``test/loss``, one
    ``cross/<dataset>/accuracy`` per target, ``export``, ``version``, ``aliases``, ``run_id``;
    ``extra_params`` and ``extra_tags`` (column, key) add columns after the status.
    """
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in mlflow.search_experiments())) or "none"
        raise ConfigError(f"no experiment {experiment!r} in {mlflow.get_tracking_uri()} (experiments: {names})")
    if last is not None and last < 1:
        raise ConfigError(f"--last takes a number of runs >= 1, got {last}")
    parents_only = "tags.`mlflow.parentRunId` IS NULL"
    if parent_run_id is not None:
        parents_only = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    where = f"{filter_string} and {parents_only}" if filter_string and filter_string.strip() else parents_only
    try:
        runs = mlflow.search_runs(
            [found.experiment_id],
            filter_string=where,
            order_by=["attributes.start_time DESC"],
            max_results=last or MAX_RUNS,
            output_format="list",
        )
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(
            f"--filter {filter_string!r}: {_filter_problem(found.experiment_id, filter_string, exc)}"
        ) from None
    extra = (tuple(extra_tags), tuple(extra_params))
    table = pd.DataFrame([_row(run, *extra) for run in runs], columns=_columns(runs, *extra))
    if not len(table):
        return table
    exports = _export_status(found.experiment_id, [r.info.run_id for r in runs])
    # each run's version is in the registered model of its own model (digitflow-lenet, digitflow-<name>)
    registered = {r.data.params.get("export.registered_model_name") or model_name for r in runs}
    versions = {run_id: v for name in sorted(registered) for run_id, v in _model_versions(name).items()}
    table["export"] = [exports.get(run_id, "none") for run_id in table["run_id"]]
    table["version"] = [versions.get(run_id, ("", ""))[0] for run_id in table["run_id"]]
    table["aliases"] = [versions.get(run_id, ("", ""))[1] for run_id in table["run_id"]]
    table = table[[c for c in table.columns if c != "run_id"] + ["run_id"]]
    if sort:
        if sort not in table.columns:
            raise ConfigError(f"--sort {sort!r} is not a column; columns: {', '.join(table.columns)}")
        table = table.sort_values(sort, ascending=ascending, kind="stable", na_position="last")
    return table.reset_index(drop=True)


def _columns(
    runs: Sequence[Any], extra_tags: Sequence[tuple[str, str]] = (), extra_params: Sequence[tuple[str, str]] = ()
) -> list[str]:
    cross = sorted({k for r in runs for k in r.data.metrics if k.startswith("cross/") and k.endswith("/accuracy")})
    cross = [k for k in cross if "/class_" not in k]
    extra = [c for c, _ in (*extra_tags, *extra_params)]
    return ["run", "started", "status", *extra, *(c for c, _ in KEY_PARAMS), *HEADLINE_METRICS, *cross, "run_id"]


def _row(
    run: Any, extra_tags: Sequence[tuple[str, str]] = (), extra_params: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    params, metrics = run.data.params, run.data.metrics
    started = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
    row: dict[str, Any] = {"run": run.info.run_name, "started": started, "status": run.info.status}
    row.update({column: run.data.tags.get(key) for column, key in extra_tags})
    row.update({column: _param(params.get(key)) for column, key in extra_params})
    row.update({column: _param(params.get(key)) for column, key in KEY_PARAMS})
    row.update({k: v for k, v in metrics.items() if k in HEADLINE_METRICS or k.startswith("cross/")})
    row["run_id"] = run.info.run_id
    return row


def _param(value: str | None) -> Any:
    """Params are strings in MLflow; numbers become numbers, so they sort as numbers."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def _export_status(experiment_id: str, run_ids: list[str]) -> dict[str, str]:
    """``verified``, ``failed`` (verification or export failed) or ``running``, by parent run id."""
    children = mlflow.search_runs(
        [experiment_id], filter_string="attributes.run_name = 'export'", max_results=MAX_RUNS, output_format="list"
    )
    wanted, out = set(run_ids), {}
    for child in children:
        parent = child.data.tags.get("mlflow.parentRunId")
        if parent not in wanted:
            continue
        mismatched = sum(v for k, v in child.data.metrics.items() if k.endswith("_mismatched_predictions"))
        if child.info.status == "FINISHED":
            out[parent] = "verified" if not mismatched else "mismatch"
        else:
            out[parent] = child.info.status.lower()
    return out


def _model_versions(name: str) -> dict[str, tuple[str, str]]:
    """run id -> (version, its aliases joined with commas) for the registered model ``name``."""
    client = mlflow.MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases  # alias -> version (search results carry none)
        versions = client.search_model_versions(f"name = '{name}'", max_results=MAX_RUNS)
    except mlflow.exceptions.MlflowException:  # no registered model yet
        return {}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    named = {str(v.run_id): str(v.version) for v in versions if v.run_id}
    return {run_id: (version, ",".join(sorted(by_version.get(version, [])))) for run_id, version in named.items()}


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as ``table`` (aligned text), ``csv`` or ``markdown`` (GitHub pipes)."""
    if fmt == "csv":
        return str(table.to_csv(index=False))
    if not len(table):
        return "no runs"
    shown = table.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]) and (column.startswith(("test/", "cross/"))):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown = shown.astype(object).where(shown.notna(), "").astype(str)
    if fmt == "markdown":
        lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
        return "\n".join(lines)
    if fmt == "table":
        return str(shown.to_string(index=False))
    raise ConfigError(f"unknown format {fmt!r}; formats: table, csv, markdown")


def plot_runs(table: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """Save a PNG: ``metric`` across the table's runs (a bar per run), or, for a per-epoch training
    metric (:data:`CURVE_METRICS`), each run's curve overlaid (from its ``train`` child run)."""
    if not len(table):
        raise ConfigError("no runs to plot")
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ConfigError(f"cannot write the plot to {path}: no folder {path.parent}")
    labels = [f"{name} ({run_id[:8]})" for name, run_id in zip(table["run"], table["run_id"], strict=True)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        if metric in CURVE_METRICS:
            client = mlflow.MlflowClient()
            for label, run_id in zip(labels, table["run_id"], strict=True):
                children = mlflow.search_runs(
                    search_all_experiments=True,
                    filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.run_name = 'train'",
                    output_format="list",
                )
                if children:
                    history = client.get_metric_history(children[0].info.run_id, metric)
                    ax.plot([m.step for m in history], [m.value for m in history], marker="o", label=label)
            ax.set_xlabel("epoch")
            ax.legend(fontsize="small")
        elif metric in table.columns:
            values = pd.to_numeric(table[metric], errors="coerce")
            ax.barh(labels[::-1], values[::-1])
            ax.set_xlabel(metric)
            finite = values.dropna()
            if len(finite):  # accuracies sit close together: zoom in on the range the runs span
                low, high = float(finite.min()), float(finite.max())
                pad = max((high - low) * 0.5, 0.002)
                ax.set_xlim(max(low - pad, 0.0), high + pad)
        else:
            plottable = [c for c in table.columns if c.startswith(("test/", "cross/"))] + list(CURVE_METRICS)
            raise ConfigError(f"cannot plot {metric!r}; choose one of {', '.join(plottable)}")
        ax.set_title(metric)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
