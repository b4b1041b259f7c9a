"""How ``digitflow run`` options become flow parameters (no flow is run here)."""

from __future__ import annotations

import pytest

from digitflow.config import OptimizerConfig, SchedulerConfig
from flows.cli import build_parser, flow_parameters
from flows.params import DEFAULT_AUGMENT


def params(*argv: str) -> dict:
    return flow_parameters(build_parser().parse_args(["run", *argv]))


def test_defaults_come_from_the_configs():
    p = params()
    assert p["optimizer"] == OptimizerConfig.name
    assert p["optimizer_kwargs"] is None  # filled in per device
    assert p["epochs"] is None
    assert p["batch_size"] is None
    assert p["amp"] is None
    assert p["cuda_graphs"] is None
    assert p["scheduler"] == SchedulerConfig.name
    assert p["augment"] == DEFAULT_AUGMENT


def test_opt_and_lr_are_passed_as_given():
    assert params("--opt", "weight_decay=1e-4")["optimizer_kwargs"] == {"weight_decay": 1e-4}
    assert params("--lr", "0.1", "--opt", "nesterov=True")["optimizer_kwargs"] == {"lr": 0.1, "nesterov": True}
    assert params("--optimizer", "Adam", "--opt", "betas=(0.9, 0.99)", "--lr", "1e-3")["optimizer_kwargs"] == {
        "betas": (0.9, 0.99), "lr": 1e-3,
    }


def test_amp_and_cuda_graphs_can_be_set_either_way():
    assert params("--amp")["amp"] is True
    assert params("--no-amp")["amp"] is False
    assert params("--cuda-graphs")["cuda_graphs"] is True
    assert params("--no-cuda-graphs")["cuda_graphs"] is False
    assert params("--label-smoothing", "0.1")["label_smoothing"] == 0.1


def test_param_groups_and_scheduler_options():
    p = params("--param-group", "classifier:lr=0.001", "--param-group", "classifier:momentum=0.5",
               "--scheduler", "StepLR", "--sched", "step_size=2")
    assert p["param_groups"] == {"classifier": {"lr": 0.001, "momentum": 0.5}}
    assert p["scheduler"] == "StepLR"
    assert p["scheduler_kwargs"] == {"step_size": 2}


def test_no_target_and_no_augment():
    p = params("--no-target", "--no-augment")
    assert p["target"] == []
    assert p["augment"] == []


def test_help_shows_specs_as_typed(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    assert "usps:test[:50%]" in out
    assert "%%" not in out
