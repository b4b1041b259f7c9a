"""--model specs: built-in names and a user's package.module:Factory, its names, and the one-line errors
of a factory that cannot be imported, does not build a module, or builds one that breaks the contract."""

from __future__ import annotations

import sys

import pytest
import torch

from digitflow.errors import ConfigError
from digitflow.models import LeNet
from digitflow.models.factory import (
    BUILTIN_MODELS,
    check_model,
    create_model,
    model_label,
    model_name,
    registered_model_name,
)
from tests.toy_models import TinyNet


def test_a_builtin_name_builds_that_model_with_the_seed_s_weights():
    a, b, c = (create_model("lenet", 10, seed=seed) for seed in (3, 3, 4))
    assert isinstance(a, LeNet)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.state_dict()["features.0.weight"], c.state_dict()["features.0.weight"])


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_every_builtin_model_keeps_the_contract(name):
    model = create_model(name, 7)
    check_model(model, 7, name)
    assert model_name(name) == name
    assert registered_model_name(name) == f"digitflow-{name}"


def test_a_user_factory_function_or_class_is_imported_and_named_after_itself():
    model = create_model("tests.toy_models:tiny", 4)
    assert isinstance(model, TinyNet)
    check_model(model, 4, "tests.toy_models:tiny")
    assert isinstance(create_model("tests.toy_models:TinyNet", 4), TinyNet)
    assert model_name("tests.toy_models:TinyNet") == "tinynet"
    assert model_label("tests.toy_models:TinyNet") == "TinyNet"
    assert registered_model_name("tests.toy_models:tiny") == "digitflow-tiny"
    assert model_label("lenet") == "LeNet"


def test_a_module_beside_where_the_run_starts_imports(tmp_path, monkeypatch):
    (tmp_path / "my_digit_models.py").write_text(
        "from torch import nn\n"
        "def Net(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_digit_models", raising=False)
    before = list(sys.path)
    model = create_model("my_digit_models:Net", 10)
    check_model(model, 10, "my_digit_models:Net")
    assert sys.path == before  # the current folder was on it for the import only
    sys.modules.pop("my_digit_models", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet", r"--model 'resnet' is neither a built-in model \(lenet\b.*\) nor package.module:Factory"),
        ("tests.toy_models", "neither a built-in model"),
        ("tests.no_such_module:Net", r"--model tests.no_such_module:Net: cannot import tests.no_such_module "
         r"\(ModuleNotFoundError: No module named 'tests.no_such_module'\)"),
        ("tests.toy_models:Missing", "--model tests.toy_models:Missing: tests.toy_models has no Missing"),
        ("tests.toy_models:NOT_CALLABLE", "NOT_CALLABLE is a int, not a function or class that takes the number"),
        ("tests.toy_models:failing", r"the factory failed for 10 classes \(ValueError: no model for 10 classes\)"),
        ("tests.toy_models:not_a_module", "the factory returned a str, not a torch.nn.Module"),
    ],
)  # fmt: skip
def test_a_factory_that_builds_no_model_is_one_line(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        create_model(spec, 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.toy_models:wrong_width", r"returned torch.float32 \(2, 11\) for a \(2, 1, 28, 28\) batch; it must "
         r"return float logits \(N, classes\) = \(2, 10\)"),
        ("tests.toy_models:wants_rgb", r"the model fails on a batch of shape \(2, 1, 28, 28\) \(RuntimeError: "),
    ],
)  # fmt: skip
def test_a_model_that_breaks_the_contract_is_one_line(spec, message):
    model = create_model(spec, 10)
    with pytest.raises(ConfigError, match=message) as info:
        check_model(model, 10, spec)
    assert "\n" not in str(info.value)


def test_the_check_leaves_the_model_s_mode_weights_and_the_global_rng_alone():
    model = create_model("lenet", 10, seed=0).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_model(model, 10, "lenet")
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
