"""Benchmark: one training epoch, the seed notes' loop against this project's engine, side by side.

The seed loop: torchvision's MNIST dataset with per-sample ``ToTensor`` + ``Normalize``, a
``DataLoader`` (batch 50, 2 workers, shuffled), forward/backward/SGD step. The engine: the same
images prepared once as a tensor on the device, batches drawn by index (``digitflow.engine``).
Same data (the MNIST split in ``--data-dir``), same LeNet, same optimizer. Prints images per second
for both and their ratio, as medians of interleaved rounds (a shared 2-core machine swings by 20%
from one minute to the next). The engine runs its defaults (bfloat16 autocast on CUDA and on CPUs
with native bfloat16, the default augmentation), without augmentation (the seed loop's work per
image), and in float32. ``--to-accuracy 0.99`` also times the engine (with its default
augmentation) until the held-out split reaches that accuracy, for ``--accuracy-seeds`` seeds.

    python scripts/bench.py --data-dir ../shared/data            # or: make bench ARGS="--data-dir ../shared/data"
"""

from __future__ import annotations

import argparse
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

from digitflow.augment import build_augment
from digitflow.config import AugmentConfig, TrainConfig
from digitflow.data import load_dataset
from digitflow.data.framing import frame_images
from digitflow.device import resolve_device, training_precision
from digitflow.engine import build_model, epoch_seed, evaluate, train_one_epoch
from digitflow.errors import DigitflowError
from digitflow.models import MNIST_MEAN, MNIST_STD
from digitflow.optim import build_optimizer


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
        data.images, data.labels,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]),
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
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


def engine_epoch(images, labels, batch_size: int, augment, amp: bool) -> float:
    """This project's engine; returns images per second."""
    model = build_model(10, seed=0).to(images.device, memory_format=torch.channels_last)  # as fit() does
    optimizer = build_optimizer(model, TrainConfig().optimizer)
    metrics = train_one_epoch(model, optimizer, images, labels, batch_size=batch_size,
                              generator=torch.Generator().manual_seed(0), augment=augment, amp=amp)
    return metrics["images_per_sec"]


def time_to_accuracy(train, test, target: float, max_epochs: int, device: torch.device, seed: int) -> tuple[float, int, float]:
    """Seconds (training + evaluation) until held-out accuracy >= target, with default settings
    (constant learning rate: the default cosine schedule needs the number of epochs in advance)."""
    config = dataclasses.replace(TrainConfig(), seed=seed)
    model = build_model(10, config.seed).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optimizer)
    augment = build_augment(config.augment)
    start = time.perf_counter()
    accuracy = 0.0
    for epoch in range(1, max_epochs + 1):
        torch.manual_seed(epoch_seed(seed, epoch))
        train_one_epoch(model, optimizer, *train, batch_size=config.batch_size, augment=augment,
                        amp=config.amp, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        accuracy = evaluate(model, *test).accuracy
        if accuracy >= target:
            break
    return time.perf_counter() - start, epoch, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DIGITFLOW_DATA_DIR", "data"),
                        help="folder with MNIST/raw/t10k-*.gz (default $DIGITFLOW_DATA_DIR or ./data)")
    parser.add_argument("--cache-dir", default=".cache/digitflow", help="transformed-tensor cache (default .cache/digitflow)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--seed-batch-size", type=int, default=50, help="the seed notes' batch size (50)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="the engine's batch size (default: the project default)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed loop (2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds, one epoch of each loop per round (5)")
    parser.add_argument("--to-accuracy", type=float, default=None, help="also time the engine to this held-out accuracy")
    parser.add_argument("--accuracy-seeds", type=int, default=3,
                        help="seeds (0, 1, ...) timed to --to-accuracy; the median is reported (3)")
    parser.add_argument("--max-epochs", type=int, default=30, help="give up on --to-accuracy after this many epochs (30)")
    args = parser.parse_args()
    if min(args.repeats, args.batch_size, args.seed_batch_size, args.accuracy_seeds, args.max_epochs) < 1 or args.workers < 0:
        parser.error("--repeats, --accuracy-seeds, --max-epochs and the batch sizes must be at least 1, --workers at least 0")
    if args.to_accuracy is not None and not 0 < args.to_accuracy <= 1:
        parser.error(f"--to-accuracy must be in (0, 1], got {args.to_accuracy}")

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    data = load_dataset("mnist:test", args.data_dir, args.cache_dir, offline=True)
    images, labels = frame_images(data.images.to(device), "mnist-frame"), data.labels.to(device)
    print(f"device: {name}; data: {data.spec}, {len(labels)} images; torch {torch.__version__}")

    amp = TrainConfig.amp  # the engine itself decides whether bfloat16 applies on this device
    precision = training_precision(device, amp)
    augment = build_augment(AugmentConfig())
    loops: dict[str, Callable[[], float]] = {
        f"seed loop (DataLoader, batch {args.seed_batch_size}, {args.workers} workers, float32)":
            lambda: seed_loop_epoch(data, device, args.seed_batch_size, args.workers),
        f"engine, batch {args.batch_size}, {precision}, default augmentation":
            lambda: engine_epoch(images, labels, args.batch_size, augment, amp),
        f"engine, batch {args.batch_size}, {precision}, no augmentation":
            lambda: engine_epoch(images, labels, args.batch_size, None, amp),
    }
    if precision != "float32":  # a float32 row only where the defaults are not float32 already
        loops[f"engine, batch {args.batch_size}, float32 (--no-amp), default augmentation"] = (
            lambda: engine_epoch(images, labels, args.batch_size, augment, False))
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
        ratios = [v / s for v, s in zip(values, seed_rates)]
        print(f"{label:62s} {statistics.median(values):9,.0f} images/s   "
              f"x{statistics.median(ratios):5.2f} (rounds x{min(ratios):.2f}-x{max(ratios):.2f})")

    if args.to_accuracy is not None:
        train = load_dataset("mnist:test[:8000]", args.data_dir, args.cache_dir, offline=True)
        test = load_dataset("mnist:test[8000:]", args.data_dir, args.cache_dir, offline=True)
        train_xy = (frame_images(train.images.to(device), "mnist-frame"), train.labels.to(device))
        test_xy = (frame_images(test.images.to(device), "mnist-frame"), test.labels.to(device))
        runs = [time_to_accuracy(train_xy, test_xy, args.to_accuracy, args.max_epochs, device, seed)
                for seed in range(args.accuracy_seeds)]
        print(f"engine to {args.to_accuracy} held-out accuracy (train mnist:test[:8000], test mnist:test[8000:]): "
              + describe_time_to_accuracy(runs, args.to_accuracy, args.max_epochs))


def describe_time_to_accuracy(runs: list[tuple[float, int, float]], target: float, max_epochs: int) -> str:
    """One line: the median over the seeds that reached ``target``, then every seed's figures."""
    reached = [(seconds, epochs) for seconds, epochs, accuracy in runs if accuracy >= target]
    seeds = ", ".join(
        f"{seconds:.1f} s/{epochs} ep" if accuracy >= target
        else f"not reached in {max_epochs} epochs ({accuracy:.4f})"
        for seconds, epochs, accuracy in runs
    )
    if not reached:
        return f"not reached by any of {len(runs)} seeds; seeds: {seeds}"
    return (f"median {statistics.median(s for s, _ in reached):.1f} s, "
            f"{statistics.median(e for _, e in reached):g} epochs ({len(reached)}/{len(runs)} seeds reached it); "
            f"seeds: {seeds}")


if __name__ == "__main__":
    try:
        main()
    except DigitflowError as exc:  # bad input (no data, unknown device): one line, no traceback
        sys.exit(f"bench.py: error: {exc}")
