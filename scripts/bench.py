"""Benchmark: one training epoch, the seed notes' loop against this project's engine, side by side.

The seed loop: torchvision's MNIST dataset with per-sample ``ToTensor`` + ``Normalize``, a
``DataLoader`` (batch 50, 2 workers, shuffled), forward/backward/SGD step. The engine: the same
images prepared once as a tensor on the device, batches drawn by index (``digitflow.training.classifier``).
Same data (the MNIST split in ``--data-dir``), same LeNet, same optimizer. Prints images per second
for both and their ratio, as medians of interleaved rounds (a shared 2-core machine swings by 20%
from one minute to the next). The engine runs its defaults (bfloat16 autocast on CUDA and on CPUs
with native bfloat16, the default augmentation), without augmentation (the seed loop's work per
image), and in float32; on a GPU also at batch 4096 and at the largest batch of the 8k split,
without augmentation. "Defaults" are the device's (``digitflow.config.train_defaults``: batch 64 on
the CPU, a larger batch, learning rate and CUDA graphs on a GPU); ``--batch-size`` overrides the
batch. ``--to-accuracy 0.99`` also times the engine with those settings, evaluation after every
epoch included, until the held-out split reaches that accuracy, for ``--accuracy-seeds`` seeds.
``--fashion-mnist`` adds a full-size dataset: training epochs per second on Fashion-MNIST's 60,000
images (``FashionMNIST/raw`` in ``--data-dir``).

    python scripts/bench.py --data-dir ../shared/data            # or: make bench ARGS="--data-dir ../shared/data"
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from digitflow.config import TrainConfig, train_defaults
from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.device import (
    channels_last_helps,
    cudnn_autotuning,
    cudnn_autotuning_helps,
    resolve_device,
    training_precision,
)
from digitflow.errors import DigitflowError
from digitflow.evaluation.classifier import evaluate
from digitflow.models import MNIST_MEAN, MNIST_STD
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit, train_one_epoch
from digitflow.training.cuda_graph import CudaGraphStep, graph_unsupported_reason
from digitflow.training.optim import build_optimizer
from digitflow.training.step import Augment, TrainStep


class PreloadedMNIST(datasets.MNIST):
    """torchvision's MNIST class (its ``__getitem__``: uint8 -> PIL image -> transform), fed the images
    we loaded, because its constructor insists on the training files, which offline machines lack."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self._preloaded = (images, labels)
        super().__init__("unused", train=False, transform=transform)

    def _check_exists(self) -> bool:
        return True

    def _load_data(self):
        return self._preloaded


def seed_loop_epoch(data, device: torch.device, batch_size: int, workers: int) -> float:
    """The seed notes' loop; returns images per second."""
    dataset = PreloadedMNIST(
        data.images,
        data.labels,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]),
    )
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers
    )
    model = build_model(10, seed=0).to(device)
    model.mean.fill_(0.0)  # the seed loop normalizes in its transforms; same LeNet compute otherwise
    model.std.fill_(1.0)
    optimizer = build_optimizer(model, TrainConfig().optimizer)
    model.train()
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(dataset) / (time.perf_counter() - start)


class EngineLoop:
    """This project's engine with ``config``'s step (eager or CUDA graph), built once; each call
    trains one epoch and returns images per second."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, augment) -> None:
        self.images, self.labels, self.config = images, labels, config
        device = images.device
        self.model = build_model(10, seed=0).to(device)
        use_graphs = config.cuda_graphs and graph_unsupported_reason(device, config.optimizer.name, augment) is None
        if channels_last_helps(device, config.batch_size, use_graphs):  # as fit() does
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, config.optimizer, device=device, capturable=use_graphs)
        self.model.train()
        self.autotune = cudnn_autotuning_helps(device, config.batch_size)  # as fit() does
        eager = TrainStep(
            self.model,
            self.optimizer,
            images,
            labels,
            augment=augment,
            amp=config.amp,
            label_smoothing=config.label_smoothing,
        )
        self.step: TrainStep | CudaGraphStep = eager
        if use_graphs:
            with cudnn_autotuning(self.autotune):
                self.step = CudaGraphStep(eager, config.batch_size)

    def __call__(self) -> float:
        with cudnn_autotuning(self.autotune):
            metrics = train_one_epoch(
                self.model,
                self.optimizer,
                self.images,
                self.labels,
                batch_size=self.config.batch_size,
                generator=torch.Generator().manual_seed(0),
                step=self.step,
            )
        return metrics["images_per_sec"]


class _Reached(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from fit's on_epoch callback once the target accuracy is reached."""


def time_to_accuracy(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    target: float,
    config: TrainConfig,
    augment: Augment | None,
) -> tuple[float, int, float]:
    """Seconds until held-out accuracy >= target: :func:`fit` with ``config`` (its schedule laid out
    over ``config.epochs``), evaluating after every epoch and stopping at the first epoch that reaches
    it; model building, CUDA-graph capture and the evaluations are inside the time."""
    device = train[0].device
    seen: list[tuple[int, float]] = []

    def check(record: dict[str, float]) -> None:
        accuracy = evaluate(model, *test).accuracy
        seen.append((int(record["epoch"]), accuracy))
        if accuracy >= target:
            raise _Reached

    _sync(device)
    start = time.perf_counter()
    model = build_model(10, config.seed).to(device)
    with contextlib.suppress(_Reached):
        fit(model, *train, config, augment=augment, on_epoch=check)
    _sync(device)
    epochs, accuracy = seen[-1]
    return time.perf_counter() - start, epochs, accuracy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("DIGITFLOW_DATA_DIR", "data"),
        help="folder with MNIST/raw/t10k-*.gz (default $DIGITFLOW_DATA_DIR or ./data)",
    )
    parser.add_argument(
        "--cache-dir", default=".cache/digitflow", help="transformed-tensor cache (default .cache/digitflow)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N (default auto)"
    )
    parser.add_argument("--seed-batch-size", type=int, default=50, help="the seed notes' batch size (50)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the engine's batch size (default: the device's default, 64 on the CPU)",
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed loop (2)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved rounds, one epoch of each loop per round (5)"
    )
    parser.add_argument(
        "--to-accuracy",
        type=float,
        default=None,
        help="also time the engine, at the device's defaults, to this held-out accuracy",
    )
    parser.add_argument(
        "--accuracy-seeds",
        type=int,
        default=3,
        help="seeds (0, 1, ...) timed to --to-accuracy; the median is reported (3)",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="epochs of the --to-accuracy runs (default: the device's default epochs; "
        "the learning-rate schedule is laid out over them)",
    )
    parser.add_argument(
        "--only-to-accuracy",
        action="store_true",
        help="time only the runs to --to-accuracy, without the images/s rounds",
    )
    parser.add_argument(
        "--fashion-mnist",
        action="store_true",
        help="also time training epochs on Fashion-MNIST's 60,000 images (FashionMNIST/raw in --data-dir)",
    )
    args = parser.parse_args()
    if (
        min(args.repeats, args.seed_batch_size, args.accuracy_seeds, args.batch_size or 1, args.max_epochs or 1) < 1
        or args.workers < 0
    ):
        parser.error(
            "--repeats, --accuracy-seeds, --max-epochs and the batch sizes must be at least 1, --workers at least 0"
        )
    if args.only_to_accuracy and args.to_accuracy is None:
        parser.error("--only-to-accuracy needs --to-accuracy ACCURACY")
    if args.to_accuracy is not None and not 0 < args.to_accuracy <= 1:
        parser.error(f"--to-accuracy must be in (0, 1], got {args.to_accuracy}")

    device = resolve_device(args.device)
    defaults = train_defaults(device.type)
    if args.batch_size is not None:
        defaults = dataclasses.replace(defaults, batch_size=args.batch_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    data = load_dataset("mnist:test", args.data_dir, args.cache_dir, offline=True)
    images, labels = model_inputs(data, "mnist-frame", device)
    print(f"device: {name}; data: {data.spec}, {len(labels)} images; torch {torch.__version__}")

    precision = training_precision(device, defaults.amp)  # the engine itself decides whether bf16 applies
    augment = build_augment(defaults.augment)
    step_kind = "CUDA graph" if defaults.cuda_graphs and device.type == "cuda" else "eager"
    batch = defaults.batch_size
    setups: dict[str, tuple[TrainConfig, object]] = {
        f"engine defaults, batch {batch}, {precision}, {step_kind}, default augmentation": (defaults, augment),
        f"engine defaults, batch {batch}, {precision}, {step_kind}, no augmentation": (defaults, None),
    }
    other = dataclasses.replace(defaults, amp=not defaults.amp)  # the other precision, where it differs
    if training_precision(device, other.amp) != precision:
        setups[
            f"engine, batch {batch}, {training_precision(device, other.amp)} (--{'' if other.amp else 'no-'}amp), "
            f"{step_kind}, default augmentation"
        ] = (other, augment)
    if device.type == "cuda":  # large batches: what the card does when launches are not the limit
        for big in (4096, 8000):
            setups[f"engine, batch {big}, {precision}, {step_kind}, no augmentation"] = (
                dataclasses.replace(defaults, batch_size=big),
                None,
            )
    if not args.only_to_accuracy:  # the images/s rounds
        loops: dict[str, Callable[[], float]] = {
            f"seed loop (DataLoader, batch {args.seed_batch_size}, {args.workers} workers, float32)": lambda: (
                seed_loop_epoch(data, device, args.seed_batch_size, args.workers)
            ),
        }
        for label, (config, aug) in setups.items():
            loops[label] = EngineLoop(images, labels, config, aug)
        for loop in loops.values():
            loop()  # warm-up: worker start, kernel selection, caches
        # Interleaved rounds: each round times every loop once, so a slow spell of a shared machine hits
        # all of them, and each round gives its own ratios. Medians over rounds are reported.
        rates: dict[str, list[float]] = {label: [] for label in loops}
        for _ in range(args.repeats):
            for label, loop in loops.items():
                rates[label].append(loop())
        seed_rates = next(iter(rates.values()))
        print(f"median of {args.repeats} interleaved rounds (ratio: per round, against that round's seed loop)")
        for label, values in rates.items():
            ratios = [v / s for v, s in zip(values, seed_rates, strict=True)]
            print(
                f"{label:72s} {statistics.median(values):11,.0f} images/s   "
                f"x{statistics.median(ratios):6.2f} (rounds x{min(ratios):.2f}-x{max(ratios):.2f})"
            )

    if args.fashion_mnist:
        fashion = load_dataset("fashion-mnist:train", args.data_dir, args.cache_dir, offline=True)
        fx, fy = model_inputs(fashion, "mnist-frame", device)
        loop = EngineLoop(fx, fy, defaults, augment)
        loop()  # warm-up
        fashion_rates = [loop() for _ in range(args.repeats)]
        rate = statistics.median(fashion_rates)
        print(
            f"fashion-mnist:train ({len(fy):,} images), engine defaults ({batch}, {precision}, {step_kind}, "
            f"default augmentation): {rate:,.0f} images/s, {rate / len(fy):.2f} epochs/s "
            f"(median of {args.repeats} epochs)"
        )

    if args.to_accuracy is not None:
        train = load_dataset("mnist:test[:8000]", args.data_dir, args.cache_dir, offline=True)
        test = load_dataset("mnist:test[8000:]", args.data_dir, args.cache_dir, offline=True)
        train_xy = model_inputs(train, "mnist-frame", device)
        test_xy = model_inputs(test, "mnist-frame", device)
        config = dataclasses.replace(defaults, epochs=args.max_epochs or defaults.epochs)
        time_to_accuracy(train_xy, test_xy, args.to_accuracy, config, augment)  # warm-up (kernel selection)
        runs = [
            time_to_accuracy(train_xy, test_xy, args.to_accuracy, dataclasses.replace(config, seed=seed), augment)
            for seed in range(args.accuracy_seeds)
        ]
        print(
            f"engine defaults to {args.to_accuracy} held-out accuracy (batch {config.batch_size}, "
            f"lr {config.optimizer.kwargs.get('lr')}, {config.scheduler.name} over {config.epochs} epochs, "
            f"{step_kind}; "
            f"train mnist:test[:8000], test mnist:test[8000:], evaluation after every epoch): "
            + describe_time_to_accuracy(runs, args.to_accuracy, config.epochs)
        )


def describe_time_to_accuracy(runs: list[tuple[float, int, float]], target: float, max_epochs: int) -> str:
    """One line: the median over the seeds that reached ``target``, then every seed's figures."""
    reached = [(seconds, epochs) for seconds, epochs, accuracy in runs if accuracy >= target]
    seeds = ", ".join(
        f"{seconds:.3f} s/{epochs} ep" if accuracy >= target else f"not reached in {max_epochs} epochs ({accuracy:.4f})"
        for seconds, epochs, accuracy in runs
    )
    if not reached:
        return f"not reached by any of {len(runs)} seeds; seeds: {seeds}"
    return (
        f"median {statistics.median(s for s, _ in reached):.3f} s, "
        f"{statistics.median(e for _, e in reached):g} epochs ({len(reached)}/{len(runs)} seeds reached it); "
        f"seeds: {seeds}"
    )


if __name__ == "__main__":
    try:
        main()
    except DigitflowError as exc:  # bad input (no data, unknown device): one line, no traceback
        sys.exit(f"bench.py: error: {exc}")
