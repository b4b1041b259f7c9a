"""Typed configs: flatten to dotted keys, to_dict, consistent defaults."""

import dataclasses
import json

import pytest
import torch

from digitflow.config import (
    AUGMENT_BY_FAMILY,
    BATCH_SIZE_BY_OPTIMIZER,
    DATASET_FAMILIES,
    DEFAULT_TARGETS,
    OPTIMIZER_DEFAULTS,
    AdaptConfig,
    AdversarialTrainingConfig,
    AugmentConfig,
    DataConfig,
    ExportConfig,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
    TrainConfig,
    flatten,
    to_dict,
)
from digitflow.data import DATASETS, parse_spec

ALL_CONFIGS = [
    DataConfig,
    AugmentConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    ExportConfig,
    AdaptConfig,
    RunConfig,
]


def _custom() -> RunConfig:
    return RunConfig(
        data=DataConfig(train="mnist:train[:1000]", targets=("usps:test", "kmnist:test"), offline=True),
        train=TrainConfig(
            epochs=2,
            batch_size=32,
            seed=7,
            device="cpu",
            amp=False,
            optimizer=OptimizerConfig(
                name="AdamW", kwargs={"lr": 3e-4, "weight_decay": 0.01}, param_groups={"classifier": {"lr": 1e-3}}
            ),
            scheduler=SchedulerConfig(name="StepLR", kwargs={"step_size": 1, "gamma": 0.5}),
            augment=AugmentConfig(elastic=False, degrees=5.0, extra=("RandomErasing",)),
        ),
        export=ExportConfig(mode="trace", verify_images=16),
        output_dir="out",
        resume=True,
    )


def test_flatten_gives_dotted_keys_down_to_optimizer_kwargs():
    flat = flatten(_custom())
    assert flat["train.optimizer.kwargs.lr"] == 3e-4
    assert flat["train.optimizer.kwargs.weight_decay"] == 0.01
    assert flat["train.optimizer.param_groups.classifier.lr"] == 1e-3
    assert flat["train.scheduler.kwargs.step_size"] == 1
    assert flat["train.optimizer.name"] == "AdamW"
    assert flat["train.epochs"] == 2
    assert flat["data.targets"] == ["usps:test", "kmnist:test"]  # tuples become lists
    assert flat["train.augment.extra"] == ["RandomErasing"]
    assert flat["output_dir"] == "out"
    assert flat["resume"] is True
    assert "train.optimizer.kwargs" not in flat  # the parent of flattened keys is not a key itself
    assert not any(isinstance(v, dict) and v for v in flat.values())  # nothing left to flatten
    assert not any(isinstance(v, tuple) for v in flat.values())


def test_flatten_covers_every_leaf_field():
    flat = flatten(RunConfig())
    expected = set()
    for section in ("data", "train", "export", "robustness"):
        for f in dataclasses.fields(getattr(RunConfig(), section)):
            if f.name not in ("optimizer", "scheduler", "augment", "adversarial"):
                expected.add(f"{section}.{f.name}")
    expected |= {f"train.augment.{f.name}" for f in dataclasses.fields(AugmentConfig)}
    expected |= {f"train.adversarial.{f.name}" for f in dataclasses.fields(AdversarialTrainingConfig)}
    expected |= {"train.optimizer.name", "train.optimizer.kwargs.lr", "train.optimizer.kwargs.momentum"}
    expected |= {"train.scheduler.name", "train.scheduler.kwargs", "output_dir", "resume"}
    assert expected <= set(flat)
    assert flat["train.scheduler.name"] == SchedulerConfig.name
    assert flat["train.scheduler.kwargs"] == {}  # empty kwargs are kept as a param
    no_scheduler = flatten(RunConfig(train=TrainConfig(scheduler=SchedulerConfig(name=None))))
    assert "train.scheduler.name" in no_scheduler
    assert no_scheduler["train.scheduler.name"] is None


def test_flatten_with_prefix():
    flat = flatten(TrainConfig(epochs=3), prefix="train.")
    assert flat["train.epochs"] == 3
    assert flat["train.optimizer.kwargs.lr"] == OptimizerConfig().kwargs["lr"]
    assert flat["train.optimizer.kwargs.momentum"] == OptimizerConfig().kwargs["momentum"]
    assert all(key.startswith("train.") for key in flat)


def test_to_dict_is_plain_and_json_safe():
    tree = to_dict(_custom())
    assert isinstance(tree["train"]["optimizer"], dict)
    assert tree["data"]["targets"] == ["usps:test", "kmnist:test"]
    assert json.loads(json.dumps(tree)) == tree


def test_to_dict_is_weights_only_safe(tmp_path):
    tree = to_dict(_custom())
    torch.save(tree, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True) == tree


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_class_attribute_defaults_match_instances(cls):
    # digitflow/params/run.py and flows/cli/ read defaults as class attributes (e.g. ``DataConfig.data_dir``)
    instance = cls()
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            assert getattr(cls, f.name) == getattr(instance, f.name), f.name
        else:
            assert f.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{f.name} has no default"
            assert getattr(instance, f.name) == f.default_factory()


def test_default_values_are_coherent():
    assert TrainConfig.epochs == TrainConfig().epochs >= 1
    assert TrainConfig.batch_size == TrainConfig().batch_size >= 1
    assert RunConfig().train == TrainConfig()
    assert OptimizerConfig().kwargs["lr"] > 0
    a = AugmentConfig()
    assert 0 < a.scale_min <= 1 <= a.scale_max
    assert 0 <= a.translate < 1
    for spec in (DataConfig.train, DataConfig.test, *DataConfig.targets):
        parse_spec(spec)  # every default dataset spec is valid
    assert ExportConfig.mode in ("script", "trace")


def test_default_factories_do_not_share_mutable_state():
    a, b = OptimizerConfig(), OptimizerConfig()
    assert a.kwargs == b.kwargs
    assert a.kwargs is not b.kwargs
    defaults = dict(a.kwargs)
    assert defaults["lr"] != 123.0
    a.kwargs["lr"] = 123.0
    assert OptimizerConfig().kwargs == defaults
    assert b.kwargs == defaults


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3  # type: ignore[misc]


def test_every_dataset_has_default_targets_and_an_augmentation_family():
    assert set(DEFAULT_TARGETS) == set(DATASETS) == set(DATASET_FAMILIES)
    assert set(DATASET_FAMILIES.values()) == set(AUGMENT_BY_FAMILY)
    for name, specs in DEFAULT_TARGETS.items():
        assert all(parse_spec(spec).name != name for spec in specs)  # another domain, never the same one
    # DataConfig's own defaults are what the rules give for its training set
    assert DataConfig().targets == DEFAULT_TARGETS[parse_spec(DataConfig.train).name]
    assert AUGMENT_BY_FAMILY[DATASET_FAMILIES[parse_spec(DataConfig.train).name]] == AugmentConfig()


def test_optimizer_defaults_name_real_optimizers():
    from digitflow.training.optim import optimizer_names

    assert set(OPTIMIZER_DEFAULTS) | set(BATCH_SIZE_BY_OPTIMIZER) <= set(optimizer_names())
    assert OptimizerConfig.name not in OPTIMIZER_DEFAULTS  # its defaults are OptimizerConfig's own
    assert all(size >= 1 for size in BATCH_SIZE_BY_OPTIMIZER.values())
