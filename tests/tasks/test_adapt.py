"""Target labels are never read: the train task's path to the unlabeled target images, from the official
file format, gives the same DANN weights when the target file's labels are shuffled."""

from __future__ import annotations

import numpy as np
import torch

from digitflow.config import AdaptConfig, DataConfig, TrainConfig
from digitflow.data import prepare
from digitflow.training.classifier import build_model
from digitflow.training.dann import fit_dann
from tasks.data import adaptation_images
from tests.fakedata import fake_data_dir, fake_split, patch_registry, write_usps

TINY = TrainConfig(epochs=2, batch_size=8, device="cpu", amp=False)
ADAPT = AdaptConfig(method="dann", target="usps:test[:20]", domain_hidden=16)


def adapted_weights(data_dir, cache_dir) -> tuple[str, dict[str, torch.Tensor]]:
    config = DataConfig(data_dir=str(data_dir), cache_dir=str(cache_dir), offline=True)
    target = prepare("usps:test[:20]", config.data_dir, config.cache_dir, offline=True)
    images = adaptation_images(target, config, "cpu")
    g = torch.Generator().manual_seed(0)
    source, labels = torch.rand(24, 1, 28, 28, generator=g), torch.arange(24) % 10
    out = fit_dann(build_model(10, seed=0), source, labels, images, TINY, ADAPT)
    return target.digest, {**out.target_model.state_dict(), **out.domain_head.state_dict()}


def test_shuffled_target_labels_give_the_same_weights(tmp_path, monkeypatch):
    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("usps",))
    digest, weights = adapted_weights(data_dir, tmp_path / "cache")

    images, labels = fake_split("usps", "test")
    shuffled = np.random.default_rng(1).permutation(labels)
    assert (shuffled != labels).any()
    write_usps(data_dir / "USPS" / "usps.t.bz2", images, shuffled)
    patch_registry(monkeypatch, data_dir)  # accept the rewritten file
    shuffled_digest, shuffled_weights = adapted_weights(data_dir, tmp_path / "cache")

    assert shuffled_digest != digest  # the labels did change, and the data were read again
    assert weights.keys() == shuffled_weights.keys()
    assert all(torch.equal(weights[k], shuffled_weights[k]) for k in weights)


def test_the_adapted_model_is_used_on_its_own_domain_only():
    """Two folders of a user's are two domains: the target-statistics model serves only the one adapted to."""
    import torch

    from tasks.train import TrainedModel, domain

    source, target = torch.nn.Identity(), torch.nn.Identity()
    trained = TrainedModel(source, "cpu", 0.0, 0.0, adapted_to=domain("folder:/scans/a"), target_model=target)
    assert trained.model_for("folder:/scans/a?split=test") is target
    assert trained.model_for("folder:/scans/b") is source
    assert trained.model_for("usps:test") is source
    usps = TrainedModel(source, "cpu", 0.0, 0.0, adapted_to=domain("usps:train"), target_model=target)
    assert usps.model_for("usps:test[:100]") is target
