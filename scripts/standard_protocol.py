"""The standard protocol: the default run of each model on all of MNIST, over seeds, as a markdown table.

For each seed and each model (interleaved: seed 0 of every model, then seed 1, ..., so a slow spell of a
shared machine hits every model alike) it builds the run's config exactly as ``digitflow run --train
mnist:train --model NAME --seed S`` does (:func:`digitflow.params.run.build_config`: the model's and the
device's defaults), trains with the pipeline's own core (:func:`digitflow.training.classifier.fit`, the
train task's call) on the 60,000 training images, and evaluates on the 10,000 test images and on the
cross-domain target (USPS, framed as the run frames it). No MLflow, no Prefect: the figures are the
run's, without the run's other steps (attacks, export). It prints a line per run as it goes, then per
model: test accuracy mean and worst, USPS accuracy mean and worst, training time mean (the train task's
``train/seconds``: the epochs alone) and its ratio to the first model's.

    python scripts/standard_protocol.py --data-dir ../shared/data --seeds 5 --models lenet,minivgg
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device, training_precision
from digitflow.errors import DigitflowError
from digitflow.evaluation.classifier import evaluate
from digitflow.params.run import build_config
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit


@dataclass(frozen=True)
class Result:
    """One model and seed: held-out and cross-domain accuracy, and the training epochs' seconds."""

    model: str
    seed: int
    test: float
    cross: dict[str, float]
    seconds: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the official files (MNIST/raw, USPS), offline")
    parser.add_argument("--cache-dir", default=".cache/digitflow", help="transformed-tensor cache (.cache/digitflow)")
    parser.add_argument("--models", default="lenet,minivgg", help="comma-separated --model values (lenet,minivgg)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per model (5)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (0)")
    parser.add_argument("--train", default="mnist:train", help="the training split (mnist:train)")
    parser.add_argument("--device", default="auto", help="the run's --device (auto)")
    parser.add_argument("--epochs", type=int, default=None, help="the run's --epochs (default: the run's default)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores as a run alone)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1) or (args.threads or 1) < 1:
        parser.error("--seeds, --epochs and --threads must be at least 1")
    args.models = [m for m in args.models.split(",") if m]
    if not args.models:
        parser.error("--models needs at least one model")
    return args


Inputs = dict[str, tuple[torch.Tensor, torch.Tensor, int]]  # spec -> images, labels, number of classes


def run_one(model: str, seed: int, args: argparse.Namespace, data: Inputs) -> Result:
    """The default run of ``model`` with ``seed``: train, then evaluate on the test split and every target."""
    options = {"epochs": args.epochs} if args.epochs is not None else {}
    config = build_config(
        train=args.train, model=model, seed=seed, device=args.device, data_dir=args.data_dir, offline=True, **options
    )
    cfg, device = config.train, resolve_device(config.train.device)
    images, labels, num_classes = data[config.data.train]
    net = build_model(num_classes, cfg.seed, cfg.model).to(device)  # the train task's model, seed and data
    result = fit(net, images.to(device), labels.to(device), cfg, augment=build_augment(cfg.augment))
    seconds = sum(h["seconds"] for h in result.history)
    net.eval()

    def accuracy(spec: str) -> float:
        images, labels, _ = data[spec]
        return evaluate(net, images.to(device), labels.to(device)).accuracy

    return Result(model, seed, accuracy(config.data.test), {t: accuracy(t) for t in config.data.targets}, seconds)


def table(results: list[Result], models: list[str]) -> str:
    """The markdown table: one row per model, in the order given."""
    targets = sorted({t for r in results for t in r.cross})
    header = ["model", "seeds", "test accuracy mean", "worst"]
    for t in targets:
        header += [f"{t.split(':')[0].upper()} accuracy mean", "worst"]
    header += ["training time mean (s)", f"vs {models[0]}"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    base = statistics.mean(r.seconds for r in results if r.model == models[0])
    for model in models:
        mine = [r for r in results if r.model == model]
        cells = [
            model,
            str(len(mine)),
            f"{statistics.mean(r.test for r in mine):.4f}",
            f"{min(r.test for r in mine):.4f}",
        ]
        for t in targets:
            values = [r.cross[t] for r in mine]
            cells += [f"{statistics.mean(values):.4f}", f"{min(values):.4f}"]
        seconds = statistics.mean(r.seconds for r in mine)
        cells += [f"{seconds:.0f}", f"{seconds / base:.2f}x"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    # Every config first: a model that cannot be built, or data that is not there, fails before any training.
    configs = [build_config(train=args.train, model=m, device=args.device, data_dir=args.data_dir, offline=True)
               for m in args.models]  # fmt: skip
    specs = {s for c in configs for s in (c.data.train, c.data.test, *c.data.targets)}
    data: Inputs = {}
    for spec in sorted(specs):
        dataset = load_dataset(spec, args.data_dir, args.cache_dir, offline=True)
        data[spec] = (*model_inputs(dataset, configs[0].data.target_preprocess, "cpu"), dataset.num_classes)
    device = resolve_device(configs[0].train.device)
    first = configs[0]
    print(
        f"standard protocol: train {first.data.train}, test {first.data.test}, targets "
        f"{', '.join(first.data.targets) or 'none'}; {device} ({training_precision(device, first.train.amp)}, "
        f"{torch.get_num_threads()} threads); torch {torch.__version__}",
        flush=True,
    )
    results: list[Result] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for model in args.models:
            result = run_one(model, seed, args, data)
            results.append(result)
            cross = "".join(f" {t} {a:.4f}" for t, a in result.cross.items())
            print(
                f"{model:<12} seed {seed}: test {result.test:.4f}{cross}  training {result.seconds:.1f} s", flush=True
            )
    print()
    print(table(results, args.models))
    print(f"\n({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DigitflowError as exc:  # bad input (no data, a model that cannot be built): one line
        sys.exit(f"standard_protocol.py: error: {exc}")
