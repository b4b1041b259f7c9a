"""Reproduce the tables of training settings in docs/measurements.md: the MNIST -> USPS domain gap, the default
augmentation of each dataset family, the LBFGS defaults.

By default, trains LeNet on ``mnist:test[:8000]`` (no USPS data at all) for each named setting and
seed, and prints held-out accuracy on ``mnist:test[8000:]`` and on all of ``usps:test`` (mnist-frame
preprocessing): the mean over seeds, the worst figure of the last column, seconds per run, and
each seed's figures. ``--train``/``--test``/``--target`` pick other data.

    python scripts/sweep.py --data-dir ../shared/data                       # the domain-gap settings, 3 seeds
    python scripts/sweep.py --data-dir ../shared/data --only defaults affine-only --seeds 1
    python scripts/sweep.py --data-dir DIR --train fashion-mnist:train --test fashion-mnist:test --no-target \\
        --only no-augment defaults hflip translate hflip+translate --seeds 2
    python scripts/sweep.py --data-dir ../shared/data --no-target --only lbfgs-torch-defaults lbfgs-defaults \\
        lbfgs-b500-it5 lbfgs-b2000-it10 --seeds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

from digitflow.config import (
    BATCH_SIZE_BY_OPTIMIZER,
    OPTIMIZER_DEFAULTS,
    AugmentConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
)
from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device
from digitflow.errors import DigitflowError, TrainingDivergedError
from digitflow.evaluation.classifier import evaluate
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit

OLD_AFFINE: dict[str, Any] = dict(
    degrees=15, translate=0.1, scale_min=0.85, scale_max=1.15, shear=10
)  # the first defaults
SGD_001 = OptimizerConfig(kwargs={"lr": 0.01, "momentum": 0.9})
CONSTANT = SchedulerConfig(name=None)

SETTINGS = {
    "defaults": TrainConfig(),
    "no-augmentation": TrainConfig(optimizer=SGD_001, scheduler=CONSTANT, augment=AugmentConfig(affine=False)),
    "old-affine+elastic": TrainConfig(
        optimizer=SGD_001, scheduler=CONSTANT, augment=AugmentConfig(**OLD_AFFINE, elastic=True, elastic_alpha=34)
    ),
    "affine-only": TrainConfig(optimizer=SGD_001, scheduler=CONSTANT, augment=AugmentConfig(**OLD_AFFINE)),
    "defaults+elastic10": TrainConfig(augment=AugmentConfig(elastic=True, elastic_alpha=10)),
    "defaults-3-epochs": TrainConfig(epochs=3),
}
# The default augmentation of each dataset family (config.AUGMENT_BY_FAMILY), against alternatives.
TRANSLATE: dict[str, Any] = dict(
    degrees=0.0, scale_min=1.0, scale_max=1.0, shear=0.0
)  # the default's +/-8% shift alone
AUGMENT_SETTINGS = {
    "no-augment": TrainConfig(augment=AugmentConfig(affine=False)),
    "hflip": TrainConfig(augment=AugmentConfig(affine=False, hflip=True)),
    "translate": TrainConfig(augment=AugmentConfig(**TRANSLATE)),
    "hflip+translate": TrainConfig(augment=AugmentConfig(**TRANSLATE, hflip=True)),
}
SETTINGS.update(AUGMENT_SETTINGS)
# LBFGS: torch's defaults (diverge), the project's (config.OPTIMIZER_DEFAULTS, BATCH_SIZE_BY_OPTIMIZER), alternatives.
WOLFE = {"line_search_fn": "strong_wolfe"}
LBFGS_SETTINGS = {
    "lbfgs-torch-defaults": TrainConfig(optimizer=OptimizerConfig(name="LBFGS", kwargs={})),
    "lbfgs-defaults": TrainConfig(
        batch_size=BATCH_SIZE_BY_OPTIMIZER["LBFGS"],
        optimizer=OptimizerConfig(name="LBFGS", kwargs=OPTIMIZER_DEFAULTS["LBFGS"]),
    ),
    "lbfgs-b500-it5": TrainConfig(
        batch_size=500, optimizer=OptimizerConfig(name="LBFGS", kwargs={**WOLFE, "max_iter": 5})
    ),
    "lbfgs-b2000-it10": TrainConfig(
        batch_size=2000, optimizer=OptimizerConfig(name="LBFGS", kwargs={**WOLFE, "max_iter": 10})
    ),
}
SETTINGS.update(LBFGS_SETTINGS)
DOMAIN_GAP = [
    "defaults",
    "no-augmentation",
    "old-affine+elastic",
    "affine-only",
    "defaults+elastic10",
    "defaults-3-epochs",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DIGITFLOW_DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default=".cache/digitflow")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ... (default 0)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SETTINGS), help=f"run only these settings (default: {' '.join(DOMAIN_GAP)})"
    )
    parser.add_argument("--train", default="mnist:test[:8000]", help="(default mnist:test[:8000])")
    parser.add_argument("--test", default="mnist:test[8000:]", help="(default mnist:test[8000:])")
    parser.add_argument("--target", nargs="+", default=["usps:test"], help="(default usps:test)")
    parser.add_argument("--no-target", dest="target", action="store_const", const=[])
    args = parser.parse_args()

    device = resolve_device(args.device)

    def inputs(spec: str):
        return model_inputs(load_dataset(spec, args.data_dir, args.cache_dir, offline=True), "mnist-frame", device)

    train = inputs(args.train)
    evals = {spec: inputs(spec) for spec in [args.test, *args.target]}
    num_classes = int(train[1].max()) + 1
    print(f"device {device}; train {args.train}; columns: {', '.join(evals)} (mean of {args.seeds} seeds)")
    for name in args.only or DOMAIN_GAP:
        results = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            config = dataclasses.replace(SETTINGS[name], seed=seed, device=str(device))
            start = time.perf_counter()
            try:
                images, labels = train
                model = fit(
                    build_model(num_classes, seed).to(device),
                    images,
                    labels,
                    config,
                    augment=build_augment(config.augment),
                ).model
            except TrainingDivergedError as exc:
                print(f"{name:20s} seed {seed}: {exc}", flush=True)
                continue
            seconds = time.perf_counter() - start
            results.append(
                [evaluate(model, *data, num_classes=num_classes).accuracy for data in evals.values()] + [seconds]
            )
        if not results:
            continue
        means = [sum(r[i] for r in results) / len(results) for i in range(len(evals) + 1)]
        columns = "  ".join(f"{spec} {mean:.4f}" for spec, mean in zip(evals, means, strict=False))
        runs = " ".join("/".join(f"{a:.4f}" for a in r[:-1]) for r in results)
        print(
            f"{name:20s} {columns} (worst {min(r[-2] for r in results):.4f})  {means[-1]:5.1f} s/run  {runs}",
            flush=True,
        )


if __name__ == "__main__":
    try:
        main()
    except DigitflowError as exc:  # bad input (no data, unknown device): one line, no traceback
        sys.exit(f"sweep.py: error: {exc}")
