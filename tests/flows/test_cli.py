"""How ``digitflow run`` options become flow parameters (no flow is run here)."""

from __future__ import annotations

import re

import pytest

from digitflow.config import (
    AUGMENT_BY_FAMILY,
    BATCH_SIZE_BY_OPTIMIZER,
    OPTIMIZER_DEFAULTS,
    AugmentConfig,
    DataConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
)
from digitflow.errors import ConfigError
from digitflow.params.run import build_config, check_experiment, check_output_dir
from flows.cli import build_parser
from flows.cli.run import flow_parameters


def params(*argv: str) -> dict:
    return flow_parameters(build_parser().parse_args(["run", *argv]))


def config(*argv: str):
    """The RunConfig the flow builds from these options (what its params record)."""
    return build_config(**{k: v for k, v in params(*argv).items() if k != "experiment"})


def test_defaults_come_from_the_configs():
    p = params()
    assert p["optimizer"] == OptimizerConfig.name
    assert p["optimizer_kwargs"] is None  # filled in per device
    assert p["epochs"] is None
    assert p["batch_size"] is None
    assert p["amp"] is None
    assert p["cuda_graphs"] is None
    assert p["scheduler"] == SchedulerConfig.name
    assert p["test"] is p["target"] is p["augment"] is p["batch_size"] is None  # resolved by build_config
    c = config()
    assert (c.data.train, c.data.test, c.data.targets) == (DataConfig.train, DataConfig.test, DataConfig().targets)
    assert c.train.augment == AugmentConfig()
    assert c.train.batch_size == TrainConfig.batch_size


@pytest.mark.parametrize(
    ("train", "test", "targets"),
    [
        ("mnist:train", "mnist:test", ("usps:test",)),
        ("usps:train", "usps:test", ("mnist:test",)),
        ("fashion-mnist:train", "fashion-mnist:test", ()),
        ("kmnist:train[:50%]", "kmnist:test", ()),
        ("mnist:test[:8000]", "mnist:test[8000:]", ("usps:test",)),
        ("usps:test[1500:]", "usps:test[:1500]", ("mnist:test",)),
        ("mnist:test[10%:90%]", "mnist:test", ("usps:test",)),
    ],
)
def test_test_split_and_targets_follow_the_training_dataset(train, test, targets):
    c = config("--train", train)
    assert c.data.test == test
    assert c.data.targets == targets


def test_explicit_test_and_targets_win():
    c = config("--train", "fashion-mnist:train", "--test", "fashion-mnist:test[:100]", "--target", "mnist:test")
    assert c.data.test == "fashion-mnist:test[:100]"
    assert c.data.targets == ("mnist:test",)
    assert config("--no-target").data.targets == ()


@pytest.mark.parametrize(
    ("train", "family"),
    [
        ("mnist:train", "handwriting"),
        ("usps:test[:10]", "handwriting"),
        ("kmnist:train", "handwriting"),
        ("fashion-mnist:train", "clothing"),
    ],
)
def test_augmentation_defaults_by_dataset_family(train, family):
    assert config("--train", train).train.augment == AUGMENT_BY_FAMILY[family]


def test_explicit_augmentation_wins_over_the_family_default():
    assert config("--train", "fashion-mnist:train", "--augment", "affine").train.augment == AugmentConfig()
    assert config("--train", "fashion-mnist:train", "--augment", "hflip").train.augment == AugmentConfig(
        affine=False, hflip=True
    )
    none = config("--train", "mnist:train", "--no-augment").train.augment
    assert not (none.affine)
    assert not (none.elastic)
    assert not (none.hflip)
    assert not (none.extra)


def test_lbfgs_gets_its_own_defaults_and_opt_overrides_them():
    c = config("--optimizer", "LBFGS")
    assert c.train.optimizer.kwargs == OPTIMIZER_DEFAULTS["LBFGS"]
    assert c.train.batch_size == BATCH_SIZE_BY_OPTIMIZER["LBFGS"]
    assert OPTIMIZER_DEFAULTS["LBFGS"]["line_search_fn"] == "strong_wolfe"
    c = config("--optimizer", "LBFGS", "--opt", "line_search_fn=None", "--lr", "0.1", "--batch-size", "32")
    assert c.train.optimizer.kwargs == {**OPTIMIZER_DEFAULTS["LBFGS"], "line_search_fn": None, "lr": 0.1}
    assert c.train.batch_size == 32


def test_flow_parameters_left_unset_get_the_same_defaults():
    # a deployment or a Python call that gives only some parameters: the same rules as the CLI
    c = build_config(
        train="usps:train", epochs=1, optimizer="LBFGS", scheduler=None, amp=False, cache_dir="c", output_dir="o"
    )
    assert c.data.test == "usps:test"
    assert c.data.targets == ("mnist:test",)
    assert c.train.optimizer.kwargs == OPTIMIZER_DEFAULTS["LBFGS"]
    assert c.train.batch_size == BATCH_SIZE_BY_OPTIMIZER["LBFGS"]
    assert c.train.augment == AUGMENT_BY_FAMILY["handwriting"]


def test_data_dir_is_read_from_the_environment_when_the_run_starts(monkeypatch, tmp_path):
    # a deployment's flow run gets the worker's DIGITFLOW_DATA_DIR (data_dir left unset)
    monkeypatch.setenv("DIGITFLOW_DATA_DIR", str(tmp_path))
    assert config().data.data_dir == str(tmp_path)
    monkeypatch.delenv("DIGITFLOW_DATA_DIR")
    assert config().data.data_dir == DataConfig.data_dir


def test_output_dir_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as excinfo:
        check_output_dir(str(blocker / "out"))
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(blocker / "out") in message
    assert "--output-dir" in message
    check_output_dir(str(tmp_path / "new" / "out"))  # creatable: created
    assert (tmp_path / "new" / "out").is_dir()


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_experiment_name_is_refused(name):
    with pytest.raises(ConfigError, match=r"experiment name is empty.*--experiment"):
        check_experiment(name)
    check_experiment("digitflow")


def test_opt_and_lr_are_passed_as_given():
    # build_config adds them to the optimizer's defaults for the device (tests/unit/params/test_device_defaults.py)
    assert params("--opt", "weight_decay=1e-4")["optimizer_kwargs"] == {"weight_decay": 1e-4}
    given = params("--lr", "0.1", "--opt", "nesterov=True")
    assert (given["lr"], given["optimizer_kwargs"]) == (0.1, {"nesterov": True})  # lr: a flow parameter of its own
    assert config("--lr", "0.1", "--opt", "nesterov=True").train.optimizer.kwargs == {
        **OptimizerConfig().kwargs,
        "lr": 0.1,
        "nesterov": True,
    }
    assert config("--opt", "weight_decay=1e-4").train.optimizer.kwargs == {
        **OptimizerConfig().kwargs,
        "weight_decay": 1e-4,
    }


def test_another_optimizer_starts_from_torch_defaults():
    assert "Adam" not in OPTIMIZER_DEFAULTS
    assert params("--optimizer", "Adam")["optimizer_kwargs"] is None
    assert config("--optimizer", "Adam").train.optimizer.kwargs == {}
    assert config("--optimizer", "Adam", "--opt", "betas=(0.9, 0.99)", "--lr", "1e-3").train.optimizer.kwargs == {
        "betas": (0.9, 0.99),
        "lr": 1e-3,
    }


def test_amp_and_cuda_graphs_can_be_set_either_way():
    assert params("--amp")["amp"] is True
    assert params("--no-amp")["amp"] is False
    assert params("--cuda-graphs")["cuda_graphs"] is True
    assert params("--no-cuda-graphs")["cuda_graphs"] is False
    assert params("--label-smoothing", "0.1")["label_smoothing"] == 0.1


def test_param_groups_and_scheduler_options():
    p = params(
        "--param-group",
        "classifier:lr=0.001",
        "--param-group",
        "classifier:momentum=0.5",
        "--scheduler",
        "StepLR",
        "--sched",
        "step_size=2",
    )
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
    out = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(capsys.readouterr().out.split()))  # argparse wraps lines
    assert "usps:test[:50%]" in out
    assert "%%" not in out
    assert "usps:test after mnist; mnist:test after usps; none after fashion-mnist, kmnist" in out
    assert "affine for mnist, usps, kmnist" in out
    assert "for fashion-mnist" in out
    assert "1000 for LBFGS" in out
    assert "for LBFGS: line_search_fn=strong_wolfe" in out
