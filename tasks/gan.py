"""GAN tasks: the judge (loaded from MLflow, or trained), GAN training with per-epoch figures and sample
grids, and the generator's export. Each calls ``digitflow`` functions and logs to MLflow."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import GanConfig, flatten, to_dict
from digitflow.data import PreparedDataset
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device, training_precision
from digitflow.errors import ConfigError
from digitflow.evaluation.generative import as_lenet, check_judge
from digitflow.evaluation.plots import gan_curves
from digitflow.export.exporters import export_program, export_torchscript, verify_export
from digitflow.fileio import one_line
from digitflow.models import LeNet
from digitflow.params.run import build_config
from digitflow.training.gan import (
    GeneratorJudge,
    build_step,
    collapse_reasons,
    exportable_generator,
    fit_gan,
    fixed_noise,
    generate,
    image_grid,
)
from reporting.progress import EpochProgress, run_logger, training_progress
from tasks.data import load_prepared, log_dataset_input
from tasks.export import _register, _without_pickle_warning
from tasks.train import train_model
from tracking import runlog
from tracking.runs import child_run, torch_requirement
from tracking.store import unwrap

GAN_METRICS = ("d_loss", "g_loss", "d_real", "d_fake")  # logged as gan/<name> per epoch


@task(name="load-judge", cache_policy=NO_CACHE, persist_result=False)
def load_judge(uri: str, num_classes: int) -> LeNet:
    """The classifier at MLflow model URI ``uri`` (``models:/digitflow-lenet@candidate``, ``runs:/ID/model``),
    checked to be a LeNet that predicts ``num_classes`` classes; a one-line ConfigError otherwise."""
    try:
        with _without_pickle_warning():
            judge = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - MlflowException, OSError, unpickling errors: all "does not resolve"
        raise ConfigError(
            f"the judge {uri} does not resolve in {mlflow.get_tracking_uri()} ({one_line(exc, limit=160)}); "
            "give a model URI such as models:/digitflow-lenet@candidate, or leave --judge out to train one"
        ) from None
    judge = as_lenet(judge, what=f"the judge {uri}")
    check_judge(judge, num_classes, what=f"the judge {uri}")
    run_logger().info("judge: %s", uri)
    return judge


def train_judge(data: PreparedDataset, test: PreparedDataset, config: GanConfig, parent_run_id: str | None):
    """A LeNet trained by the classifier's own train task (its own child run, ``judge``) on the GAN's
    training data, with the classifier's defaults (``config.evaluation.judge_epochs`` epochs if set)."""
    run_config = build_config(
        train=data.spec,
        test=test.spec,
        target=[],
        epochs=config.evaluation.judge_epochs,
        seed=config.train.seed,
        device=config.train.device,
        data_dir=config.data.data_dir,
        cache_dir=config.data.cache_dir,
        offline=config.data.offline,
        output_dir=config.output_dir,
    )
    checkpoint = Path(config.output_dir) / "checkpoints" / f"judge-{parent_run_id or 'run'}.pt"
    trained = train_model.with_options(name="train-judge")(
        data, run_config, str(checkpoint), parent_run_id, run_name="judge"
    )
    return trained.model


@dataclass
class TrainedGan:
    """What the GAN train task hands to the tasks after it."""

    generator: torch.nn.Module  # the one samples come from (the moving average when there is one), eval, on device
    discriminator: torch.nn.Module
    device: str
    seconds: float
    images_per_sec: float
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # the last evaluation's gan/* figures
    collapse: list[str] = field(default_factory=list)  # why the run counts as collapsed; empty: it does not
    precision: str = "float32"
    resumed_from_epoch: int = 0


class GanProgress(EpochProgress):
    """The classifier's progress output (bar or log lines) with a GAN's figures in the epoch line."""

    def on_epoch(self, record: dict[str, float]) -> None:
        self._task = None
        training_progress.completed = int(record["epoch"])
        judged = (
            f"  FID {record['gan/fid']:.1f} ({record['gan/fid_ratio']:.2f}x floor)  coverage "
            f"{record['gan/coverage']:.0f}/10  entropy {record['gan/entropy']:.3f}"
            if "gan/fid" in record
            else ""
        )
        self.logger.info(
            "epoch %d/%d  D loss %.3f  G loss %.3f  D(x) %.2f  D(G(z)) %.2f%s  %.1f s",
            record["epoch"],
            self.epochs,
            record["d_loss"],
            record["g_loss"],
            record["d_real"],
            record["d_fake"],
            judged,
            record["seconds"],
        )


@task(name="train-gan", cache_policy=NO_CACHE, persist_result=False)
def train_gan(
    data: PreparedDataset,
    test: PreparedDataset,
    judge: LeNet,
    config: GanConfig,
    checkpoint: str,
    parent_run_id: str | None = None,
) -> TrainedGan:
    """Train the GAN on ``data`` and judge it on ``test`` every ``config.evaluation.every`` epochs.

    Logs, in a child run ``train``: ``gan/d_loss``, ``gan/g_loss``, ``gan/d_real``, ``gan/d_fake`` per
    epoch and ``gan/fid``, ``gan/fid_floor``, ``gan/fid_ratio``, ``gan/coverage``, ``gan/entropy``,
    ``gan/confidence`` per evaluation epoch (step = epoch); a grid of samples from one fixed noise batch
    per epoch (``samples/epoch_NNN.png``); at the end the loss curves, an animated GIF of the grids,
    the generator's and discriminator's weights, and the tag ``gan.collapse``.
    """
    logger = run_logger()
    cfg, ev = config.train, config.evaluation
    device = resolve_device(cfg.device)
    dataset = load_prepared(data, config.data.data_dir, config.data.cache_dir)
    images, _ = model_inputs(dataset, config.data.target_preprocess, device)
    held_out, _ = model_inputs(load_prepared(test, config.data.data_dir, config.data.cache_dir), "mnist-frame", device)
    precision = training_precision(device, cfg.amp)
    judge = judge.to(device).eval()
    judged = GeneratorJudge(judge, held_out, images, cfg.latent_dim, ev, seed=cfg.seed)
    logger.info(
        "training a %s GAN on %s (%d images) on %s (%s) for %d epochs; FID on %d generated vs %d of %s, floor %.1f",
        cfg.arch,
        data.spec,
        len(images),
        device,
        precision,
        cfg.epochs,
        judged.num_images,
        judged.num_images,
        test.spec,
        judged.floor,
    )
    noise = fixed_noise(ev.grid_images, cfg.latent_dim, cfg.seed, device)
    grids: list[np.ndarray] = []

    tags = {"dataset.train.digest": data.digest, "dataset.test.digest": test.digest, "train.precision": precision}
    with child_run("train", parent_run_id, tags=tags):
        runlog.log_params(flatten(cfg, prefix="train."))
        runlog.log_params({**flatten(ev, prefix="evaluation."), "evaluation.num_images_used": judged.num_images})
        runlog.log_json(to_dict(config), "config.json")
        log_dataset_input(dataset, context="training")
        progress = GanProgress(logger, cfg.epochs)
        step = build_step(images, cfg, evaluate=judged, eval_every=ev.every)

        def on_epoch(record: dict[str, float]) -> None:
            progress.on_epoch(record)
            _log_epoch(record)
            grid = _grid_png(generate(step.sampler, noise))
            grids.append(grid)
            runlog.log_image(grid, artifact_file=f"samples/epoch_{int(record['epoch']):03d}.png")

        with progress.running():
            result = fit_gan(
                images,
                cfg,
                checkpoint_path=checkpoint,
                resume=config.resume,
                on_batch=progress.on_batch,
                on_epoch=on_epoch,
                step=step,
            )
        if result.resumed_from_epoch:
            logger.info("resumed from the checkpoint after epoch %d", result.resumed_from_epoch)
        runlog.set_tag("resumed_from_epoch", str(result.resumed_from_epoch))
        for record in result.history[: result.resumed_from_epoch]:  # the checkpoint's epochs: complete curves
            _log_epoch(record)

        trained_seconds = sum(h["seconds"] for h in result.history)
        images_per_sec = len(images) * len(result.history) / trained_seconds if trained_seconds else 0.0
        evaluated = [h for h in result.history if "gan/fid" in h]
        final = {k: v for k, v in evaluated[-1].items() if k.startswith("gan/")} if evaluated else {}
        reasons = collapse_reasons(result.history, ev)
        runlog.log_metrics({"train/images_per_sec": images_per_sec, "train/seconds": trained_seconds})
        runlog.set_tag("gan.collapse", str(bool(reasons)).lower())
        if reasons:
            runlog.set_tag("gan.collapse_reasons", "; ".join(reasons))
            logger.warning("mode collapse: %s", "; ".join(reasons))
        runlog.log_figure(gan_curves(result.history), "plots/gan_curves.png")
        if grids:
            runlog.log_artifact(_gif(grids), "samples")
        _log_weights(result.trained_generator, result.discriminator, result.generator if cfg.ema_decay else None)

    return TrainedGan(
        generator=result.generator,
        discriminator=result.discriminator,
        device=str(device),
        seconds=trained_seconds,
        images_per_sec=images_per_sec,
        history=result.history,
        final=final,
        collapse=reasons,
        precision=precision,
        resumed_from_epoch=result.resumed_from_epoch,
    )


def _log_epoch(record: dict[str, float]) -> None:
    """One epoch's figures as ``gan/*`` metrics, step = epoch."""
    metrics = {f"gan/{k}": record[k] for k in GAN_METRICS}
    metrics.update({k: v for k, v in record.items() if k.startswith("gan/")})
    metrics["train/seconds_per_epoch"] = record["seconds"]
    runlog.log_metrics(metrics, step=int(record["epoch"]))


def _grid_png(images: torch.Tensor) -> np.ndarray:
    """Samples (N, 1, 28, 28) in [0, 1] as one uint8 grid image, 10 per row."""
    return (image_grid(images.cpu(), columns=10) * 255).round().to(torch.uint8).numpy()


def _gif(grids: list[np.ndarray]) -> str:
    """The epoch grids as an animated GIF (0.4 s a frame, the last held for 2 s), in a temp file."""
    from PIL import Image

    frames = [Image.fromarray(g) for g in grids]
    path = Path(tempfile.mkdtemp(prefix="digitflow-gan-")) / "progress.gif"
    durations = [400] * (len(frames) - 1) + [2000]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return str(path)


def _log_weights(generator, discriminator, ema) -> None:
    """The final weights as state dicts (``weights/generator.pt``, ``discriminator.pt``, ``generator_ema.pt``)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in (("generator", generator), ("discriminator", discriminator), ("generator_ema", ema)):
            if module is None:
                continue
            path = Path(tmp) / f"{name}.pt"
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)
            runlog.log_artifact(str(path), "weights")


@task(name="export-gan", cache_policy=NO_CACHE, persist_result=False)
def export_generator(trained: TrainedGan, config: GanConfig, parent_run_id: str | None = None) -> dict[str, Any]:
    """Export the generator (noise (N, latent_dim) -> images (N, 1, 28, 28) in [0, 1]) as TorchScript
    (``generator.pt``) and torch.export (``generator.pt2``), check that each gives the eager model's
    images for the same noise in a fresh Python that imports only torch, log both, and register the
    TorchScript file as a new version of ``digitflow-gan-generator`` with alias ``candidate``, tagged
    with the run's final figures."""
    logger = run_logger()
    cfg, latent_dim = config.export, config.train.latent_dim
    with child_run("export", parent_run_id) as run:
        out_dir = Path(config.output_dir) / "exports" / (parent_run_id or run.info.run_id)
        model = exportable_generator(trained.generator, latent_dim)
        noise = fixed_noise(cfg.verify_images, latent_dim, config.train.seed + 1)
        with torch.inference_mode():
            reference = model(noise).clone()
        runlog.log_params({"mode": cfg.mode, "verify_images": len(noise), "max_abs_diff": cfg.max_abs_diff})
        torchscript = export_torchscript(model, noise[:1], out_dir / "generator.pt", mode=cfg.mode)
        program = export_program(model, noise[:1], out_dir / "generator.pt2")
        metrics: dict[str, float] = {}
        for name, path in (("torchscript", torchscript), ("program", program)):
            check = verify_export(path, noise, reference, max_abs_diff=cfg.max_abs_diff, predictions=False)
            metrics[f"export/{name}_max_abs_diff"] = check["max_abs_diff"]
            logger.info(
                "%s verified on %d noise vectors: max |pixel diff| %.2e",
                path.name,
                check["num_images"],
                check["max_abs_diff"],
            )
            runlog.log_artifact(str(path), "export")
        runlog.log_metrics(metrics)

        from digitflow.export.exporters import load_export

        scripted = load_export(torchscript)
        example = noise[:2].double().numpy()
        with torch.inference_mode():
            output = scripted(torch.from_numpy(example)).numpy()
        from mlflow.models import Model, infer_signature

        with _without_pickle_warning():
            info = Model.log(
                artifact_path=None,
                name="generator",
                flavor=mlflow.pytorch,
                run_id=parent_run_id,
                pytorch_model=scripted,
                serialization_format="pickle",  # the only format MLflow takes for TorchScript
                signature=infer_signature(example, output),
                input_example=example,
                pip_requirements=[torch_requirement()],
            )
        headline = {k: v for k, v in trained.final.items() if k in ("gan/fid", "gan/fid_ratio", "gan/coverage")}
        version = _register(info.model_uri, cfg.registered_model_name, cfg.alias, headline)
        mlflow.MlflowClient().update_model_version(
            cfg.registered_model_name,
            version,
            description=_MODEL_DESCRIPTION.format(latent=latent_dim, arch=config.train.arch),
        )
        logger.info("registered %s version %s with alias %s", cfg.registered_model_name, version, cfg.alias)
    return {
        "torchscript_path": str(torchscript),
        "program_path": str(program),
        "model_name": cfg.registered_model_name,
        "model_version": version,
        "alias": cfg.alias,
        **metrics,
    }


_MODEL_DESCRIPTION = unwrap("""\
GAN generator ({arch}), TorchScript. Input: noise `(N, {latent})` float (standard normal); output: images
`(N, 1, 28, 28)` in `[0, 1]`, a white digit on black, as the digitflow classifiers take them.
""")
