"""Checks that need a CUDA device (marked ``gpu``; skipped, saying why, where there is none)."""

from __future__ import annotations

import pytest
import torch

from digitflow.augment import build_augment
from digitflow.config import AugmentConfig, TrainConfig
from digitflow.device import resolve_device
from digitflow.engine import build_model, evaluate, fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_auto_picks_cuda():
    assert resolve_device("auto").type == "cuda"


def test_training_runs_on_the_gpu_with_bf16_autocast():
    device = torch.device("cuda")
    torch.manual_seed(0)
    labels = torch.arange(512, device=device) % 10
    images = torch.zeros(512, 1, 28, 28, device=device)
    for k in range(10):  # class k: a bright horizontal bar at row 2 + 2k
        images[labels == k, 0, 2 + 2 * k : 4 + 2 * k, 4:24] = 1.0
    model = build_model(10, seed=0).to(device)
    config = TrainConfig(epochs=3, batch_size=64, amp=True)
    result = fit(model, images, labels, config, augment=build_augment(AugmentConfig(elastic=False, degrees=5)))
    assert next(model.parameters()).device.type == "cuda"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert evaluate(model, images, labels).accuracy > 0.9
