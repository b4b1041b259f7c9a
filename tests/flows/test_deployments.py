"""prefect.yaml: every deployment points at a real flow with parameters that flow accepts."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from digitflow.data import parse_spec
from digitflow.params.run import default_targets, default_test

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"
DEPLOYMENTS = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def load_flow(entrypoint: str):
    module_path, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module_path.removesuffix(".py").replace("/", ".")), name)


PIPELINES = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/pipeline.py:pipeline"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_every_parameter_set_binds_to_its_flows_signature(deployment):
    """The deployment's parameters and every trigger's parameters name arguments of the flow its
    entrypoint points at, with values the flow accepts (a template stands for a string)."""
    flow = load_flow(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    parameter_sets = [deployment.get("parameters", {})]
    parameter_sets += [t["parameters"] for t in deployment.get("triggers", []) if "parameters" in t]
    for params in parameter_sets:
        signature.bind_partial(**params)  # TypeError on a name the flow does not take
        flow.validate_parameters(params)  # a value of the wrong type
    assert deployment["work_pool"]["name"] == "digitflow"


@pytest.mark.parametrize("deployment", PIPELINES, ids=[d["name"] for d in PIPELINES])
def test_pipeline_deployments_name_valid_datasets(deployment):
    flow = load_flow(deployment["entrypoint"])
    params = flow.validate_parameters(deployment.get("parameters", {}))
    # unset test split and targets follow the training split, by the CLI's rules
    test = params.get("test") or default_test(params["train"])
    for spec in (params["train"], test, *(params.get("target") or default_targets(params["train"]))):
        parse_spec(spec)
    # the data folder comes from the worker's environment at run time, or from -p data_dir=...
    assert "data_dir" not in deployment.get("parameters", {})
    assert inspect.signature(flow.fn).parameters["data_dir"].default is None


def test_evaluate_and_promote_follows_the_nightly_run_and_receives_its_flow_run_id():
    from tasks.promotion import flow_run_uuid

    by_name = {d["name"]: d for d in DEPLOYMENTS}
    deployment = by_name["evaluate-and-promote"]
    assert deployment["entrypoint"] == "flows/promote.py:promote"
    [trigger] = deployment["triggers"]
    assert trigger["expect"] == ["prefect.flow-run.Completed"]
    assert trigger["match_related"] == {"prefect.resource.role": "deployment", "prefect.resource.name": "mnist-nightly"}
    assert trigger["parameters"] == {"flow_run_id": "{{ event.resource.id }}"}
    # what the template renders to for a flow-run event, which the flow takes as it is
    uuid = "5c8a0b6e-0000-4000-8000-000000000000"
    assert flow_run_uuid(f"prefect.flow-run.{uuid}") == uuid
    # Prefect's own check of the trigger's parameters (templates included) accepts them
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    DeploymentEventTrigger(**trigger)


def test_deployments_test_and_cross_test_as_their_descriptions_say():
    resolved = {
        d["name"]: (default_test(d["parameters"]["train"]), default_targets(d["parameters"]["train"]))
        for d in PIPELINES
    }
    assert resolved == {
        "mnist-nightly": ("mnist:test", ["usps:test"]),
        "usps-to-mnist": ("usps:test", ["mnist:test"]),
        "offline-test-files": ("mnist:test[8000:]", ["usps:test"]),
    }


def test_a_schedule_and_a_trigger_on_another_deployment():
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert any("cron" in s for d in DEPLOYMENTS for s in d.get("schedules", []))
    triggered = [d for d in DEPLOYMENTS if d.get("triggers")]
    assert triggered
    for deployment in triggered:
        for trigger in deployment["triggers"]:
            assert trigger["expect"] == ["prefect.flow-run.Completed"]
            assert trigger["match_related"]["prefect.resource.name"] in by_name


def test_the_gan_deployment_is_weekly_and_names_the_gan_flow():
    gan = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/gan.py:gan_pipeline"]
    assert [d["name"] for d in gan] == ["gan-weekly"]
    (schedule,) = gan[0]["schedules"]
    assert schedule["cron"].split()[2:] == ["*", "*", "0"]  # once a week, on Sundays
    nightly = {s["cron"] for d in DEPLOYMENTS if d["name"] == "mnist-nightly" for s in d["schedules"]}
    assert schedule["cron"] not in nightly  # a cron of its own


def test_the_prediction_deployment_scores_a_folder_nightly_with_the_champion():
    [deployment] = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/predict.py:predict"]
    assert deployment["name"] == "predict-nightly"
    (schedule,) = deployment["schedules"]
    assert schedule["cron"].split()[2:] == ["*", "*", "*"]  # every night
    params = load_flow(deployment["entrypoint"]).validate_parameters(deployment["parameters"])
    assert params["model"] == "models:/digitflow-lenet@champion"
    assert parse_spec(params["input"]).name == "folder"
    nightly = {s["cron"] for d in DEPLOYMENTS if d["name"] != "predict-nightly" for s in d.get("schedules", [])}
    assert schedule["cron"] not in nightly  # after the training night, not on top of it
