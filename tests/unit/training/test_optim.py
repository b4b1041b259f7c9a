"""Optimizers and schedulers by name: defaults, kwargs, parameter groups, horizons, and the errors."""

import inspect

import pytest
import torch

from digitflow.config import OptimizerConfig, SchedulerConfig
from digitflow.errors import ConfigError
from digitflow.models import LeNet
from digitflow.training.optim import (
    HORIZON_ARGUMENTS,
    build_optimizer,
    build_scheduler,
    optimizer_names,
    scheduler_names,
)


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
    assert "LRScheduler" not in snames
    assert "_LRScheduler" not in snames


def test_default_config_is_sgd_with_momentum(model):
    defaults = OptimizerConfig().kwargs
    assert OptimizerConfig.name == "SGD"
    assert defaults["lr"] > 0
    assert defaults["momentum"] > 0
    opt = build_optimizer(model, OptimizerConfig())
    assert type(opt) is torch.optim.SGD
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == defaults["lr"]
    assert group["momentum"] == defaults["momentum"]
    assert all(group[key] == value for key, value in defaults.items())  # every default option reaches torch
    _covers_each_parameter_once(model, opt)


@pytest.mark.parametrize(("name", "cls"), [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)])
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
    ("name", "kwargs"),
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
    assert "classifier" in msg  # names the prefixes that would match
    assert "features" in msg


def test_no_scheduler_when_name_is_none(model):
    opt = build_optimizer(model, OptimizerConfig())
    assert build_scheduler(opt, SchedulerConfig(name=None)) is None
    assert build_scheduler(opt, SchedulerConfig(name=None), epochs=5) is None
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
    ("name", "kwargs"),
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


# --- horizon arguments default to the run's length --------------------------------------------------


def test_default_scheduler_anneals_over_the_given_epochs(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(), epochs=4)
    default_name = SchedulerConfig().name
    assert default_name is not None  # the default config names a scheduler
    assert sched is not None
    assert type(sched) is getattr(torch.optim.lr_scheduler, default_name)
    lrs = []
    for _ in range(4):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # annealed to eta_min exactly at the last epoch
    assert lrs == sorted(lrs, reverse=True)


def test_cosine_without_t_max_gets_t_max_from_epochs(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    config = SchedulerConfig(name="CosineAnnealingLR", kwargs={"eta_min": 0.01})
    sched = build_scheduler(opt, config, epochs=7)
    assert type(sched) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert sched.T_max == 7
    assert sched.eta_min == 0.01  # the given options are kept
    assert config.kwargs == {"eta_min": 0.01}  # the config itself is not modified


def test_explicit_t_max_is_kept(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(name="CosineAnnealingLR", kwargs={"T_max": 3}), epochs=7)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert sched.T_max == 3


def test_linear_lr_total_iters_defaults_to_epochs(model):
    # LinearLR has its own default (total_iters=5); with epochs given, the run's length wins
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(name="LinearLR"), epochs=9)
    assert isinstance(sched, torch.optim.lr_scheduler.LinearLR)
    assert sched.total_iters == 9
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(name="LinearLR", kwargs={"total_iters": 2}), epochs=9)
    assert isinstance(sched, torch.optim.lr_scheduler.LinearLR)
    assert sched.total_iters == 2


def test_one_cycle_lr_gets_total_steps_from_epochs(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    sched = build_scheduler(opt, SchedulerConfig(name="OneCycleLR", kwargs={"max_lr": 0.2}), epochs=6)
    assert type(sched) is torch.optim.lr_scheduler.OneCycleLR
    assert sched.total_steps == 6
    for _ in range(6):  # stepping exactly once per epoch runs the whole cycle without overrunning it
        opt.step()
        sched.step()


def test_scheduler_without_horizon_arguments_is_unaffected(model):
    assert not set(HORIZON_ARGUMENTS) & set(inspect.signature(torch.optim.lr_scheduler.StepLR).parameters)
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    config = SchedulerConfig(name="StepLR", kwargs={"step_size": 2, "gamma": 0.5})
    sched = build_scheduler(opt, config, epochs=10)
    assert type(sched) is torch.optim.lr_scheduler.StepLR
    assert sched.step_size == 2
    assert sched.gamma == 0.5
    assert not any(hasattr(sched, arg) for arg in HORIZON_ARGUMENTS)
    assert config.kwargs == {"step_size": 2, "gamma": 0.5}
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    plateau = build_scheduler(opt, SchedulerConfig(name="ReduceLROnPlateau", kwargs={"patience": 0}), epochs=10)
    assert type(plateau) is torch.optim.lr_scheduler.ReduceLROnPlateau


def test_no_epochs_leaves_the_kwargs_untouched(model):
    opt = build_optimizer(model, OptimizerConfig(kwargs={"lr": 0.1}))
    # nothing is filled in: the required T_max is still missing, and LinearLR keeps torch's default
    with pytest.raises(ConfigError, match=r"scheduler CosineAnnealingLR rejected its options \{\}"):
        build_scheduler(opt, SchedulerConfig(name="CosineAnnealingLR"))
    with pytest.raises(ConfigError, match="scheduler OneCycleLR rejected its options"):
        build_scheduler(opt, SchedulerConfig(name="OneCycleLR", kwargs={"max_lr": 0.2}), epochs=None)
    linear_default = inspect.signature(torch.optim.lr_scheduler.LinearLR).parameters["total_iters"].default
    linear = build_scheduler(opt, SchedulerConfig(name="LinearLR"))
    assert isinstance(linear, torch.optim.lr_scheduler.LinearLR)
    assert linear.total_iters == linear_default
    cosine = build_scheduler(opt, SchedulerConfig(name="CosineAnnealingLR", kwargs={"T_max": 3}))
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert cosine.T_max == 3
