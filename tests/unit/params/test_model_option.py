"""--model: the spec reaches the config, names the registered model and the checkpoint, and a model that
cannot be used (a broken factory, no feature extractor for --adapt dann, a parameter group it lacks) is
a one-line error before any data is read."""

from __future__ import annotations

import pytest

from digitflow.config import flatten, train_defaults
from digitflow.errors import ConfigError
from digitflow.params.run import build_config, checkpoint_path

RUN = {"train": "mnist:test[:8000]", "device": "cpu"}


def test_the_default_model_is_lenet_registered_as_digitflow_lenet(tmp_path):
    config = build_config(**RUN, output_dir=str(tmp_path))
    assert config.train.model == "lenet"
    assert config.export.registered_model_name == "digitflow-lenet"
    assert checkpoint_path(config, "d").name.startswith("lenet-")


def test_a_user_model_is_recorded_and_names_its_registered_model_and_checkpoint(tmp_path):
    config = build_config(**RUN, model="tests.toy_models:tiny", output_dir=str(tmp_path))
    params = flatten(config)
    assert params["train.model"] == "tests.toy_models:tiny"
    assert params["export.registered_model_name"] == "digitflow-tiny"
    path = checkpoint_path(config, "d")
    assert path.name.startswith("tiny-")
    assert path != checkpoint_path(build_config(**RUN, output_dir=str(tmp_path)), "d")  # never a LeNet's file


def test_a_broken_factory_fails_before_the_run():
    with pytest.raises(ConfigError, match=r"the factory returned a str, not a torch\.nn\.Module"):
        build_config(**RUN, model="tests.toy_models:not_a_module")
    with pytest.raises(ConfigError, match=r"it must return float logits \(N, classes\) = \(2, 10\)"):
        build_config(**RUN, model="tests.toy_models:wrong_width")


def test_dann_needs_a_feature_extractor_and_says_so_in_one_line():
    adapt = {**RUN, "adapt": "dann", "adapt_target": "usps:test[:1000]"}
    assert build_config(**adapt, model="tests.toy_models:tiny").adapt.method == "dann"
    with pytest.raises(ConfigError) as info:
        build_config(**adapt, model="tests.toy_models:FlatNet")
    message = str(info.value)
    assert message.startswith("--adapt dann needs a feature extractor: submodules features and classifier")
    assert "the model FlatNet does not have one: it has no features and no classifier submodule" in message
    assert "\n" not in message


def test_parameter_groups_are_checked_against_the_chosen_model():
    build_config(**RUN, param_groups={"classifier": {"lr": 0.01}})  # LeNet has a classifier
    with pytest.raises(
        ConfigError, match="parameter group 'classifier' matches no parameter; top-level names are: linear"
    ):
        build_config(**RUN, model="tests.toy_models:FlatNet", param_groups={"classifier": {"lr": 0.01}})


def test_minivgg_trains_its_own_number_of_epochs_unless_told(tmp_path):
    assert build_config(**RUN).train.epochs == 6
    minivgg = build_config(**RUN, model="minivgg", output_dir=str(tmp_path))
    assert minivgg.train.epochs == 10
    assert minivgg.train.batch_size == 64  # the rest is the device's
    assert minivgg.export.registered_model_name == "digitflow-minivgg"
    assert checkpoint_path(minivgg, "d").name.startswith("minivgg-")
    assert build_config(**RUN, model="minivgg", epochs=3).train.epochs == 3  # an option given wins
    assert train_defaults("cuda", "minivgg").epochs == 10
    assert train_defaults("cuda", "minivgg").batch_size == train_defaults("cuda").batch_size
