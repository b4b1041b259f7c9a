"""Parsing a sweep's search space, the grid, and how trials map onto the flow's keywords."""

from __future__ import annotations

import pytest

from digitflow.config.sweep_space import (
    Choice,
    Range,
    default_direction,
    describe,
    grid,
    parse_space,
    trial_parameters,
    workers_and_threads,
)
from digitflow.errors import ConfigError

KEYS = {"epochs", "batch_size", "optimizer", "augment", "seed", "train", "label_smoothing"}


def test_lists_and_ranges_parse_to_choices_and_ranges():
    space = parse_space(
        [
            "lr=0.02,0.05",
            "batch-size=64,128",
            "opt.momentum=0.8:0.99",
            "sched.T_max=int:2:8",
            "label_smoothing=log:0.01:0.2",
        ],
        KEYS,
    )
    assert space == {
        "lr": Choice((0.02, 0.05)),
        "batch_size": Choice((64, 128)),
        "opt.momentum": Range(0.8, 0.99),
        "sched.T_max": Range(2, 8, integer=True),
        "label_smoothing": Range(0.01, 0.2, log=True),
    }
    assert parse_space(["optimizer=SGD,AdamW"], KEYS)["optimizer"] == Choice(("SGD", "AdamW"))
    assert str(Range(16, 512, log=True, integer=True)) == "int:log:16:512"


def test_grid_is_every_combination_first_key_slowest():
    space = parse_space(["lr=0.02,0.05,0.1", "epochs=3,6"], KEYS)
    points = grid(space)
    assert len(points) == 6
    assert points[:3] == [{"lr": 0.02, "epochs": 3}, {"lr": 0.02, "epochs": 6}, {"lr": 0.05, "epochs": 3}]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["lr"], "is not KEY=VALUES"),
        (["colour=red"], "unknown option 'colour'"),
        (["train=mnist:train"], "train cannot be swept"),
        (["lr=0.1:0.01"], "the low bound must be below the high one"),
        (["lr=log:0:1"], "a log range needs a positive low bound"),
        (["epochs=int:1.5:3"], "an int range needs whole bounds"),
        (["lr=a:b"], "the bounds of a range must be numbers"),
        (["lr=cubic:1:2"], "a range is LOW:HIGH"),
        (["lr=0.1,0.2", "lr=0.3,0.4"], "lr is given twice"),
        (["epochs="], "has no values"),
    ],
)
def test_bad_items_are_one_line_config_errors(items, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_space(items, KEYS)


def test_a_grid_refuses_ranges():
    with pytest.raises(ConfigError, match="a grid takes listed values"):
        grid(parse_space(["lr=0.01:0.1"], KEYS))


def test_trial_parameters_put_lr_opt_and_sched_into_their_kwargs():
    base = {"train": "mnist:train", "optimizer_kwargs": {"momentum": 0.9}, "scheduler_kwargs": None, "epochs": None}
    params = trial_parameters(base, {"lr": 0.05, "opt.nesterov": True, "sched.T_max": 4, "epochs": 3})
    assert params == {
        "train": "mnist:train",
        "optimizer_kwargs": {"momentum": 0.9, "lr": 0.05, "nesterov": True},
        "scheduler_kwargs": {"T_max": 4},
        "epochs": 3,
    }
    assert base["optimizer_kwargs"] == {"momentum": 0.9}  # the base is not changed
    assert describe({"lr": 0.05, "augment": ["affine", "elastic"]}) == "lr=0.05 augment=affine+elastic"


def test_workers_share_the_cores_without_oversubscribing():
    assert workers_and_threads(cores=2, trials=6) == (2, 1)
    assert workers_and_threads(cores=8, trials=2) == (2, 4)
    assert workers_and_threads(cores=8, trials=6, workers=3) == (3, 2)
    assert workers_and_threads(cores=2, trials=6, workers=4) == (4, 1)
    with pytest.raises(ConfigError):
        workers_and_threads(cores=2, trials=6, workers=0)
    assert default_direction("test/accuracy") == "maximize"
    assert default_direction("test/loss") == "minimize"
