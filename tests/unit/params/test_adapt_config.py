"""--adapt options: one-line errors before training (digitflow.params.run.build_config), params recorded."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from digitflow.config import AdaptConfig, flatten
from digitflow.data import registry
from digitflow.errors import ConfigError
from digitflow.params.run import build_config, checkpoint_path, source_only_config

ADAPT: dict[str, Any] = {
    "train": "mnist:test[:8000]",
    "device": "cpu",
    "adapt": "dann",
    "adapt_target": "usps:test[:1000]",
}


def test_adaptation_is_recorded_in_the_config_and_its_params():
    config = build_config(**ADAPT, adapt_options={"domain_weight": 0.5})
    assert config.adapt == AdaptConfig(method="dann", target="usps:test[:1000]", domain_weight=0.5)
    params = flatten(config)
    assert params["adapt.method"] == "dann"
    assert params["adapt.domain_weight"] == 0.5
    assert build_config(train="mnist:test[:8000]", device="cpu").adapt == AdaptConfig()


def test_an_adapted_run_checkpoints_apart_from_its_source_only_baseline(tmp_path):
    adapted = build_config(**ADAPT, output_dir=str(tmp_path))
    plain = dataclasses.replace(adapted, adapt=AdaptConfig())
    assert checkpoint_path(adapted, "d").name.startswith("lenet-dann-")
    assert checkpoint_path(plain, "d") != checkpoint_path(adapted, "d")
    assert source_only_config(adapted) == plain
    named = build_config(**ADAPT, checkpoint=str(tmp_path / "run.pt"))
    assert checkpoint_path(source_only_config(named), "d") == tmp_path / "run.source-only.pt"
    assert checkpoint_path(named, "d") == tmp_path / "run.pt"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adapt": None}, "--adapt-target needs --adapt METHOD (dann)"),
        ({"adapt_target": None}, "--adapt dann needs --adapt-target SPEC"),
        ({"adapt": "coral"}, "unknown adaptation method 'coral'"),
        ({"adapt_target": "fashion-mnist:test"}, "adapt between datasets of the same classes"),
        ({"adapt_options": {"lambda": 2}}, "unknown --adapt-opt lambda"),
        ({"adapt_options": {"pseudo_label_threshold": 2.0}}, "pseudo_label_threshold must be in [0, 1]"),
        ({"adapt_options": {"domain_weight": "x"}}, "wrong type"),
        ({"optimizer": "LBFGS"}, "--adapt does not work with --optimizer LBFGS"),
        ({"adv_train": "fgsm-rs"}, "--adapt and --adv-train cannot be combined"),
    ],
)
def test_bad_adaptation_input_is_a_one_line_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_config(**{**ADAPT, **kwargs})
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_a_target_with_another_number_of_classes_or_an_unframable_size_is_refused(monkeypatch):
    usps = registry.DATASETS["usps"]
    monkeypatch.setitem(registry.DATASETS, "usps", dataclasses.replace(usps, num_classes=5, classes=usps.classes[:5]))
    with pytest.raises(ConfigError, match=r"\(5: 0 - zero, \.\.\.\) are not those of mnist:test\[:8000\] \(10: "):
        build_config(**ADAPT)
    monkeypatch.setitem(registry.DATASETS, "usps", dataclasses.replace(usps, image_size=(0, 16)))
    with pytest.raises(ConfigError, match=r"0x16 images, which mnist-frame framing cannot bring to the model's 28x28"):
        build_config(**ADAPT)
