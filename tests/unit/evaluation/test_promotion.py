"""The promotion rule (digitflow.evaluation.promotion): pure, figures in, decision out."""

from __future__ import annotations

import pytest

from digitflow.config import PromotionConfig
from digitflow.evaluation.promotion import dataset_of, decide, select_figures

CONFIG = PromotionConfig(margin=0.001)
CHAMPION = {"test/accuracy": 0.990, "cross/usps/accuracy": 0.940, "test/loss": 0.03, "train/seconds": 5.0}


def verdicts(decision) -> dict[str, str]:
    return {f.name: f.verdict for f in decision.figures}


def test_the_figures_are_held_out_and_every_cross_domain_accuracy():
    metrics = {**CHAMPION, "cross/mnist/accuracy": 0.5, "cross/usps/class_3_accuracy": 0.9}
    assert list(select_figures(metrics, CONFIG.figures)) == [
        "cross/mnist/accuracy",
        "cross/usps/accuracy",
        "test/accuracy",
    ]


def test_the_first_model_becomes_champion():
    decision = decide({"test/accuracy": 0.5}, None, CONFIG)
    assert decision.promote
    assert "first" in decision.reason
    assert verdicts(decision) == {"test/accuracy": "new"}


def test_better_on_one_figure_and_no_worse_on_the_others_is_promoted():
    decision = decide({**CHAMPION, "test/accuracy": 0.9925, "cross/usps/accuracy": 0.9405}, CHAMPION, CONFIG)
    assert decision.promote
    assert verdicts(decision) == {"cross/usps/accuracy": "tied", "test/accuracy": "better"}
    assert decision.word == "promoted"
    assert "test/accuracy" in decision.reason


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        ({"test/accuracy": 0.995, "cross/usps/accuracy": 0.930}, "worse than the champion by more than 0.001 on cross"),
        ({"test/accuracy": 0.9905, "cross/usps/accuracy": 0.9395}, "not better"),  # inside the margin both ways
        ({"test/accuracy": 0.999}, "cross/usps/accuracy"),  # not tested on usps: missing blocks
    ],
)
def test_worse_tied_or_missing_keeps_the_champion(candidate, why):
    decision = decide(candidate, CHAMPION, CONFIG)
    assert not decision.promote
    assert decision.word == "kept"
    assert why in decision.reason


def test_figures_measured_on_other_images_do_not_compare_and_keep_the_champion():
    better = {"test/accuracy": 0.999, "cross/usps/accuracy": 0.990}  # better on both, by far
    same = {"dataset.test.digest": "aaa", "dataset.target.usps.digest": "uuu"}
    other_test = {**same, "dataset.test.digest": "bbb"}  # a folder's hold-out, say, against MNIST's test split
    decision = decide(better, CHAMPION, CONFIG, datasets=(other_test, same))
    assert not decision.promote
    assert verdicts(decision) == {"cross/usps/accuracy": "better", "test/accuracy": "other data"}
    assert decision.reason == "measured on other data than the champion (test/accuracy): the figures do not compare"
    assert decide(better, CHAMPION, CONFIG, datasets=(same, dict(same))).promote  # the same images: compared
    assert decide(better, CHAMPION, CONFIG, datasets=(other_test, {})).promote  # a run without digests: as before
    assert dataset_of("cross/usps/accuracy") == "dataset.target.usps.digest"
    assert dataset_of("robust/pgd/accuracy_eps10") == dataset_of("test/accuracy") == "dataset.test.digest"


def test_the_margin_decides_what_counts():
    candidate = {"test/accuracy": 0.9925, "cross/usps/accuracy": 0.940}
    assert decide(candidate, CHAMPION, PromotionConfig(margin=0.001)).promote
    assert not decide(candidate, CHAMPION, PromotionConfig(margin=0.005)).promote
    with pytest.raises(ValueError, match="margin"):
        decide(candidate, CHAMPION, PromotionConfig(margin=-1))


def test_the_figures_compared_are_configurable():
    candidate = {"test/accuracy": 0.999, "cross/usps/accuracy": 0.5}
    assert not decide(candidate, CHAMPION, CONFIG).promote
    assert decide(candidate, CHAMPION, PromotionConfig(figures=("test/accuracy",))).promote


def test_a_new_target_cannot_block_and_failed_export_always_blocks():
    candidate = {**CHAMPION, "test/accuracy": 0.995, "cross/kmnist/accuracy": 0.1}
    decision = decide(candidate, CHAMPION, CONFIG)
    assert decision.promote
    assert verdicts(decision)["cross/kmnist/accuracy"] == "new"
    failed = decide(candidate, CHAMPION, CONFIG, export_verified=False)
    assert not failed.promote
    assert "export" in failed.reason
    assert not decide(candidate, None, CONFIG, export_verified=False).promote


def test_a_candidate_without_figures_is_never_promoted():
    decision = decide({"test/loss": 0.1}, None, CONFIG)
    assert not decision.promote
    assert "none of the figures" in decision.reason


def test_figure_lines_show_both_values_and_the_difference():
    decision = decide({"test/accuracy": 0.9925, "cross/usps/accuracy": 0.94}, CHAMPION, CONFIG)
    lines = [f.line() for f in decision.figures]
    assert "test/accuracy: 0.9925 vs 0.9900 (+0.0025, better)" in lines
    assert decide({"test/accuracy": 0.5}, None, CONFIG).figures[0].line() == "test/accuracy: 0.5000 vs none (new)"
