"""Promotion tasks: find a pipeline run's registered model, and move the ``champion`` alias to it when
the rule in :mod:`digitflow.evaluation.promotion` says it is better.

The alias is read, compared and moved under one lock, so that two promotions at the same moment
cannot both compare with the same old champion (the one that wrote last would win, better or not):
on a local SQLite store, a file lock beside the database; on a tracking server, a Prefect global
concurrency limit with one slot, which every worker of the same Prefect server shares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import PromotionConfig
from digitflow.errors import ConfigError
from digitflow.evaluation.promotion import Decision, decide
from reporting.progress import run_logger
from tracking.store import sqlite_folder, store_lock, tracking_uri

FLOW_RUN_PREFIX = "prefect.flow-run."  # an event's resource id: prefect.flow-run.<uuid>
TAG_PREFIX = "promotion."  # the tags a decision leaves on the candidate's model version
REGISTERED_MODEL_PARAM = "export.registered_model_name"  # the pipeline run's param: where its version is


@dataclass(frozen=True)
class Candidate:
    """A pipeline run's model version and the figures it is judged by."""

    run_id: str
    run_name: str
    model_name: str
    version: str
    figures: dict[str, float]
    export_verified: bool
    export_note: str  # why the export counts as verified or not
    datasets: dict[str, str] = field(default_factory=dict)  # the run's dataset.*.digest tags: what it measured on


@dataclass(frozen=True)
class Outcome:
    """A decision and what it did: the champion before and after (read back after the move)."""

    candidate: Candidate
    decision: Decision
    champion_before: str | None  # version
    champion_after: str | None
    alias: str
    tags: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The decision, the figures both ways and the champion now, as short lines."""
        c = self.candidate
        before = f"version {self.champion_before}" if self.champion_before else "none"
        return [
            f"{c.model_name} version {c.version} (run {c.run_id}, {c.run_name}): {self.decision.word}",
            f"why: {self.decision.reason}",
            f"compared with the {self.alias}: {before}",
            f"export verification: {c.export_note}",
            *(f"{f.line()}" for f in self.decision.figures),
            f"{self.alias} now: version {self.champion_after}" if self.champion_after else f"no {self.alias}",
        ]

    def markdown(self) -> str:
        """The decision as a Prefect markdown artifact: a headline, the reason, a figures table."""
        c = self.candidate
        before = f"version {self.champion_before}" if self.champion_before else "none"
        rows = [
            "| figure | candidate | champion | difference | verdict |",
            "|---|---|---|---|---|",
        ]
        for f in self.decision.figures:
            cand = "" if f.candidate is None else f"{f.candidate:.4f}"
            champ = "" if f.champion is None else f"{f.champion:.4f}"
            diff = "" if f.candidate is None or f.champion is None else f"{f.candidate - f.champion:+.4f}"
            rows.append(f"| `{f.name}` | {cand} | {champ} | {diff} | {f.verdict} |")
        return "\n".join(
            [
                f"# {c.model_name} version {c.version}: {self.decision.word}",
                "",
                f"- why: {self.decision.reason}",
                f"- candidate: version {c.version}, MLflow run `{c.run_id}` ({c.run_name})",
                f"- compared with the {self.alias}: {before}",
                f"- export verification: {c.export_note}",
                f"- {self.alias} now: version {self.champion_after or 'none'}",
                "",
                *rows,
            ]
        )


def flow_run_uuid(text: str) -> str:
    """A Prefect flow run id from either form a caller has: the id, or an event's resource id
    (``prefect.flow-run.<id>``, what an automation's ``{{ event.resource.id }}`` gives)."""
    return text.strip().removeprefix(FLOW_RUN_PREFIX)


def find_pipeline_run(run_id: str | None = None, flow_run_id: str | None = None) -> mlflow.entities.Run:
    """The MLflow parent run of a pipeline run, by its own id or by the Prefect flow run that logged
    it (tag ``prefect.flow_run_id``, in any experiment); a one-line ConfigError if there is none."""
    if (run_id is None) == (flow_run_id is None):
        raise ConfigError("name the pipeline run by exactly one of its MLflow run id and its Prefect flow run id")
    client = mlflow.MlflowClient()
    if run_id is not None:
        try:
            return client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"no MLflow run {run_id} in {tracking_uri()}") from None
    uuid = flow_run_uuid(str(flow_run_id))
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    found = client.search_runs(
        experiments,
        filter_string=f"tags.`prefect.flow_run_id` = '{uuid}' and tags.`mlflow.parentRunId` IS NULL",
        max_results=1,
    )
    if not found:
        raise ConfigError(f"no MLflow run logged by Prefect flow run {uuid} in {tracking_uri()}")
    return found[0]


def export_check(run: mlflow.entities.Run) -> tuple[bool, str]:
    """Whether the pipeline run's export verification passed, and a few words saying so: its export
    child run finished (the export task fails when a file disagrees with the eager model) and every
    exported file (TorchScript, torch.export, and the AOTInductor package when written) gave the eager
    model's predictions within the run's tolerance for it."""
    client = mlflow.MlflowClient()
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.run_name = 'export'",
    )
    if not children:
        return False, "the run has no export step"
    export = children[0]
    if export.info.status != "FINISHED":
        return False, f"the export step ended {export.info.status}"
    metrics, params = export.data.metrics, export.data.params
    tolerance, aoti_tolerance = float(params.get("max_abs_diff", "inf")), float(params.get("aoti_max_abs_diff", "inf"))
    written = ["aoti"] if "export/aoti_max_abs_diff" in metrics else []  # the optional format, when written
    for name in ("torchscript", "program", *written):
        diff = metrics.get(f"export/{name}_max_abs_diff")
        mismatched = metrics.get(f"export/{name}_mismatched_predictions")
        if diff is None or mismatched is None:
            return False, f"no verification figures for the {name} export"
        if diff > (aoti_tolerance if name == "aoti" else tolerance) or mismatched:
            return False, f"the {name} export differs from the eager model (max |diff| {diff:.2e})"
    if written:
        return True, f"passed (all 3 exports: 2 within {tolerance:g}, the AOTInductor one within {aoti_tolerance:g})"
    return True, f"passed (both exports within {tolerance:g} of the eager model)"


def read_candidate(run: mlflow.entities.Run, config: PromotionConfig) -> Candidate:
    """The model version a pipeline run registered, its figures (the run's metrics) and export check."""
    client = mlflow.MlflowClient()
    # the registered model follows the run's model (digitflow-lenet, digitflow-<name>): the run's param says which
    name = run.data.params.get(REGISTERED_MODEL_PARAM, config.registered_model_name)
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    if not versions:
        raise ConfigError(
            f"MLflow run {run.info.run_id} registered no version of {name} "
            f"(status {run.info.status}): nothing to promote"
        )
    version = max(versions, key=lambda v: int(v.version))
    verified, note = export_check(run)
    return Candidate(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        model_name=name,
        version=str(version.version),
        figures=dict(run.data.metrics),
        export_verified=verified,
        export_note=note,
        datasets=dataset_digests(run.data.tags),
    )


def dataset_digests(tags: dict[str, str]) -> dict[str, str]:
    """A pipeline run's ``dataset.*.digest`` tags: which images its figures were measured on."""
    return {key: value for key, value in tags.items() if key.startswith("dataset.") and key.endswith(".digest")}


@task(name="find candidate", cache_policy=NO_CACHE, persist_result=False)
def find_candidate(run_id: str | None, flow_run_id: str | None, config: PromotionConfig) -> Candidate:
    """The pipeline run named by ``run_id`` or ``flow_run_id``, as a candidate for promotion."""
    candidate = read_candidate(find_pipeline_run(run_id, flow_run_id), config)
    run_logger().info(
        "candidate: %s version %s from MLflow run %s", candidate.model_name, candidate.version, candidate.run_id
    )
    return candidate


def champion(config: PromotionConfig) -> ModelVersion | None:
    """The model version that holds the champion alias, or None."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(config.registered_model_name, config.champion_alias)
    except MlflowException:  # no such alias (or no registered model yet)
        return None


def champion_figures(version: ModelVersion) -> tuple[dict[str, float], dict[str, str]]:
    """The figures of the champion and the datasets they were measured on: the metrics and the
    ``dataset.*.digest`` tags of the run that registered it."""
    if not version.run_id:
        return {}, {}
    run = mlflow.MlflowClient().get_run(version.run_id)
    return dict(run.data.metrics), dataset_digests(run.data.tags)


@contextlib.contextmanager
def promotion_lock(config: PromotionConfig) -> Iterator[None]:
    """Only one promotion of this model at a time (see the module docstring)."""
    folder = sqlite_folder(tracking_uri())
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        with store_lock(folder, f"promote-{config.registered_model_name}"):
            yield
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = f"digitflow-promote-{config.registered_model_name}"
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    with concurrency(name, occupy=1, strict=True):
        yield


def decision_tags(outcome_decision: Decision, champion_before: str | None, promoter: str) -> dict[str, str]:
    """What a decision leaves on the candidate's model version: ``promotion.decision``, ``.reason``,
    ``.compared_with``, one tag per figure (``promotion.test/accuracy``: candidate vs champion), when and by whom."""
    tags = {
        "decision": outcome_decision.word,
        "reason": outcome_decision.reason,
        "compared_with": f"version {champion_before}" if champion_before else "none",
        "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "decided_by": promoter,
        **{f.name: f.line().partition(": ")[2] for f in outcome_decision.figures},
    }
    return {TAG_PREFIX + key: value for key, value in tags.items()}


@task(name="promote if better", cache_policy=NO_CACHE, persist_result=False)
def promote_if_better(candidate: Candidate, config: PromotionConfig, promoter: str = "digitflow promote") -> Outcome:
    """Compare ``candidate`` with the champion and move the alias to it if it is better, under the
    promotion lock; tag the candidate's version with the decision and the figures both ways (and a
    displaced champion with its successor). ``promoter`` says who decided (a flow run, the CLI). The
    champion is that of the candidate's registered model (``digitflow-<model>``)."""
    config = dataclasses.replace(config, registered_model_name=candidate.model_name)
    client = mlflow.MlflowClient()
    name, alias = config.registered_model_name, config.champion_alias
    with promotion_lock(config):
        current = champion(config)
        before = str(current.version) if current is not None else None
        if before == candidate.version:  # already the champion: compare with nothing, change nothing
            decision = Decision(False, f"it already is the {alias}", ())
        else:
            figures, datasets = champion_figures(current) if current is not None else (None, {})
            decision = decide(
                candidate.figures,
                figures,
                config,
                export_verified=candidate.export_verified,
                datasets=(candidate.datasets, datasets),
            )
        tags = decision_tags(decision, before, promoter)
        for key, value in tags.items():
            client.set_model_version_tag(name, candidate.version, key, value)
        if decision.promote:
            client.set_registered_model_alias(name, alias, candidate.version)
            if before is not None:
                client.set_model_version_tag(name, before, TAG_PREFIX + "replaced_by", f"version {candidate.version}")
        after = champion(config)  # read back: what holds the alias now, whatever this decision was
    outcome = Outcome(candidate, decision, before, str(after.version) if after else None, alias, tags)
    logger = run_logger()
    for line in outcome.lines():
        logger.info("%s", line)
    return outcome
