"""Device-aware training defaults and the CPU-side parts of the CUDA training path (the GPU parts are
in test_gpu.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from digitflow.config import CUDA_TRAIN_DEFAULTS, AugmentConfig, OptimizerConfig, TrainConfig, train_defaults
from digitflow.device import channels_last_helps
from digitflow.errors import ConfigError
from digitflow.params.run import build_config
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit
from digitflow.training.cuda_graph import graph_unsupported_reason
from digitflow.training.optim import build_optimizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def config(**overrides):
    base = dict(
        train="mnist:train",
        test="mnist:test",
        target=[],
        device="cpu",
        data_dir="data",
        cache_dir=".cache",
        offline=True,
    )
    return build_config(**{**base, **overrides})


def test_cpu_defaults_are_the_train_config_defaults():
    assert train_defaults("cpu") == TrainConfig()
    assert config().train == dataclasses.replace(TrainConfig(), device="cpu")


def test_cuda_defaults_differ_only_where_measured():
    gpu = train_defaults("cuda")
    changed = {
        f.name for f in dataclasses.fields(TrainConfig) if getattr(gpu, f.name) != getattr(TrainConfig(), f.name)
    }
    assert changed == set(CUDA_TRAIN_DEFAULTS)
    assert gpu.cuda_graphs
    assert gpu.batch_size > TrainConfig().batch_size


def test_the_device_defaults_fill_what_is_not_given(monkeypatch):
    # Pretend the run's device is CUDA: build_config resolves it, then takes that device's defaults.
    monkeypatch.setattr("digitflow.params.run.resolve_device", lambda name: CUDA if name == "cuda" else CPU)
    monkeypatch.setattr("digitflow.params.run._dry_build", lambda *a, **k: None)
    gpu = train_defaults("cuda")
    train = config(device="cuda").train
    assert (train.batch_size, train.epochs, train.amp, train.cuda_graphs) == (gpu.batch_size, gpu.epochs, gpu.amp, True)
    assert train.optimizer.kwargs == gpu.optimizer.kwargs
    explicit = config(device="cuda", batch_size=64, amp=True, cuda_graphs=False, optimizer_kwargs={"lr": 0.3}).train
    assert (explicit.batch_size, explicit.amp, explicit.cuda_graphs) == (64, True, False)
    assert explicit.optimizer.kwargs == {**gpu.optimizer.kwargs, "lr": 0.3}  # --opt adds to the defaults
    assert config(device="cuda", optimizer="Adam").train.optimizer.kwargs == {}  # torch's own defaults


def test_explicit_cuda_graphs_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="need a CUDA device"):
        config(cuda_graphs=True)
    with pytest.raises(ConfigError, match=r"label smoothing must be in \[0, 1\)"):
        config(label_smoothing=1.0)


def test_graph_unsupported_reasons():
    assert graph_unsupported_reason(CPU, "SGD", None) == "CUDA graphs need a CUDA device"
    assert graph_unsupported_reason(CUDA, "SGD", None) is None
    assert graph_unsupported_reason(CUDA, "AdamW", build_augment(AugmentConfig())) is None
    reason = graph_unsupported_reason(CUDA, "LBFGS", None)
    assert reason is not None
    assert "LBFGS" in reason
    reason = graph_unsupported_reason(CUDA, "SGD", build_augment(AugmentConfig(extra=("RandomErasing",))))
    assert reason is not None
    assert "host" in reason


def test_channels_last_per_device_and_batch():
    assert channels_last_helps(CPU, 64)
    assert not channels_last_helps(CUDA, 512)
    assert channels_last_helps(CUDA, 512, cuda_graphs=True)
    assert channels_last_helps(CUDA, 4096)
    assert not channels_last_helps(torch.device("mps"), 4096)


def test_optimizer_flags_follow_the_device():
    model = build_model(10, seed=0)
    cpu = build_optimizer(model, OptimizerConfig("SGD", {"lr": 0.1}), device=CPU)
    assert not cpu.defaults.get("fused")
    adam = build_optimizer(model, OptimizerConfig("Adam", {"lr": 0.1}), capturable=True)
    assert adam.defaults["capturable"] is True
    sgd = build_optimizer(model, OptimizerConfig("SGD", {"lr": 0.1}), capturable=True)  # SGD has no switch: none added
    assert "capturable" not in sgd.defaults


def test_cuda_graphs_asked_for_on_the_cpu_train_eagerly_and_say_why():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    result = fit(build_model(10, seed=0), images, labels, TrainConfig(epochs=1, batch_size=32, cuda_graphs=True))
    assert result.step == "eager (CUDA graphs need a CUDA device)"
    assert fit(build_model(10, seed=0), images, labels, TrainConfig(epochs=1, batch_size=32)).step == "eager"


def test_cudnn_autotuning_only_for_large_cuda_batches_and_restored():
    from digitflow.device import cudnn_autotuning, cudnn_autotuning_helps

    assert not cudnn_autotuning_helps(CPU, 8000)
    assert not cudnn_autotuning_helps(CUDA, 512)
    assert cudnn_autotuning_helps(CUDA, 4096)

    def fail_while_autotuning() -> None:
        with cudnn_autotuning(True):
            assert torch.backends.cudnn.benchmark
            raise RuntimeError

    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with pytest.raises(RuntimeError):
            fail_while_autotuning()
        assert torch.backends.cudnn.benchmark is False
        torch.backends.cudnn.benchmark = True
        with cudnn_autotuning(False):
            assert torch.backends.cudnn.benchmark  # never switched off under a caller who turned it on
    finally:
        torch.backends.cudnn.benchmark = saved
