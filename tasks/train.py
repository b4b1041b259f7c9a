"""Training task: fit the run's model (LeNet by default) on a prepared dataset, with progress output and
MLflow logging."""

from __future__ import annotations

import collections
import copy
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import RunConfig, flatten, to_dict
from digitflow.data import PreparedDataset, parse_spec
from digitflow.data.framing import model_inputs
from digitflow.device import resolve_device, training_precision
from digitflow.errors import DigitflowError
from digitflow.evaluation.plots import training_curves
from digitflow.models.factory import model_label
from digitflow.training import cpu_share
from digitflow.training.augment import build_augment
from digitflow.training.checkpoint import load_checkpoint, load_model_state
from digitflow.training.classifier import FitResult, build_model, fit
from digitflow.training.dann import DannResult, fit_dann
from reporting import timing
from reporting.progress import EpochProgress, run_logger
from tasks.data import adaptation_images, load_prepared, log_dataset_input
from tracking import runlog
from tracking.runs import child_run, torch_requirement, without_save_checks
from tracking.store import PROJECT_ROOT


@dataclass
class TrainedModel:
    """What the train task hands to the tasks after it."""

    model: torch.nn.Module  # in eval mode, on ``device``
    device: str
    images_per_sec: float
    seconds: float
    precision: str = "float32"  # or "bfloat16 autocast"
    step: str = "eager"  # or "cuda-graph" (digitflow.training.cuda_graph); with the reason if graphs were not possible
    # Domain adaptation (--adapt): the dataset adapted to (:func:`domain`), and the model with that domain's batch-norm
    # statistics (digitflow.training.dann, AdaBN), which the cross-domain stage evaluates on that dataset's images.
    adapted_to: str | None = None
    target_model: torch.nn.Module | None = None

    def model_for(self, spec: str) -> torch.nn.Module:
        """The model to evaluate on ``spec``'s images: the target-statistics one for the dataset adapted to."""
        if self.target_model is not None and domain(spec) == self.adapted_to:
            return self.target_model
        return self.model


def domain(spec: str) -> str:
    """The images a spec's split and slice are drawn from: a built-in dataset's name (``usps``), or a
    user's files (``folder:/data/scans``), so that two folders are two domains."""
    parsed = parse_spec(spec)
    return f"{parsed.name}:{parsed.path}" if parsed.is_own else parsed.name


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train_model(
    data: PreparedDataset,
    config: RunConfig,
    checkpoint: str,
    parent_run_id: str | None = None,
    adapt_data: PreparedDataset | None = None,
    run_name: str = "train",
    nproc: int = 1,
) -> TrainedModel:
    """Train on ``data`` per ``config.train``; checkpoint every epoch to ``checkpoint``. ``run_name``
    names the child run (the GAN flow trains its judge in one called ``judge``).

    ``nproc`` > 1: data-parallel training on that many processes, launched with torchrun
    (tasks/ddp_worker.py; rank 0 logs the epochs to this task's run and writes the checkpoint).

    Logs, in a child run: the training config, ``train/loss`` and ``train/accuracy`` per epoch
    (step = epoch), ``train/images_per_sec``, ``train/seconds``, the curves, the final checkpoint and
    the model (``mlflow.pytorch.log_model`` with signature and input example).

    With ``config.adapt.method`` (DANN) and ``adapt_data``, the images of ``adapt_data`` (never its
    labels) are the unlabeled target: ``adapt/domain_loss``, ``adapt/domain_accuracy``,
    ``adapt/lambda`` and ``adapt/pseudo_labeled`` are logged per epoch too, and the model with the
    target's batch-norm statistics is logged as ``model-target``.
    """
    logger = run_logger()
    cfg = config.train
    device = resolve_device(cfg.device)
    dataset = load_prepared(data, config.data.data_dir, config.data.cache_dir)
    images, labels = model_inputs(dataset, config.data.target_preprocess, device)
    model = build_model(dataset.num_classes, cfg.seed, cfg.model).to(device)
    precision = training_precision(device, cfg.amp)
    logger.info(
        "training %s on %s (%d images) on %s (%s) for %d epochs",
        model_label(cfg.model),
        data.spec,
        len(labels),
        device,
        precision,
        cfg.epochs,
    )

    adapting = config.adapt.method is not None and adapt_data is not None
    tags = {"dataset.train.digest": data.digest, "train.precision": precision, "model": cfg.model}
    with child_run(run_name, parent_run_id, tags=tags):
        runlog.log_params(flatten(cfg, prefix="train."))
        if adapting:
            runlog.log_params(flatten(config.adapt, prefix="adapt."))
        runlog.log_json(to_dict(config), "config.json")
        log_dataset_input(dataset, context="training")

        progress = EpochProgress(logger, cfg.epochs)
        threads: list[int] = []  # torch threads, epoch by epoch: this run's share of the cores (cpu_share)

        def on_epoch(record: dict[str, float]) -> None:
            progress.on_epoch(record)
            _log_epoch({**record, "threads": threads[-1]})
            threads.append(cpu_share.apply())  # another run may have started or ended: the next epoch's share

        with cpu_share.share() as share:  # counted among the digitflow runs on this machine while it trains
            threads.append(share)
            target_model = None
            result: FitResult | DannResult
            if nproc > 1:  # data-parallel on nproc processes (torchrun); rank 0 logs to this run
                runlog.log_param("train.nproc", nproc)
                run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]  # inside child_run
                result = fit_on_ranks(model, data, config, checkpoint, run_id=run_id, nproc=nproc)
            else:
                with progress.running():
                    if adapting:
                        assert adapt_data is not None
                        adapted = fit_dann(
                            model,
                            images,
                            labels,
                            adaptation_images(adapt_data, config.data, device),  # images only: no target label
                            cfg,
                            config.adapt,
                            augment=build_augment(cfg.augment),
                            checkpoint_path=checkpoint,
                            resume=config.resume,
                            on_batch=progress.on_batch,
                            on_epoch=on_epoch,
                        )
                        result = adapted
                        target_model = adapted.target_model
                    else:
                        result = fit(
                            model,
                            images,
                            labels,
                            cfg,
                            augment=build_augment(cfg.augment),
                            checkpoint_path=checkpoint,
                            resume=config.resume,
                            on_batch=progress.on_batch,
                            on_epoch=on_epoch,
                        )
        step = result.step if isinstance(result, FitResult) else "eager (DANN)"
        if config.resume and not result.resumed_from_epoch:
            logger.info("no checkpoint at %s: trained from scratch", checkpoint)
        elif result.resumed_from_epoch >= cfg.epochs:
            logger.warning(
                "the checkpoint at %s had finished all %d epochs: nothing was trained; "
                "the figures below are the checkpoint's",
                checkpoint,
                cfg.epochs,
            )
        elif result.resumed_from_epoch:
            logger.info("resumed from the checkpoint after epoch %d", result.resumed_from_epoch)
        runlog.set_tag("resumed_from_epoch", str(result.resumed_from_epoch))
        runlog.set_tag("train.step", step)
        if step.startswith("eager (") and not adapting:
            logger.info("CUDA graphs not used: %s", step.removeprefix("eager (").removesuffix(")"))
        for record in result.history[: result.resumed_from_epoch]:  # the checkpoint's epochs: complete curves
            _log_epoch(record)

        seconds = sum(h["seconds"] for h in result.history)
        timing.add_work("training", sum(h["seconds"] for h in result.history[result.resumed_from_epoch :]))
        images_per_sec = len(labels) * len(result.history) / seconds if seconds else 0.0
        runlog.log_metrics({"train/images_per_sec": images_per_sec, "train/seconds": seconds})
        runlog.log_figure(training_curves(result.history), "plots/training_curves.png")
        runlog.log_artifact(checkpoint, "checkpoint")
        _log_model(model, images[:2])  # 2 images, so the logged model keeps a dynamic batch size
        if target_model is not None and target_model is not model:
            _log_model(target_model, images[:2], name="model-target")

    model.eval()
    return TrainedModel(
        model=model,
        device=str(device),
        images_per_sec=images_per_sec,
        seconds=seconds,
        precision=precision,
        step=step,
        adapted_to=domain(config.adapt.target) if adapting and config.adapt.target else None,
        target_model=target_model,
    )


def fit_on_ranks(
    model: torch.nn.Module, data: PreparedDataset, config: RunConfig, checkpoint: str, run_id: str | None, nproc: int
) -> FitResult:
    """Train with ``nproc`` processes (torchrun, ``tasks.ddp_worker``) and load the trained weights into
    ``model`` from the checkpoint rank 0 wrote. Rank 0's epoch lines go to this task's log; a failed
    rank ends the task with a one-line DigitflowError naming its last error."""
    logger = run_logger()
    with tempfile.TemporaryDirectory(prefix="digitflow-ddp-") as tmp:
        spec, outcome_file = Path(tmp) / "spec.pkl", Path(tmp) / "result.json"
        with spec.open("wb") as f:
            pickle.dump(
                {
                    "config": config,
                    "data": data,
                    "checkpoint": checkpoint,
                    "resume": config.resume,
                    "run_id": run_id,
                    "tracking_uri": mlflow.get_tracking_uri(),
                    "result": str(outcome_file),
                },
                f,
            )
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        command += ["-m", "tasks.ddp_worker", str(spec)]
        logger.info("data-parallel training on %d processes: %s", nproc, " ".join(command[1:]))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # each rank sets its own threads
        # a --model package.module:Factory beside where the run started imports in the ranks too (they start
        # in the project's folder)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path.cwd()), env.get("PYTHONPATH", "")) if p)
        last: collections.deque[str] = collections.deque(maxlen=40)
        with subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                last.append(line)
                if line.startswith("epoch "):
                    logger.info("%s", line)
        if process.returncode:
            errors = [x for x in last if re.match(r"^\s*(\[rank\d+\]: )?\w+(Error|Exception): ", x)]
            reason = errors[-1].split("]: ", 1)[-1].strip() if errors else (last[-1] if last else "no output")
            raise DigitflowError(
                f"data-parallel training on {nproc} processes failed (exit {process.returncode}): {reason}"
            )
        outcome = json.loads(outcome_file.read_text())
    load_model_state(model, load_checkpoint(checkpoint, model_name=type(model).__name__)["model"])
    return FitResult(
        model=model,
        history=outcome["history"],
        checkpoint=Path(checkpoint),
        resumed_from_epoch=int(outcome["resumed_from_epoch"]),
        step=str(outcome["step"]),
    )


def _log_epoch(record: dict[str, float]) -> None:
    """One epoch's figures as ``train/*`` metrics, step = epoch."""
    metrics = {"train/loss": record["loss"], "train/accuracy": record["accuracy"], "train/lr": record["lr"]}
    if "adv_eps" in record:  # adversarial training: loss and accuracy are on the attacked batches
        metrics["train/adv_eps"] = record["adv_eps"]
    if "threads" in record:  # the CPU threads the epoch trained with (digitflow.training.cpu_share)
        metrics["train/threads"] = record["threads"]
    runlog.log_metrics(metrics, step=int(record["epoch"]))
    adapt = {f"adapt/{key}": record[key] for key in ADAPT_METRICS if key in record}
    if adapt:
        runlog.log_metrics(adapt, step=int(record["epoch"]))


ADAPT_METRICS = ("domain_loss", "domain_accuracy", "lambda", "pseudo_labeled")  # DannStep's epoch figures


def _log_model(model: torch.nn.Module, example: torch.Tensor, name: str = "model") -> None:
    """``mlflow.pytorch.log_model`` with a signature and an input example, from a CPU copy (saved with
    the run's kept data instead if the tracking server is lost: :func:`tracking.runlog.log_model`)."""
    model.eval()
    cpu_model = copy.deepcopy(model).cpu().eval()
    example_np = example.detach().cpu().numpy().astype(np.float32)  # (2, 1, 28, 28)
    with torch.inference_mode():
        output = cpu_model(torch.from_numpy(example_np)).numpy()
    described: dict[str, Any] = {
        "signature": infer_signature(example_np, output),
        "input_example": example_np,
        "pip_requirements": [torch_requirement()],
    }
    runlog.log_model(
        name,
        log=lambda: _log_pytorch_model(cpu_model, name, described),
        save=lambda path: mlflow.pytorch.save_model(cpu_model, path=str(path), **described),
    )


def _log_pytorch_model(model: torch.nn.Module, name: str, described: dict[str, Any]) -> None:
    with without_save_checks():  # evaluation checks this model; MLflow need not reload it nor check torch==ours
        mlflow.pytorch.log_model(model, name=name, **described)
