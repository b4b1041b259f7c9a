"""Reproduce the README's table of training settings against the MNIST -> USPS domain gap.

Trains LeNet on ``mnist:test[:8000]`` (no USPS data at all) for each named setting and seed, and
prints held-out accuracy on ``mnist:test[8000:]`` and on all of ``usps:test`` (mnist-frame
preprocessing): the mean over seeds, the worst USPS figure, and each seed's pair.

    python scripts/sweep.py --data-dir ../shared/data                       # every setting, 3 seeds
    python scripts/sweep.py --data-dir ../shared/data --only defaults affine-only --seeds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import torch

from digitflow.augment import build_augment
from digitflow.config import AugmentConfig, OptimizerConfig, SchedulerConfig, TrainConfig
from digitflow.data import load_dataset
from digitflow.data.framing import frame_images
from digitflow.device import resolve_device
from digitflow.engine import build_model, evaluate, fit
from digitflow.errors import DigitflowError

# the first defaults
OLD_AFFINE: dict[str, Any] = dict(degrees=15, translate=0.1, scale_min=0.85, scale_max=1.15, shear=10)
SGD_001 = OptimizerConfig(kwargs={"lr": 0.01, "momentum": 0.9})
CONSTANT = SchedulerConfig(name=None)

SETTINGS = {
    "defaults": TrainConfig(),
    "no-augmentation": TrainConfig(optimizer=SGD_001, scheduler=CONSTANT, augment=AugmentConfig(affine=False)),
    "old-affine+elastic": TrainConfig(optimizer=SGD_001, scheduler=CONSTANT,
                                      augment=AugmentConfig(**OLD_AFFINE, elastic=True, elastic_alpha=34)),
    "affine-only": TrainConfig(optimizer=SGD_001, scheduler=CONSTANT, augment=AugmentConfig(**OLD_AFFINE)),
    "defaults+elastic10": TrainConfig(augment=AugmentConfig(elastic=True, elastic_alpha=10)),
    "defaults-3-epochs": TrainConfig(epochs=3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DIGITFLOW_DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default=".cache/digitflow")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="run only these settings")
    args = parser.parse_args()

    device = resolve_device(args.device)

    def inputs(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = load_dataset(spec, args.data_dir, args.cache_dir, offline=True)
        return frame_images(data.images.to(device), "mnist-frame"), data.labels.to(device)

    train, test, usps = inputs("mnist:test[:8000]"), inputs("mnist:test[8000:]"), inputs("usps:test")
    print(f"device {device}; train mnist:test[:8000]; columns: held-out MNIST, USPS (mean of {args.seeds} seeds)")
    for name in args.only or SETTINGS:
        results = []
        for seed in range(args.seeds):
            config = dataclasses.replace(SETTINGS[name], seed=seed, device=str(device))
            start = time.perf_counter()
            model = fit(build_model(10, seed).to(device), *train, config, augment=build_augment(config.augment)).model
            results.append(
                (evaluate(model, *test).accuracy, evaluate(model, *usps).accuracy, time.perf_counter() - start)
            )
        mnist, us, seconds = (sum(r[i] for r in results) / len(results) for i in range(3))
        runs = " ".join(f"{a:.4f}/{u:.4f}" for a, u, _ in results)
        print(
            f"{name:20s} mnist {mnist:.4f}  usps {us:.4f} (worst {min(r[1] for r in results):.4f})  "
            f"{seconds:5.1f} s/run  {runs}",
            flush=True,
        )


if __name__ == "__main__":
    try:
        main()
    except DigitflowError as exc:  # bad input (no data, unknown device): one line, no traceback
        sys.exit(f"sweep.py: error: {exc}")
