"""What the robustness step costs and finds: a trained checkpoint's curve under FGSM and PGD, timed.

    python scripts/robustness_bench.py CHECKPOINT --data-dir ../shared/data [--images 1000 --pgd-steps 10 ...]

CHECKPOINT is a pipeline checkpoint (``outputs/checkpoints/lenet-*.pt``, or another model's, written after every
epoch). Prints the seconds the curve took and the accuracy per epsilon (the worst case over every point tried, FGSM's
own, PGD's own), and the headline with its standard error. Run it on a quiet machine: it measures time.
"""

from __future__ import annotations

import argparse
import time

import torch

from digitflow.config import RobustnessConfig
from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.evaluation.attacks import robustness_curve
from digitflow.training.checkpoint import load_checkpoint, load_model_state
from digitflow.training.classifier import build_model


def main() -> None:
    defaults = RobustnessConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a pipeline checkpoint (outputs/checkpoints/<model>-*.pt)")
    parser.add_argument("--data-dir", default="data", help="the official files (default ./data)")
    parser.add_argument("--cache-dir", default=".cache/digitflow")
    parser.add_argument("--spec", default="mnist:test", help="the held-out images (default mnist:test)")
    parser.add_argument("--images", type=int, default=defaults.num_images, help="the first N images")
    parser.add_argument("--pgd-steps", type=int, default=defaults.pgd_steps)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(defaults.epsilons))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = load_dataset(args.spec, args.data_dir, args.cache_dir, offline=True)
    images, labels = model_inputs(dataset, "mnist-frame", torch.device("cpu"))
    images, labels = images[: args.images], labels[: args.images]
    state = load_checkpoint(args.checkpoint)
    # the model the checkpoint was trained as (its settings name it; older checkpoints are LeNet's)
    model = build_model(dataset.num_classes, 0, str(state.get("config", {}).get("model", "lenet")))
    load_model_state(model, state["model"])
    model.eval()

    start = time.perf_counter()
    curve = robustness_curve(model, images, labels, args.epsilons, pgd_steps=args.pgd_steps)
    seconds = time.perf_counter() - start
    print(f"{len(labels)} images, PGD-{args.pgd_steps}, {torch.get_num_threads()} threads: {seconds:.1f} s")
    print("eps      worst-case  fgsm    pgd alone")
    for i, eps in enumerate(curve.epsilons):
        print(
            f"{eps:<8g} {curve.accuracy['pgd'][i]:.4f}      {curve.accuracy['fgsm'][i]:.4f}  {curve.pgd_alone[i]:.4f}"
        )
    if 0.1 in curve.epsilons:
        print(f"headline robust/pgd/accuracy_eps10: {curve.at('pgd', 0.1):.4f} +/- {curve.stderr('pgd', 0.1):.4f}")


if __name__ == "__main__":
    main()
