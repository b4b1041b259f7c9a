"""FID, coverage, entropy and confidence, checked against direct numpy/scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from digitflow.errors import ConfigError
from digitflow.evaluation.generative import (
    as_lenet,
    check_judge,
    class_metrics,
    coverage,
    feature_statistics,
    frechet_distance,
    histogram_metrics,
    judge_outputs,
)
from digitflow.models import LeNet


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook computation (as pytorch-fid does it): scipy's sqrtm of the covariance product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g) / math.sqrt(d)
    return (torch.randn(n, d, generator=g) @ mixing) * scale + shift  # correlated, like real features


def test_statistics_match_numpy():
    x = features(200, 6, seed=0).double()
    stats = feature_statistics(x)
    np.testing.assert_allclose(stats.mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-10, atol=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    stats = feature_statistics(features(300, 16, seed=1))
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_fid_grows_with_a_shift():
    both = features(1000, 8, seed=2)
    base, other = both[:500], both[500:]  # two samples of one distribution
    distances = [
        frechet_distance(feature_statistics(base), feature_statistics(other + shift)) for shift in (0.0, 0.5, 1.0, 2.0)
    ]
    assert distances == sorted(distances)
    assert distances[-1] > 10 * distances[0]
    # a pure mean shift adds |shift|^2 per dimension on top of the covariance term
    assert distances[3] - distances[0] == pytest.approx(8 * 4.0, rel=0.15)


@pytest.mark.parametrize(("n", "d", "shift", "scale"), [(400, 10, 0.3, 1.0), (300, 32, 0.0, 1.7), (50, 64, 1.0, 0.5)])
def test_fid_matches_scipy(n, d, shift, scale):
    a, b = features(n, d, seed=4), features(n, d, seed=5, shift=shift, scale=scale)
    ours = frechet_distance(feature_statistics(a), feature_statistics(b))
    # 50 samples in 64 dimensions: singular covariances, where sqrtm and the eigen route must still agree
    assert ours == pytest.approx(scipy_fid(a.double().numpy(), b.double().numpy()), rel=1e-6, abs=1e-6)


def test_coverage_and_entropy_on_hand_made_histograms():
    uniform = torch.full((10,), 100)
    assert coverage(uniform) == 10
    assert histogram_metrics(uniform)["entropy"] == pytest.approx(math.log(10))
    one_class = torch.tensor([1000, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert coverage(one_class) == 1
    assert histogram_metrics(one_class)["entropy"] == pytest.approx(0.0)
    # 2% is the threshold: 20 of 1000 counts, 19 does not
    skewed = torch.tensor([500, 300, 141, 20, 19, 10, 5, 3, 2, 0])
    assert coverage(skewed, min_share=0.02) == 4
    shares = skewed.double().numpy() / 1000
    expected = -(shares[shares > 0] * np.log(shares[shares > 0])).sum()
    assert histogram_metrics(skewed)["entropy"] == pytest.approx(expected)
    two_halves = torch.tensor([50, 50, 0, 0, 0, 0, 0, 0, 0, 0])
    assert histogram_metrics(two_halves)["entropy"] == pytest.approx(math.log(2))


def test_class_metrics_from_probabilities():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    got = class_metrics(probs, min_share=0.3)
    assert got["coverage"] == 1  # class 0 has 2/4; classes 1 and 2 1/4 each, under 0.3
    assert got["entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert got["confidence"] == pytest.approx((0.9 + 0.8 + 0.6 + 0.8) / 4)


def test_judge_features_are_lenets_penultimate_layer_eager_and_scripted():
    torch.manual_seed(0)
    judge = LeNet().eval()
    images = torch.rand(5, 1, 28, 28)
    feats, probs = judge_outputs(judge, images)
    assert feats.shape == (5, 500)
    assert feats.dtype == torch.float64
    with torch.no_grad():
        x = (images - judge.mean) / judge.std
        expected = judge.classifier[:3](judge.features(x))
        np.testing.assert_allclose(feats.numpy(), expected.double().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs.numpy(), torch.softmax(judge(images), 1).numpy(), rtol=1e-5, atol=1e-6)
    conv, _ = judge_outputs(judge, images, layer="conv")
    assert conv.shape == (5, 800)
    scripted = torch.jit.script(judge)
    feats_scripted, _ = judge_outputs(scripted, images)  # type: ignore[arg-type]  # a scripted LeNet works too
    np.testing.assert_allclose(feats_scripted.numpy(), feats.numpy(), rtol=1e-5, atol=1e-6)


def test_a_judge_in_any_saved_form_becomes_an_eager_lenet(tmp_path):
    torch.manual_seed(0)
    lenet = LeNet().eval()
    images = torch.rand(3, 1, 28, 28)
    program = torch.export.export(lenet, (images,)).module()  # what MLflow 3 logs a pytorch model as
    for saved in (lenet, torch.jit.script(lenet), program):
        judge = as_lenet(saved)
        torch.testing.assert_close(judge(images), lenet(images))
    with pytest.raises(ConfigError, match="not a digitflow LeNet classifier"):
        as_lenet(torch.nn.Linear(784, 10))


def test_a_judge_of_another_number_of_classes_or_kind_is_refused():
    check_judge(LeNet(num_classes=10), 10)
    with pytest.raises(ConfigError, match="predicts 26 classes, but the GAN's training data has 10"):
        check_judge(LeNet(num_classes=26), 10)
    with pytest.raises(ConfigError, match="not a digitflow LeNet classifier"):
        check_judge(torch.nn.Linear(784, 10), 10)  # type: ignore[arg-type]  # deliberately not a LeNet
