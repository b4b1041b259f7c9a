"""MNIST -> USPS domain adaptation figures: DANN against the source-only model, per seed.

Trains on labeled ``mnist:test[:8000]`` and the unlabeled images of ``usps:test[:1000]``, tests on
``usps:test[1000:]`` (never seen in training) and held-out ``mnist:test[8000:]``, and prints one line
per seed and setting, then the mean and worst seed. The source-only model is today's defaults
(:func:`digitflow.training.classifier.fit`); DANN settings are named ``KEY=VALUE`` overrides of
:class:`digitflow.config.AdaptConfig` and :class:`digitflow.config.TrainConfig` (``epochs``).

    python scripts/dann_bench.py --data-dir ../shared/data --seeds 3
    python scripts/dann_bench.py --data-dir ../shared/data --seeds 1 --no-source-only \\
        --setting plain pseudo_label_weight=0 target_batch_norm=False --setting default
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time

import torch
from torch import nn

from digitflow.config import AdaptConfig, TrainConfig
from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device
from digitflow.evaluation.classifier import evaluate
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit
from digitflow.training.dann import fit_dann, recompute_batch_norm
from flows.cli.options import literal  # "64" -> 64, "True" -> True, "hinge" stays a string


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir", default=".cache/digitflow")
    parser.add_argument("--train", default="mnist:test[:8000]")
    parser.add_argument("--test", default="mnist:test[8000:]")
    parser.add_argument("--adapt-target", default="usps:test[:1000]")
    parser.add_argument("--target", default="usps:test[1000:]")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--no-source-only", action="store_true", help="skip the source-only baseline")
    parser.add_argument(
        "--setting",
        nargs="+",
        action="append",
        metavar="NAME [KEY=VALUE ...]",
        help="a DANN setting: a name, then AdaptConfig/TrainConfig overrides (repeatable; default: the defaults)",
    )
    args = parser.parse_args(argv)
    device = resolve_device("cpu")

    def inputs(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
        return model_inputs(load_dataset(spec, args.data_dir, args.cache_dir, offline=True), "mnist-frame", device)

    source, test, target = inputs(args.train), inputs(args.test), inputs(args.target)
    target_images, _ = inputs(args.adapt_target)  # labels dropped here: adaptation never sees them
    settings: dict[str, tuple[TrainConfig, AdaptConfig]] = {}
    for entry in args.setting or [["default"]]:
        name, overrides = entry[0], dict(kv.split("=", 1) for kv in entry[1:])
        train_over = {k: literal(v) for k, v in overrides.items() if k in ("epochs", "batch_size")}
        adapt_over = {k: literal(v) for k, v in overrides.items() if k not in train_over}
        settings[name] = (
            dataclasses.replace(TrainConfig(device="cpu"), **train_over),
            AdaptConfig(method="dann", target=args.adapt_target, **adapt_over),
        )
    if not args.no_source_only:
        settings = {"source-only": (TrainConfig(device="cpu"), AdaptConfig()), **settings}

    print(f"{'setting':<16} {'seed':>4} {'usps held-out':>13} {'mnist held-out':>14} {'s':>6}", flush=True)
    results: dict[str, list[tuple[float, float, float]]] = {}
    for name, (train_cfg, adapt) in settings.items():
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cfg = dataclasses.replace(train_cfg, seed=seed)
            model: nn.Module = build_model(10, seed).to(device)
            start = time.perf_counter()
            if adapt.method is None:
                fit(model, *source, cfg, augment=build_augment(cfg.augment))
                source_model = target_model = model
            else:
                out = fit_dann(model, *source, target_images, cfg, adapt, augment=build_augment(cfg.augment))
                source_model, target_model = out.model, out.target_model
            seconds = time.perf_counter() - start
            rows: list[tuple[str, nn.Module]] = [(name, target_model)]
            if adapt.method is None:  # the source-only model with the target's batch-norm statistics (AdaBN)
                rows.append(("source+adabn", recompute_batch_norm(copy.deepcopy(model), target_images)))
            mnist = evaluate(source_model, *test).accuracy
            for row_name, row_model in rows:
                usps = evaluate(row_model, *target).accuracy
                results.setdefault(row_name, []).append((usps, mnist, seconds))
                print(f"{row_name:<16} {seed:>4} {usps:>13.4f} {mnist:>14.4f} {seconds:>6.1f}", flush=True)
    print()
    print(f"{'setting':<16} {'usps mean':>9} {'worst':>7} {'mnist mean':>10} {'worst':>7} {'s/run':>6}")
    for name, figures in results.items():
        usps_all, mnist_all, secs = zip(*figures, strict=True)
        n = len(figures)
        print(
            f"{name:<16} {sum(usps_all) / n:>9.4f} {min(usps_all):>7.4f} "
            f"{sum(mnist_all) / n:>10.4f} {min(mnist_all):>7.4f} {sum(secs) / n:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
