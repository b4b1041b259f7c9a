"""Robustness task: the trained model's accuracy on the held-out split under FGSM and PGD attacks."""

from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE

from digitflow.config import DataConfig, RobustnessConfig
from digitflow.data import PreparedDataset
from digitflow.data.framing import model_inputs
from digitflow.evaluation.attacks import eps_step, robustness_curve
from digitflow.evaluation.classifier import eval_batch_size
from digitflow.evaluation.plots import adversarial_grid, robustness_figure
from digitflow.training import cpu_share
from reporting import timing
from reporting.progress import run_logger
from tasks.data import load_prepared
from tasks.evaluate import _log_to_parent
from tasks.train import TrainedModel
from tracking import runlog
from tracking.runs import child_run


def headline_key(eps: float) -> str:
    """The parent run's headline figure: ``robust/pgd/accuracy_eps10`` for epsilon 0.1."""
    return f"robust/pgd/accuracy_eps{eps_step(eps)}"


@task(name="robustness", cache_policy=NO_CACHE, persist_result=False)
def robustness_test(
    trained: TrainedModel,
    data: PreparedDataset,
    config: DataConfig,
    robustness: RobustnessConfig,
    seed: int = 0,
    parent_run_id: str | None = None,
) -> dict[str, float]:
    """Attack the held-out images (the first ``robustness.num_images``) at each epsilon.

    Logs ``robust/fgsm/accuracy`` and ``robust/pgd/accuracy`` with step = round(epsilon x 100), the
    accuracy-versus-epsilon plot and a grid of clean and adversarial images; the parent run gets
    PGD's accuracy at ``robustness.headline_eps`` (``robust/pgd/accuracy_eps10``) and its standard error
    (``robust/pgd/accuracy_eps10_stderr``). Returns
    ``{"robust/<attack>/accuracy_eps<step>": accuracy}`` for every attack and epsilon.
    """
    logger = run_logger()
    dataset = load_prepared(data, config.data_dir, config.cache_dir)
    images, labels = model_inputs(dataset, config.target_preprocess, trained.device)
    if robustness.num_images is not None:
        images, labels = images[: robustness.num_images], labels[: robustness.num_images]
    with child_run("robustness", parent_run_id, tags={"dataset.test.digest": data.digest}) as run:
        runlog.log_params({"spec": data.spec, "num_images": len(labels)})
        with timing.work("attacks"), cpu_share.share():  # this run's share of the cores, while it attacks
            curve = robustness_curve(
                trained.model,
                images,
                labels,
                robustness.epsilons,
                attacks=robustness.attacks,
                pgd_steps=robustness.pgd_steps,
                pgd_step_size=robustness.pgd_step_size,
                random_start=robustness.random_start,
                seed=seed,
                batch_size=eval_batch_size(images.device),
            )
        curves = curve.metrics() + [
            ("robust/pgd/accuracy_alone", value, eps_step(eps))
            for eps, value in zip(curve.epsilons, curve.pgd_alone, strict=True)
        ]
        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(
            run.info.run_id, metrics=[Metric(name, value, now, step) for name, value, step in curves]
        )
        pgd = f"PGD-{robustness.pgd_steps}"
        accuracy = {pgd if a == "pgd" else a: v for a, v in curve.accuracy.items()}
        runlog.log_figure(
            robustness_figure(curve.epsilons, accuracy, title=f"{data.spec}, {curve.num_images} images"),
            "robustness/accuracy_vs_epsilon.png",
        )
        if (
            curve.example_images is not None
            and curve.example_predictions is not None
            and curve.example_labels is not None
        ):
            runlog.log_figure(
                adversarial_grid(
                    curve.example_images,
                    curve.example_predictions,
                    curve.example_labels,
                    curve.epsilons,
                    list(dataset.classes),
                    title=f"{data.spec}: clean (eps 0) and under {list(accuracy)[-1]}, predictions in red where wrong",
                ),
                "robustness/adversarial_examples.png",
            )
    metrics = {f"{name}_eps{step}": value for name, value, step in curve.metrics()}
    if "pgd" in curve.accuracy and robustness.headline_eps in curve.epsilons:
        eps, key = robustness.headline_eps, headline_key(robustness.headline_eps)
        # the headline and its standard error: what the figure could move by with other images (n matters)
        _log_to_parent(parent_run_id, {key: curve.at("pgd", eps), f"{key}_stderr": curve.stderr("pgd", eps)})
    for attack, values in curve.accuracy.items():
        logger.info(
            "accuracy under %s: %s",
            attack.upper(),
            ", ".join(f"{v:.4f} at eps {e:g}" for e, v in zip(curve.epsilons, values, strict=True)),
        )
    return metrics
