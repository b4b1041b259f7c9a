"""Promotion against a temporary MLflow store with fake pipeline runs (tasks through .fn, the flow once)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import mlflow
import pytest

from digitflow.config import PromotionConfig
from digitflow.errors import ConfigError
from tasks import promotion
from tasks.promotion import find_candidate, flow_run_uuid, promote_if_better

MODEL = PromotionConfig.registered_model_name


def fake_pipeline_run(
    test_acc: float,
    usps_acc: float,
    *,
    export_ok: bool = True,
    flow_run_id: str = "",
    model: str = MODEL,
    test_digest: str = "mnist-test",
) -> str:
    """A parent run as the pipeline leaves it: headline metrics, the digests of the data they were measured
    on, an export child run, a model version (of the registered model ``model``, which the run's params name,
    as the pipeline's do)."""
    mlflow.set_experiment("promote-test")
    tags = {"dataset.test.digest": test_digest, "dataset.target.usps.digest": "usps-test"}
    tags |= {"prefect.flow_run_id": flow_run_id} if flow_run_id else {}
    with mlflow.start_run(run_name=f"acc={test_acc}", tags=tags) as parent:
        mlflow.log_param("export.registered_model_name", model)
        mlflow.log_metrics({"test/accuracy": test_acc, "test/loss": 0.1, "cross/usps/accuracy": usps_acc})
        with mlflow.start_run(run_name="export", nested=True):
            mlflow.log_param("max_abs_diff", 1e-5)
            mlflow.log_metrics(
                {
                    "export/torchscript_max_abs_diff": 1e-7 if export_ok else 1e-2,
                    "export/torchscript_mismatched_predictions": 0 if export_ok else 3,
                    "export/program_max_abs_diff": 1e-7,
                    "export/program_mismatched_predictions": 0,
                }
            )
    client = mlflow.MlflowClient()
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # it exists after the first run
        client.create_registered_model(model)
    client.create_model_version(
        model, source=f"{parent.info.artifact_uri}/torchscript-model", run_id=parent.info.run_id
    )
    return parent.info.run_id


def promote(run_id: str, config: PromotionConfig | None = None):
    config = config or PromotionConfig()
    return promote_if_better.fn(find_candidate.fn(run_id, None, config), config, promoter="test")


def champion_version() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


def version_tags(version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(MODEL, version).tags


def test_first_model_becomes_champion_then_only_a_better_one_replaces_it(mlflow_store):
    first = promote(fake_pipeline_run(0.990, 0.940))
    assert first.decision.promote
    assert first.champion_before is None
    assert first.champion_after == first.candidate.version == champion_version() == "1"

    worse = promote(fake_pipeline_run(0.995, 0.900))
    assert not worse.decision.promote
    assert champion_version() == "1"
    tags = version_tags("2")
    assert tags["promotion.decision"] == "kept"
    assert tags["promotion.compared_with"] == "version 1"
    assert tags["promotion.cross/usps/accuracy"] == "0.9000 vs 0.9400 (-0.0400, worse)"
    assert tags["promotion.test/accuracy"] == "0.9950 vs 0.9900 (+0.0050, better)"

    better = promote(fake_pipeline_run(0.995, 0.945))
    assert better.decision.promote
    assert champion_version() == "3"
    assert version_tags("3")["promotion.decision"] == "promoted"
    assert version_tags("1")["promotion.replaced_by"] == "version 3"
    assert "| `test/accuracy` | 0.9950 | 0.9900 | +0.0050 | better |" in better.markdown()

    again = promote(better.candidate.run_id)
    assert not again.decision.promote
    assert "already" in again.decision.reason


def test_a_model_tested_on_other_images_does_not_replace_the_champion(mlflow_store):
    first = fake_pipeline_run(0.95, 0.90)
    promote(first)
    outcome = promote(fake_pipeline_run(0.99, 0.95, test_digest="my-folder-holdout"))
    assert outcome.decision.word == "kept"
    assert "measured on other data than the champion (test/accuracy)" in outcome.decision.reason
    assert champion_version() == "1"
    assert version_tags("2")["promotion.test/accuracy"] == "0.9900 vs 0.9500 (+0.0400, other data)"


def test_a_failed_export_verification_is_never_promoted(mlflow_store):
    outcome = promote(fake_pipeline_run(0.999, 0.999, export_ok=False))
    assert not outcome.decision.promote
    assert "torchscript export differs" in outcome.candidate.export_note
    assert outcome.champion_after is None


def test_the_run_is_found_by_its_prefect_flow_run_id_in_either_form(mlflow_store):
    run_id = fake_pipeline_run(0.99, 0.94, flow_run_id="0f6c4c1e-1111-2222-3333-444455556666")
    config = PromotionConfig()
    for given in ("0f6c4c1e-1111-2222-3333-444455556666", "prefect.flow-run.0f6c4c1e-1111-2222-3333-444455556666"):
        assert find_candidate.fn(None, given, config).run_id == run_id
    assert flow_run_uuid(" prefect.flow-run.abc ") == "abc"
    with pytest.raises(ConfigError, match="no MLflow run logged by Prefect flow run nope"):
        find_candidate.fn(None, "nope", config)
    with pytest.raises(ConfigError, match="no MLflow run 0123"):
        find_candidate.fn("0123", None, config)


def test_two_racing_promotions_leave_one_champion_the_better_and_both_decisions(mlflow_store, monkeypatch):
    """Both candidates beat the old champion; the better one must end up champion whichever goes
    first. Without the lock both would compare with the old champion and the last write would win."""
    promote(fake_pipeline_run(0.980, 0.930))  # version 1, the old champion
    better, lesser = fake_pipeline_run(0.995, 0.950), fake_pipeline_run(0.990, 0.940)  # versions 2 and 3
    read_champion = promotion.champion

    def slow_champion(config):  # widen the window between reading the champion and moving the alias
        found = read_champion(config)
        time.sleep(0.5)
        return found

    monkeypatch.setattr(promotion, "champion", slow_champion)
    outcomes, errors = {}, []

    def race(run_id: str, delay: float) -> None:
        time.sleep(delay)
        try:
            outcomes[run_id] = promote(run_id)
        except Exception as exc:  # noqa: BLE001  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(better, 0.0)), threading.Thread(target=race, args=(lesser, 0.1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert champion_version() == "2"
    assert version_tags("2")["promotion.decision"] == "promoted"
    assert version_tags("3")["promotion.decision"] == "kept"
    assert version_tags("3")["promotion.compared_with"] == "version 2"  # it waited for the first decision
    assert mlflow.MlflowClient().get_registered_model(MODEL).aliases == {"champion": 2}


def test_the_flow_publishes_the_decision_as_a_markdown_artifact(mlflow_store, prefect_server):
    from prefect.client.orchestration import get_client

    from flows.promote import promote as promote_flow

    run_id = fake_pipeline_run(0.99, 0.94)
    state: Any = promote_flow(run_id=run_id, return_state=True)  # the flow run's final State
    outcome = state.result()
    assert outcome.decision.promote
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    by_key = {a.key: a for a in artifact}
    markdown = by_key["promotion-decision"].data
    assert isinstance(markdown, str)
    assert "version 1: promoted" in markdown
    assert version_tags("1")["promotion.decided_by"].startswith("digitflow-promote flow run ")


def test_each_model_has_its_own_champion(mlflow_store):
    lenet = promote(fake_pipeline_run(0.990, 0.940))
    other = promote(fake_pipeline_run(0.980, 0.900, model="digitflow-tinynet"))  # worse than LeNet's: no matter
    assert other.candidate.model_name == "digitflow-tinynet"
    assert other.decision.promote
    assert other.champion_before is None
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("digitflow-tinynet", "champion").run_id == other.candidate.run_id
    assert champion_version() == lenet.candidate.version == "1"
