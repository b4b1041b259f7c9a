"""How the engine behaves on a GPU, to choose its CUDA defaults: one script for one lent-GPU call.

Prints (1) training images/s over batch sizes, eager against CUDA graph, channels-last against the
default layout, with and without augmentation, and (2) time to a held-out accuracy on the 8k
protocol (train ``mnist:test[:8000]``, test ``mnist:test[8000:]``, evaluation after every epoch)
for candidate settings, over several seeds. ``digitflow.config.CUDA_TRAIN_DEFAULTS`` and
``digitflow.device.CUDA_CHANNELS_LAST_MIN_BATCH`` were chosen from its output (docs/training.md: "Training on
a GPU").

    PYTHONPATH=src:. python3 scripts/gpu_explore.py --data-dir DIR [--seeds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench
from bench import EngineLoop, describe_time_to_accuracy, time_to_accuracy

from digitflow.config import OptimizerConfig, SchedulerConfig, TrainConfig, train_defaults
from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.device import channels_last_helps
from digitflow.training.augment import build_augment


def throughput(images, labels, base: TrainConfig, augment, repeats: int) -> None:
    print("== training images/s (median of epochs over mnist:test, 10,000 images)")
    print(f"{'batch':>6} {'step':>6} {'layout':>14} {'precision':>9} {'augment':>8} {'images/s':>12}")
    for batch in (256, 512, 1024, 4096, 8000):
        for graphs in (False, True):
            for channels_last in (False, True):
                for amp in (True, False):
                    for aug in (augment, None):
                        bench.channels_last_helps = lambda *_, flag=channels_last: flag
                        config = dataclasses.replace(base, batch_size=batch, cuda_graphs=graphs, amp=amp)
                        try:
                            loop = EngineLoop(images, labels, config, aug)
                            loop()
                            rate = statistics.median(loop() for _ in range(repeats))
                            shown = f"{rate:12,.0f}"
                        except Exception as exc:  # noqa: BLE001 - report and go on: one failing variant must not end the call
                            shown = f"failed: {type(exc).__name__}: {exc}"[:200]
                        print(
                            f"{batch:6d} {'graph' if graphs else 'eager':>6} "
                            f"{'channels-last' if channels_last else 'contiguous':>14} {'bf16' if amp else 'fp32':>9} "
                            f"{'yes' if aug is not None else 'no':>8} {shown}",
                            flush=True,
                        )
    bench.channels_last_helps = channels_last_helps


def candidates(base: TrainConfig) -> dict[str, TrainConfig]:
    def sgd(lr: float) -> OptimizerConfig:
        return OptimizerConfig(kwargs={"lr": lr, "momentum": 0.9, "nesterov": True})

    def cosine(batch: int, lr: float, epochs: int, smoothing: float) -> tuple[str, TrainConfig]:
        return (
            f"batch {batch}, lr {lr}, cosine over {epochs}, smoothing {smoothing}",
            dataclasses.replace(base, batch_size=batch, optimizer=sgd(lr), epochs=epochs, label_smoothing=smoothing),
        )

    def one_cycle(batch: int, max_lr: float, epochs: int) -> tuple[str, TrainConfig]:
        return (
            f"batch {batch}, OneCycle max_lr {max_lr} over {epochs}, smoothing 0.1",
            dataclasses.replace(
                base,
                batch_size=batch,
                optimizer=sgd(max_lr),
                epochs=epochs,
                label_smoothing=0.1,
                scheduler=SchedulerConfig("OneCycleLR", {"max_lr": max_lr}),
            ),
        )

    runs = [cosine(256, lr, 6, ls) for lr in (0.1, 0.15) for ls in (0.0, 0.1)]
    runs += [cosine(512, lr, ep, 0.1) for lr in (0.1, 0.15, 0.2) for ep in (6, 8)]
    runs += [one_cycle(512, lr, ep) for lr in (0.2, 0.3) for ep in (6, 8)]
    runs += [cosine(1024, lr, ep, 0.1) for lr in (0.15, 0.2, 0.3) for ep in (8, 10)]
    runs += [one_cycle(1024, lr, ep) for lr in (0.3, 0.4) for ep in (8, 10)]
    return dict(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir", default="/tmp/digitflow-cache")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    base = train_defaults("cuda")
    augment = build_augment(base.augment)

    data = load_dataset("mnist:test", args.data_dir, args.cache_dir, offline=True)
    images, labels = model_inputs(data, "mnist-frame", device)
    if not args.skip_throughput:
        throughput(images, labels, base, augment, args.repeats)

    fashion_raw = Path(args.data_dir) / "FashionMNIST" / "raw"
    if fashion_raw.is_dir():
        fashion = load_dataset("fashion-mnist:train", args.data_dir, args.cache_dir, offline=True)
        fx, fy = model_inputs(fashion, "mnist-frame", device)
        print("== fashion-mnist:train (60,000 images), CUDA graph, bf16, default augmentation")
        for batch in (256, 512, 1024):
            loop = EngineLoop(fx, fy, dataclasses.replace(base, batch_size=batch), augment)
            loop()
            rate = statistics.median(loop() for _ in range(args.repeats))
            print(f"batch {batch}: {rate:,.0f} images/s, {rate / len(fy):.2f} epochs/s", flush=True)

    train = load_dataset("mnist:test[:8000]", args.data_dir, args.cache_dir, offline=True)
    test = load_dataset("mnist:test[8000:]", args.data_dir, args.cache_dir, offline=True)
    train_xy = model_inputs(train, "mnist-frame", device)
    test_xy = model_inputs(test, "mnist-frame", device)
    print(f"== time to {args.target} held-out accuracy, {args.seeds} seeds (default augmentation, bf16, CUDA graphs)")
    time_to_accuracy(train_xy, test_xy, args.target, base, augment)  # warm-up
    start = time.perf_counter()
    for name, config in candidates(base).items():
        try:
            runs = [
                time_to_accuracy(train_xy, test_xy, args.target, dataclasses.replace(config, seed=seed), augment)
                for seed in range(args.seeds)
            ]
            print(f"{name}: {describe_time_to_accuracy(runs, args.target, config.epochs)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - likewise: one failing candidate must not end the call
            print(f"{name}: failed: {type(exc).__name__}: {exc}"[:300], flush=True)
    print(f"(candidates took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
