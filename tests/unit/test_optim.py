"""Optimizers and schedulers by name: defaults, kwargs, parameter groups, and the errors."""

import pytest
import torch

from digitflow.config import OptimizerConfig, SchedulerConfig
from digitflow.errors import ConfigError
from digitflow.models import LeNet
from digitflow.optim import build_optimizer, build_scheduler, optimizer_names, scheduler_names


@pytest.fixture(scope="module")
def model() -> LeNet:
    torch.manual_seed(0)
    return LeNet()


def _ids(params) -> list[int]:
    return [id(p) for p in params]


def _group_names(model, group) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in group["params"]}


def _covers_each_parameter_once(model, optimizer) -> None:
    seen = [i for g in optimizer.param_groups for i in _ids(g["params"])]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert sorted(seen) == sorted(_ids(model.parameters())), "a parameter is in no group"


def test_names_list_torch_optim_classes():
    names = optimizer_names()
    assert {"SGD", "Adam", "AdamW", "LBFGS", "RMSprop"} <= set(names)
    assert "Optimizer" not in names
    assert names == sorted(names)
    snames = scheduler_names()
    assert {"StepLR", "OneCycleLR", "CosineAnnealingLR", "ReduceLROnPlateau"} <= set(snames)
    assert "LRScheduler" not in snames and "_LRScheduler" not in snames


def test_default_config_is_sgd_with_momentum(model):
    opt = build_optimizer(model, OptimizerConfig())
    assert type(opt) is torch.optim.SGD
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == OptimizerConfig().kwargs["lr"] == 0.01
    assert group["momentum"] == OptimizerConfig().kwargs["momentum"] == 0.9
    _covers_each_parameter_once(model, opt)


@pytest.mark.parametrize("name, cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)])
def test_adam_family_by_name_with_kwargs(model, name, cls):
    cfg = OptimizerConfig(name=name, kwargs={"lr": 3e-4, "weight_decay": 0.05, "betas": (0.8, 0.95)})
    opt = build_optimizer(model, cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 3e-4
    assert group["weight_decay"] == 0.05
    assert tuple(group["betas"]) == (0.8, 0.95)
    _covers_each_parameter_once(model, opt)


def test_lbfgs_by_name(model):
    opt = build_optimizer(model, OptimizerConfig(name="LBFGS", kwargs={"lr": 0.5, "max_iter": 4}))
    assert type(opt) is torch.optim.LBFGS
    assert opt.param_groups[0]["max_iter"] == 4


def test_param_group_overrides_lr_for_its_prefix(model):
    cfg = OptimizerConfig(kwargs={"lr": 0.1, "momentum": 0.9}, param_groups={"classifier": {"lr": 1e-3}})
    opt = build_optimizer(model, cfg)
    assert len(opt.param_groups) == 2
    default, classifier = opt.param_groups
    assert default["lr"] == 0.1
    assert classifier["lr"] == 1e-3
    assert classifier["momentum"] == 0.9  # options not overridden come from kwargs
    assert _group_names(model, default) == {n for n, _ in model.named_parameters() if n.startswith("features")}
    assert _group_names(model, classifier) == {n for n, _ in model.named_parameters() if n.startswith("classifier")}
    _covers_each_parameter_once(model, opt)


def test_overlapping_prefixes_claim_each_parameter_once(model):
    cfg = OptimizerConfig(
        kwargs={"lr": 0.1},
        param_groups={"classifier.3": {"lr": 1e-4}, "classifier": {"lr": 1e-3}, "features.0": {"lr": 1e-2}},
    )
    opt = build_optimizer(model, cfg)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [0.1, 1e-4, 1e-3, 1e-2]  # default group first, then the prefixes in order
    assert _group_names(model, opt.param_groups[1]) == {"classifier.3.weight", "classifier.3.bias"}
    assert _group_names(model, opt.param_groups[2]) == {"classifier.1.weight", "classifier.1.bias"}
    assert _group_names(model, opt.param_groups[3]) == {"features.0.weight", "features.0.bias"}
    _covers_each_parameter_once(model, opt)


def test_groups_covering_everything_leave_no_empty_default_group(model):
    cfg = OptimizerConfig(param_groups={"features": {"lr": 0.2}, "classifier": {"lr": 0.3}})
    opt = build_optimizer(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.3]
    _covers_each_parameter_once(model, opt)


def test_unknown_optimizer_lists_valid_names(model):
    with pytest.raises(ConfigError) as info:
        build_optimizer(model, OptimizerConfig(name="Adamm"))
    msg = str(info.value)
    assert "'Adamm'" in msg
    for name in ("SGD", "Adam", "AdamW", "LBFGS"):
        assert name in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("SGD", {"lr": -1.0}),  # ValueError from torch
        ("SGD", {"lr": 0.1, "not_an_option": 1}),  # TypeError from torch
        ("Adam", {"betas": (2.0, 0.9)}),
    ],
)
def test_bad_optimizer_kwargs_are_config_errors(model, name, kwargs):
    with pytest.raises(ConfigError, match=rf"optimizer {name} rejected its options") as info:
        build_optimizer(model, OptimizerConfig(name=name, kwargs=kwargs))
    assert "\n" not in str(info.value)


def test_lbfgs_refuses_parameter_groups(model):
    cfg = OptimizerConfig(name="LBFGS", kwargs={"lr": 1.0}, param_groups={"classifier": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="LBFGS"):
        build_optimizer(model, cfg)


def test_prefix_matching_nothing_is_a_config_error(model):
    with pytest.raises(ConfigError) as info:
        build_optimizer(model, OptimizerConfig(param_groups={"head": {"lr": 1e-3}}))
    msg = str(info.value)
    assert "'head'" in msg
    assert "classifier" in msg and "features" in msg  # names the prefixes that would match


def test_no_scheduler_when_name_is_none(model):
    opt = build_optimizer(model, OptimizerConfig())
    assert build_scheduler(opt, SchedulerConfig()) is None
    assert build_scheduler(opt, SchedulerConfig(name=None, kwargs={"step_size": 1})) is None


def test_step_lr_by_name(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(name="StepLR", kwargs={"step_size": 2, "gamma": 0.5}))
    assert type(sched) is torch.optim.lr_scheduler.StepLR
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_one_cycle_lr_with_kwargs_drives_every_group(model):
    cfg = OptimizerConfig(kwargs={"lr": 0.1, "momentum": 0.9}, param_groups={"classifier": {"lr": 0.01}})
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(
        opt, SchedulerConfig(name="OneCycleLR", kwargs={"max_lr": 0.2, "total_steps": 10, "div_factor": 20.0})
    )
    assert type(sched) is torch.optim.lr_scheduler.OneCycleLR
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01])  # max_lr / div_factor
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] > 0.01


def test_reduce_lr_on_plateau_by_name(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(name="ReduceLROnPlateau", kwargs={"patience": 0, "factor": 0.5}))
    assert type(sched) is torch.optim.lr_scheduler.ReduceLROnPlateau
    sched.step(1.0)
    sched.step(1.0)  # no improvement, patience 0: halve
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_unknown_scheduler_lists_valid_names(model):
    opt = build_optimizer(model, OptimizerConfig())
    with pytest.raises(ConfigError) as info:
        build_scheduler(opt, SchedulerConfig(name="StepLr"))
    msg = str(info.value)
    assert "'StepLr'" in msg
    for name in ("StepLR", "OneCycleLR", "CosineAnnealingLR", "ReduceLROnPlateau"):
        assert name in msg


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("StepLR", {}),  # step_size is required: TypeError
        ("StepLR", {"step_size": 1, "bogus": 2}),
        ("OneCycleLR", {"max_lr": 0.1}),  # neither total_steps nor epochs: ValueError
        ("ReduceLROnPlateau", {"mode": "sideways"}),
    ],
)
def test_bad_scheduler_kwargs_are_config_errors(model, name, kwargs):
    opt = build_optimizer(model, OptimizerConfig())
    with pytest.raises(ConfigError, match=rf"scheduler {name} rejected its options") as info:
        build_scheduler(opt, SchedulerConfig(name=name, kwargs=kwargs))
    assert "\n" not in str(info.value)
