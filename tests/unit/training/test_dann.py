"""DANN (digitflow.training.dann): gradient reversal, both domains in every batch, target labels never read,
resume through the shared loop. Tiny random data, CPU, a few seconds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from digitflow.config import AdaptConfig, TrainConfig
from digitflow.models import LeNet
from digitflow.training.classifier import build_model
from digitflow.training.dann import DannStep, DomainClassifier, fit_dann, grad_reverse, ramp, recompute_batch_norm

TINY = TrainConfig(epochs=2, batch_size=8, device="cpu", amp=False)
ADAPT = AdaptConfig(method="dann", target="usps:test[:1000]", domain_hidden=16)


def tiny_domains(n_source: int = 24, n_target: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    source = torch.rand(n_source, 1, 28, 28, generator=g)
    labels = torch.arange(n_source) % 10
    target = torch.rand(n_target, 1, 28, 28, generator=g) * 0.5  # another "domain": darker images
    return source, labels, target


@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
def test_gradient_reversal_is_identity_forward_and_flips_and_scales_the_gradient(scale):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = grad_reverse(x, scale)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, -scale * w)


def test_lambda_ramps_from_zero_to_nearly_one():
    assert ramp(0.0) == 0.0
    assert 0.46 < ramp(0.1) < 0.47  # 2 / (1 + e^-1) - 1
    assert ramp(1.0) > 0.9999
    values = [ramp(p / 10) for p in range(11)]
    assert values == sorted(values)


@pytest.mark.parametrize("target_batch_norm", [True, False])
def test_every_dann_batch_holds_both_domains(target_batch_norm):
    source, labels, target = tiny_domains()
    torch.manual_seed(0)
    model, head = LeNet(), DomainClassifier(hidden=16)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01)
    adapt = dataclasses.replace(ADAPT, target_batch_norm=target_batch_norm, pseudo_label_weight=0.0)
    step = DannStep(model, head, optimizer, source, labels, target, total_steps=10, adapt=adapt)
    seen: list[torch.Tensor] = []
    model.features.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    domain_inputs: list[int] = []
    head.register_forward_hook(lambda _m, inputs, _out: domain_inputs.append(inputs[0].shape[0]))

    step.train()
    step.reset()
    idx = torch.tensor([3, 7, 11, 0, 5, 20])
    step(idx)

    images = torch.cat(seen) * model.std + model.mean  # what went into the network, un-normalised
    assert step.last_batch is not None
    source_idx, target_idx = step.last_batch
    assert torch.equal(source_idx, idx)
    assert target_idx.shape == idx.shape
    torch.testing.assert_close(images[: len(idx)], source[idx])
    torch.testing.assert_close(images[len(idx) :], target[target_idx])
    assert domain_inputs == [2 * len(idx)]  # the domain classifier sees a source half and a target half
    metrics = step.epoch_metrics(len(idx))
    assert 0 <= metrics["domain_accuracy"] <= 1
    assert metrics["domain_loss"] > 0


def _weights(**labels_kw) -> dict[str, torch.Tensor]:
    source, labels, target = tiny_domains()
    model = build_model(10, seed=0)
    out = fit_dann(model, source, labels, target, TINY, ADAPT)
    return {**out.target_model.state_dict(), **{f"head.{k}": v for k, v in out.domain_head.state_dict().items()}}


def test_training_is_reproducible_and_takes_no_target_labels():
    first, second = _weights(), _weights()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # fit_dann and DannStep have no parameter a target label could come through
    import inspect

    for fn in (fit_dann, DannStep.__init__):
        assert not any("target_label" in p for p in inspect.signature(fn).parameters)


def test_dann_reports_its_metrics_per_epoch_and_ramps_lambda():
    source, labels, target = tiny_domains()
    out = fit_dann(build_model(10, seed=0), source, labels, target, TINY, ADAPT)
    assert [r["epoch"] for r in out.history] == [1, 2]
    for record in out.history:
        assert {"loss", "accuracy", "domain_loss", "domain_accuracy", "lambda", "lr"} <= set(record)
    assert 0 < out.history[0]["lambda"] < out.history[1]["lambda"] <= 1
    assert not out.model.training
    assert not out.target_model.training
    assert out.target_model is not out.model  # AdaBN: target statistics on a copy


def test_adabn_uses_the_target_statistics_and_keeps_the_weights():
    _, _, target = tiny_domains()
    model = build_model(10, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recompute_batch_norm(model, target, batch_size=10)  # equal batches: the mean of means is exact
    bn = model.features[2]
    first = model.features[0]((target - model.mean) / model.std).relu()
    torch.testing.assert_close(bn.running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training


@pytest.mark.parametrize("teacher_ema", [0.0, 0.9])
def test_resume_continues_dann_to_the_same_weights(tmp_path, teacher_ema):
    source, labels, target = tiny_domains()
    adapt = dataclasses.replace(ADAPT, teacher_ema=teacher_ema, pseudo_label_threshold=0.0)
    full = fit_dann(build_model(10, seed=0), source, labels, target, TINY, adapt)

    path = tmp_path / "dann.pt"
    one = dataclasses.replace(TINY, epochs=2)

    class StopError(Exception):
        pass

    def stop(record):
        if record["epoch"] == 1:
            raise StopError

    with pytest.raises(StopError):
        fit_dann(build_model(10, seed=0), source, labels, target, one, adapt, checkpoint_path=path, on_epoch=stop)
    resumed = fit_dann(build_model(10, seed=0), source, labels, target, one, adapt, checkpoint_path=path, resume=True)
    assert resumed.resumed_from_epoch == 1
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_dann_adapts_any_model_with_a_feature_extractor_and_sizes_its_domain_head_to_it():
    from digitflow.training.dann import dann_unsupported_reason
    from tests.toy_models import FlatNet, TinyNet

    source, labels, target = tiny_domains()
    torch.manual_seed(0)
    model = TinyNet(10)  # 128 features, not LeNet's 800
    assert dann_unsupported_reason(model) is None
    assert dann_unsupported_reason(LeNet()) is None
    assert dann_unsupported_reason(FlatNet(10)) == "it has no features and no classifier submodule"
    out = fit_dann(model, source, labels, target, TINY, ADAPT)
    assert out.domain_head.state_dict()["net.1.weight"].shape == (16, 128)  # domain_hidden 16, 128 features
    assert len(out.history) == 2


def test_a_feature_extractor_that_is_not_the_model_s_path_is_refused():
    from digitflow.training.dann import dann_unsupported_reason
    from tests.toy_models import TinyNet

    model = TinyNet(10)
    model.forward = lambda x: model.classifier(model.features(x))  # type: ignore[method-assign]  # skips the normalisation
    assert dann_unsupported_reason(model) == "classifier(features(x)) is not what the model returns for x"
