"""GAN figures on the 8k protocol: FID against its floor, coverage and entropy, per setting, with the
training seconds (evaluation not counted) beside them.

Trains a LeNet judge once (the classifier's defaults, on ``--train``), then each setting's GAN on the
same images with :func:`digitflow.training.gan.fit_gan`, judged every ``--eval-every`` epochs by a
:class:`digitflow.training.gan.GeneratorJudge` exactly as the flow does (N generated vs N of ``--test``, floor:
N training images vs the same N of ``--test``). A setting is a name and ``KEY=VALUE`` overrides of
:class:`digitflow.config.GanTrainConfig` (``lr=``, ``lr_d=`` and ``betas=`` set the optimizer).

    OMP_NUM_THREADS=1 python scripts/gan_bench.py --data-dir ../shared/data --epochs 50
    python scripts/gan_bench.py --data-dir ../shared/data --epochs 20 \\
        --setting default --setting ema ema_decay=0.999 --setting b64 batch_size=64
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from digitflow.config import GanEvalConfig, GanTrainConfig, TrainConfig
from digitflow.data import load_dataset
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device
from digitflow.training.classifier import build_model, fit
from digitflow.training.gan import GeneratorJudge, fit_gan, generate
from flows.cli.options import literal  # "64" -> 64, "True" -> True, "hinge" stays a string


def gan_config(overrides: dict[str, str], epochs: int, seed: int) -> GanTrainConfig:
    """GanTrainConfig's defaults with ``overrides``; ``lr``, ``lr_d`` and ``betas`` (comma-separated) go
    to the optimizer (``lr_d``: the discriminator's learning rate, as a parameter group)."""
    values = {k: literal(v) for k, v in overrides.items()}
    base = GanTrainConfig(device="cpu", epochs=epochs, seed=seed)
    kwargs = dict(base.optimizer.kwargs)
    if "lr" in values:
        kwargs["lr"] = values.pop("lr")
    if "betas" in values:
        kwargs["betas"] = [float(b) for b in str(values.pop("betas")).split(",")]
    groups = {}
    if "lr_d" in values:
        groups = {"net.": {"lr": values.pop("lr_d")}}  # the DCGAN discriminator's parameters are under net.
    optimizer = dataclasses.replace(base.optimizer, kwargs=kwargs, param_groups=groups)
    return dataclasses.replace(base, optimizer=optimizer, **values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir", default=".cache/digitflow")
    parser.add_argument("--train", default="mnist:test[:8000]")
    parser.add_argument("--test", default="mnist:test[8000:]")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setting",
        nargs="+",
        action="append",
        metavar="NAME [KEY=VALUE ...]",
        help="a GAN setting: a name, then GanTrainConfig overrides (repeatable; default: the defaults)",
    )
    args = parser.parse_args(argv)
    device = resolve_device("cpu")

    def inputs(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
        return model_inputs(load_dataset(spec, args.data_dir, args.cache_dir, offline=True), "mnist-frame", device)

    images, labels = inputs(args.train)
    held_out, _ = inputs(args.test)
    judge = build_model(10, args.seed).to(device)
    fit(judge, images, labels, TrainConfig(device="cpu", seed=args.seed))
    evaluation = GanEvalConfig(every=args.eval_every)

    header = f"{'setting':<14} {'epoch':>5} {'train s':>7} {'FID':>6} {'/floor':>6} {'cover':>5} {'entropy':>7}"
    print(header, flush=True)
    for entry in args.setting or [["default"]]:
        name, overrides = entry[0], dict(kv.split("=", 1) for kv in entry[1:])
        config = gan_config(overrides, args.epochs, args.seed)
        judged = GeneratorJudge(judge, held_out, images, config.latent_dim, evaluation, seed=config.seed)
        eval_seconds = [0.0]  # time spent judging, not training

        def evaluate(
            generator: torch.nn.Module, judged: GeneratorJudge = judged, eval_seconds: list[float] = eval_seconds
        ) -> dict[str, float]:
            start = time.perf_counter()
            figures = judged(generator)
            eval_seconds[0] += time.perf_counter() - start
            return figures

        start = time.perf_counter()

        def report(
            record: dict[str, float], name: str = name, start: float = start, eval_seconds: list[float] = eval_seconds
        ) -> None:
            if "gan/fid" not in record:
                return
            seconds = time.perf_counter() - start - eval_seconds[0]
            print(
                f"{name:<14} {record['epoch']:>5.0f} {seconds:>7.0f} {record['gan/fid']:>6.1f} "
                f"{record['gan/fid_ratio']:>6.2f} {record['gan/coverage']:>5.0f} {record['gan/entropy']:>7.3f}",
                flush=True,
            )

        result = fit_gan(images, config, evaluate=evaluate, eval_every=args.eval_every, on_epoch=report)
        with torch.inference_mode():
            predicted = judge(generate(result.generator, judged.noise)).argmax(1)
        shares = torch.bincount(predicted, minlength=10).float() / len(predicted)
        listed = " ".join(f"{c}:{share:.3f}" for c, share in enumerate(shares.tolist()))
        print(f"{name:<14} class shares: {listed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
