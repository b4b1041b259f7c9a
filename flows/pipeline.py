"""The digitflow pipeline: data -> train -> evaluate -> cross-domain test -> robustness -> export.

Read top to bottom, :func:`pipeline` is the table of contents; each step is a task in ``tasks/``
that calls one ``digitflow`` function and logs to MLflow under this flow run's parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run

from digitflow.config import (
    DataConfig,
    ExportConfig,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
    TrainConfig,
    flatten,
)
from digitflow.distributed import check_data_parallel
from flows.params import (
    augment_family,
    build_config,
    check_experiment,
    check_output_dir,
    checkpoint_path,
    default_run_config,
    source_only_config,
)
from flows.summary import PipelineSummary, publish_summary
from tasks import runlog
from tasks.data import prepare_data
from tasks.evaluate import cross_domain_test, evaluate_model, target_key
from tasks.export import export_model
from tasks.logs import quiet_expected_errors
from tasks.robustness import robustness_test
from tasks.tracking import (
    CHECKPOINT_TAG,
    DEFAULT_EXPERIMENT,
    RESUMES_TAG,
    continue_interrupted_runs,
    git_commit,
    parent_run_name,
    setup_tracking,
    source_tags,
    tracked_run,
)
from tasks.train import train_model


@flow(name="digitflow-pipeline", log_prints=True)
def pipeline(
    train: str = DataConfig.train,
    test: str | None = None,
    target: list[str] | None = None,
    target_preprocess: Literal["mnist-frame", "resize"] = DataConfig.target_preprocess,
    epochs: int | None = None,
    batch_size: int | None = None,
    optimizer: str = OptimizerConfig.name,
    optimizer_kwargs: dict[str, Any] | None = None,
    param_groups: dict[str, dict[str, Any]] | None = None,
    scheduler: str | None = SchedulerConfig.name,
    scheduler_kwargs: dict[str, Any] | None = None,
    augment: list[str] | None = None,
    seed: int = TrainConfig.seed,
    device: str = TrainConfig.device,
    amp: bool | None = None,
    label_smoothing: float | None = None,
    cuda_graphs: bool | None = None,
    export_mode: Literal["script", "trace"] = ExportConfig.mode,
    data_dir: str | None = None,
    cache_dir: str = DataConfig.cache_dir,
    offline: bool = DataConfig.offline,
    resume: bool = RunConfig.resume,
    output_dir: str = RunConfig.output_dir,
    checkpoint: str | None = RunConfig.checkpoint,
    experiment: str = DEFAULT_EXPERIMENT,
    adapt: Literal["dann"] | None = None,
    adapt_target: str | None = None,
    adapt_options: dict[str, Any] | None = None,
    attack: list[str] | None = None,
    epsilons: list[float] | None = None,
    pgd_steps: int | None = None,
    attack_images: int | None = None,
    adv_train: Literal["fgsm-rs", "pgd"] | None = None,
    adv_eps: float | None = None,
    adv_steps: int | None = None,
    adv_ramp_epochs: float | None = None,
    nproc: int = 1,
) -> PipelineSummary:
    """Train LeNet on ``train``, evaluate on ``test``, test across domains on each ``target``, export.

    Dataset specs look like ``mnist:train``, ``mnist:test[:8000]``, ``usps:test[:50%]``. Unset,
    ``test``, ``target`` and ``augment`` follow the training dataset (flows/params.py: its test split,
    its cross-domain partner, its family's augmentation); the training settings (epochs, batch size,
    amp, label smoothing, CUDA graphs, the optimizer's options) follow the device the run trains on
    (``digitflow.config.train_defaults``) and, for the batch size and options, the optimizer (LBFGS);
    given ``optimizer_kwargs`` add to the defaults. ``data_dir`` defaults to ``$DIGITFLOW_DATA_DIR`` of
    the process that runs the flow (for a deployment: the worker's environment), else ``./data``;
    ``offline`` never downloads. ``scheduler=None`` trains at a constant learning rate.

    ``adapt="dann"`` adapts the model to the unlabeled images of ``adapt_target`` (DANN; settings in
    ``adapt_options``, see ``digitflow.config.AdaptConfig``) and trains the source-only model beside
    it, so every cross-domain figure has its baseline (``cross/<key>/source_only_accuracy``).
    Robustness (``digitflow.config.RobustnessConfig``; None = its default): ``attack`` the attacks run
    on the held-out split after evaluation (``[]`` or ``["none"]``: none), at ``epsilons`` with
    ``pgd_steps``, on the first ``attack_images`` images. Adversarial training
    (``AdversarialTrainingConfig``): ``adv_train`` "fgsm-rs" or "pgd" at ``adv_eps``, ``adv_steps``
    PGD steps, epsilon ramped over ``adv_ramp_epochs``.
    ``nproc`` > 1 trains data-parallel on that many processes (torchrun; gloo on the CPU, nccl on CUDA).
    """
    quiet_expected_errors()  # one line per expected error in the log (a deployment's worker shows it)
    config = build_config(
        train=train,
        test=test,
        target=target,
        target_preprocess=target_preprocess,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        optimizer_kwargs=optimizer_kwargs,
        param_groups=param_groups,
        scheduler=scheduler,
        scheduler_kwargs=scheduler_kwargs,
        augment=augment,
        seed=seed,
        device=device,
        amp=amp,
        label_smoothing=label_smoothing,
        cuda_graphs=cuda_graphs,
        export_mode=export_mode,
        data_dir=data_dir,
        cache_dir=cache_dir,
        offline=offline,
        resume=resume,
        output_dir=output_dir,
        checkpoint=checkpoint,
        adapt=adapt,
        adapt_target=adapt_target,
        adapt_options=adapt_options,
        attack=attack,
        epsilons=epsilons,
        pgd_steps=pgd_steps,
        attack_images=attack_images,
        adv_train=adv_train,
        adv_eps=adv_eps,
        adv_steps=adv_steps,
        adv_ramp_epochs=adv_ramp_epochs,
    )
    check_data_parallel(config, nproc)
    check_experiment(experiment, how_to_change="the experiment parameter (-p experiment=NAME)")
    check_output_dir(config.output_dir, how_to_change="the output_dir parameter (-p output_dir=DIR)")
    data = config.data
    experiment_id = setup_tracking(experiment, output_dir=config.output_dir)
    tags = {
        "prefect.flow_run_id": str(flow_run.id),
        "prefect.flow_run_name": str(flow_run.name),
        "git.commit": git_commit(),
        **source_tags(str(flow_run.flow_name), deployment.name),
    }
    with tracked_run(
        run_name=parent_run_name(config, default_run_config(config)), tags=tags
    ) as parent:  # ends KILLED on Ctrl-C / SIGTERM
        run_id = parent.info.run_id
        runlog.log_params(flatten(config))
        if augment is None:  # train.augment.* say what was used; this tag says why
            runlog.set_tag("train.augment.default_for", augment_family(config.data.train))

        # 1. data: download + transform every split the run needs, before any long work starts
        train_data = prepare_data(data.train, data.data_dir, data.cache_dir, data.offline, run_id)
        test_data = prepare_data(data.test, data.data_dir, data.cache_dir, data.offline, run_id)
        target_data = [prepare_data(t, data.data_dir, data.cache_dir, data.offline, run_id) for t in data.targets]
        runlog.set_tags({"dataset.train.digest": train_data.digest, "dataset.test.digest": test_data.digest})
        runlog.set_tags({f"dataset.target.{target_key(t.spec)}.digest": t.digest for t in target_data})

        # 1b. domain adaptation: the unlabeled target images, and the source-only baseline trained beside it
        adapt_data, baseline = None, None
        if config.adapt.method is not None and config.adapt.target is not None:
            adapt_data = prepare_data(config.adapt.target, data.data_dir, data.cache_dir, data.offline, run_id)
            runlog.set_tag("dataset.adapt_target.digest", adapt_data.digest)
            source_only = source_only_config(config)
            baseline = train_model.with_options(task_run_name="train source-only")(
                train_data,
                source_only,
                str(checkpoint_path(source_only, train_data.digest)),
                run_id,
                run_name="train source-only",
            )

        # 2. train (a --resume run first closes the interrupted run it continues), 3. evaluate on the
        # held-out split, 4. cross-domain targets
        checkpoint = str(checkpoint_path(config, train_data.digest))
        runlog.set_tag(CHECKPOINT_TAG, str(Path(checkpoint).resolve()))  # how a --resume run finds this one
        if config.resume:
            say_what_it_continues(continue_interrupted_runs(str(Path(checkpoint).resolve()), run_id))
        if nproc > 1:
            runlog.set_tag("train.nproc", str(nproc))
        trained = train_model(train_data, config, checkpoint, run_id, adapt_data=adapt_data, nproc=nproc)
        test_metrics = evaluate_model(trained, test_data, data, run_id)
        cross_metrics = [cross_domain_test(trained, t, data, run_id, baseline=baseline) for t in target_data]
        # 4b. robustness: the held-out split under FGSM and PGD attacks (--attack none: skipped)
        robust_metrics = (
            robustness_test(trained, test_data, data, config.robustness, config.train.seed, run_id)
            if config.robustness.attacks
            else {}
        )

        # 5. export (TorchScript + torch.export), verify, register
        exported = export_model(trained, test_data, config, test_metrics, cross_metrics, run_id)

        summary = PipelineSummary.collect(
            parent, experiment_id, trained, test_metrics, cross_metrics, exported, robust_metrics=robust_metrics
        )
    publish_summary(summary)
    return summary


def say_what_it_continues(continued: str | None) -> None:
    """One log line: which MLflow run a --resume run continues."""
    logger = get_run_logger()
    if continued is None:
        logger.info("--resume: no interrupted run with this checkpoint in the experiment")
    else:
        logger.info(
            "--resume: continues MLflow run %s (tag %s); its runs left RUNNING now end KILLED", continued, RESUMES_TAG
        )


if __name__ == "__main__":
    pipeline()
