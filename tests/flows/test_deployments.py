"""prefect.yaml: every deployment points at a real flow with parameters that flow accepts."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from digitflow.data import parse_spec

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"
DEPLOYMENTS = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_and_parameters_are_valid(deployment):
    module_path, _, name = deployment["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(module_path.removesuffix(".py").replace("/", ".")), name)
    params = flow.validate_parameters(deployment.get("parameters", {}))
    for key in ("train", "test"):
        parse_spec(params[key])
    for spec in params.get("target", []):
        parse_spec(spec)
    assert deployment["work_pool"]["name"] == "digitflow"


def test_a_schedule_and_a_trigger_on_another_deployment():
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert any("cron" in s for d in DEPLOYMENTS for s in d.get("schedules", []))
    triggered = [d for d in DEPLOYMENTS if d.get("triggers")]
    assert triggered
    for deployment in triggered:
        for trigger in deployment["triggers"]:
            assert trigger["expect"] == ["prefect.flow-run.Completed"]
            assert trigger["match_related"]["prefect.resource.name"] in by_name
