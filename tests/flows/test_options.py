"""One definition per option: the CLI, the flows' signatures (Prefect's deployment form) and the config
all come from the option tables of digitflow.config.options."""

import argparse
import dataclasses
import inspect
import subprocess
import sys

import pytest
from prefect.utilities.callables import parameter_schema

from digitflow.config import flatten
from digitflow.config.options import GAN_OPTIONS, PREDICT_OPTIONS, PROMOTE_OPTIONS, RUN_OPTIONS, SWEEP_OPTIONS, Option
from digitflow.params.run import build_config, default_run_config
from flows.cli import build_parser
from flows.cli.options import OneLineErrorParser, add_options, flow_params
from flows.gan import gan_pipeline
from flows.pipeline import pipeline
from flows.predict import predict
from flows.promote import promote
from flows.signature import takes_options
from flows.sweep import sweep
from tracking.naming import parent_run_name


def subcommand(name: str) -> argparse.ArgumentParser:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


@pytest.mark.parametrize(
    ("flow", "options"),
    [
        (pipeline, RUN_OPTIONS),
        (gan_pipeline, GAN_OPTIONS),
        (sweep, SWEEP_OPTIONS),
        (promote, PROMOTE_OPTIONS),
        (predict, PREDICT_OPTIONS),
    ],
    ids=["pipeline", "gan", "sweep", "promote", "predict"],
)
def test_the_flow_takes_one_parameter_per_option_with_its_type_default_and_help(flow, options):
    signature = inspect.signature(flow.fn)
    assert list(signature.parameters) == [o.name for o in options]
    for option in options:
        parameter = signature.parameters[option.name]
        assert parameter.default == option.default
        assert parameter.annotation == option.annotation
    form = parameter_schema(flow.fn).model_dump()["properties"]
    assert {name: p.get("description") for name, p in form.items()} == {o.name: o.help for o in options}


@pytest.mark.parametrize(
    ("command", "options"), [("run", RUN_OPTIONS), ("gan", GAN_OPTIONS), ("promote", PROMOTE_OPTIONS)]
)
def test_the_cli_has_each_option_and_hands_the_flow_each_parameter(command, options):
    parser = subcommand(command)
    dests = {a.dest for a in parser._actions}
    assert {o.name for o in options} <= dests
    params = flow_params(parser.parse_args([]), options)
    assert list(params) == [o.name for o in options]
    assert params == {o.name: o.default for o in options}  # nothing given: the flow's own defaults


def test_adding_an_option_takes_its_definition_alone_to_reach_the_cli_and_the_flow():
    """What a new option costs outside the line that uses it and its test: one Option."""
    knob = Option("new_knob", int | None, None, "a new knob (default: off)", "training", value_type=int, metavar="N")
    options = (*RUN_OPTIONS[:3], knob)

    parser = OneLineErrorParser(prog="digitflow run")
    add_options(parser, options)
    assert "--new-knob N" in parser.format_help()
    assert flow_params(parser.parse_args(["--new-knob", "5"]), options)["new_knob"] == 5

    @takes_options(options)
    def flow_fn(**params):
        """A flow."""
        return params

    assert inspect.signature(flow_fn).parameters["new_knob"].default is None
    form = parameter_schema(flow_fn).model_dump()["properties"]
    assert form["new_knob"]["description"] == "a new knob (default: off)"


def test_the_relative_step_of_adversarial_training_has_an_option_that_reaches_config_and_run_name():
    parser = subcommand("run")
    params = flow_params(parser.parse_args(["--adv-train", "pgd", "--adv-relative-step", "0.5"]), RUN_OPTIONS)
    config = build_config(**params)
    assert config.train.adversarial.relative_step == 0.5
    assert "adv-relative-step=0.5" in parent_run_name(config, default_run_config(config))
    assert pipeline.validate_parameters({"adv_train": "pgd", "adv_relative_step": 0.5})["adv_relative_step"] == 0.5


def test_the_model_has_an_option_that_reaches_config_run_name_and_registered_name(command):
    parser = subcommand("run")
    params = flow_params(parser.parse_args(["--model", "tests.toy_models:TinyNet"]), RUN_OPTIONS)
    config = build_config(**params)
    assert config.train.model == "tests.toy_models:TinyNet"
    assert config.export.registered_model_name == "digitflow-tinynet"
    assert parent_run_name(config, default_run_config(config)).startswith("TinyNet mnist:train epochs=")
    assert pipeline.validate_parameters({"model": "lenet"})["model"] == "lenet"
    code, _, err = command("run", "--model", "tests.toy_models:not_a_module")
    assert code == 2
    assert err.strip().splitlines() == [
        "digitflow: error: --model tests.toy_models:not_a_module: the factory returned a str, not a torch.nn.Module"
    ]


def test_export_formats_have_an_option_that_reaches_config_and_run_name(command):
    parser = subcommand("run")
    params = flow_params(parser.parse_args(["--export-formats", "export,aoti"]), RUN_OPTIONS)
    config = build_config(**params)
    assert config.export.formats == ("torchscript", "export", "aoti")  # TorchScript always: it is registered
    assert build_config().export.formats == ("torchscript", "export")
    assert flatten(config)["export.formats"] == ["torchscript", "export", "aoti"]  # the run's MLflow params
    assert "aoti" not in parent_run_name(config, default_run_config(config))  # a file more, the same model
    assert pipeline.validate_parameters({"export_formats": "aoti"})["export_formats"] == "aoti"
    code, _, err = command("run", "--export-formats", "torchscript,onnx")
    assert code == 2
    assert "unknown export format 'onnx'; valid formats: torchscript, export, aoti" in err


def test_lr_is_a_flat_parameter_that_wins_over_opt_lr():
    config = build_config(lr=0.01, optimizer_kwargs={"lr": 0.2, "momentum": 0.5})
    assert config.train.optimizer.kwargs == {"lr": 0.01, "momentum": 0.5}


def test_the_sweep_command_fills_the_flows_search_parameters_from_its_shorthands():
    from flows.cli.sweep import sweep_parameters

    parser = subcommand("sweep")
    params = sweep_parameters(parser.parse_args(["--optuna", "4", "--space", "lr=log:0.01:0.1", "--no-prune"]))
    assert (params["kind"], params["trials"], params["space"], params["prune"]) == (
        "optuna",
        4,
        ["lr=log:0.01:0.1"],
        False,
    )
    assert params["fixed"]["train"] == "mnist:train"  # the run's options, fixed for every trial
    assert set(params) == {o.name for o in SWEEP_OPTIONS}
    grid = sweep_parameters(parser.parse_args(["--grid", "lr=0.01,0.1", "--no-export"]))
    assert (grid["kind"], grid["space"], grid["export_best"]) == ("grid", ["lr=0.01,0.1"], False)


def test_promote_needs_one_run_named_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "flows", "promote", "--margin", "0.01"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "digitflow: error: promote needs one of --run-id ID and --flow-run-id ID"
    ]


def test_flat_deployment_parameters_are_validated_by_type():
    from prefect.exceptions import ParameterTypeError

    assert pipeline.validate_parameters({"train": "mnist:train", "epochs": 3})["epochs"] == 3
    with pytest.raises(ParameterTypeError):
        pipeline.validate_parameters({"epochs": "three"})
    with pytest.raises(Exception, match="no_such"):  # an unknown name binds to no parameter
        pipeline.validate_parameters({"no_such": 1})


def test_help_answers_without_importing_torch_prefect_or_mlflow():
    code = (
        "import sys\nfrom flows.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--adv-relative-step" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_option_help_is_what_the_cli_shows():
    help_text = " ".join(subcommand("gan").format_help().split())
    for option in GAN_OPTIONS:
        assert " ".join(option.help.split())[:40] in help_text, option.name
    assert dataclasses.is_dataclass(GAN_OPTIONS[0])
