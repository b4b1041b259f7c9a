"""The digitflow pipeline: data -> train -> evaluate -> cross-domain test -> robustness -> export.

Read top to bottom, :func:`pipeline` is the table of contents; each step is a task in ``tasks/``
that calls one ``digitflow`` function and logs to MLflow under this flow run's parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from digitflow.config import flatten
from digitflow.config.options import RUN_OPTIONS, defaults
from digitflow.errors import ExportError
from digitflow.export.exporters import prestart_verifier
from digitflow.params.run import (
    augment_family,
    build_config,
    check_experiment,
    check_output_dir,
    checkpoint_path,
    default_run_config,
    source_only_config,
)
from digitflow.training.data_parallel import check_data_parallel
from flows.signature import takes_options
from flows.summary import PipelineSummary, publish_summary
from reporting.logs import quiet_expected_errors
from reporting.timing import RunClock
from tasks.data import prepare_data
from tasks.evaluate import cross_domain_test, evaluate_model, target_key
from tasks.export import export_model
from tasks.robustness import robustness_test
from tasks.train import train_model
from tracking import runlog
from tracking.naming import parent_run_name
from tracking.runs import (
    CHECKPOINT_TAG,
    RESUMES_TAG,
    continue_interrupted_runs,
    flow_run_tags,
    tracked_run,
)
from tracking.store import setup_tracking


@flow(name="digitflow-pipeline", log_prints=True)
@takes_options(RUN_OPTIONS)
def pipeline(**options: Any) -> PipelineSummary:
    """Train the model (LeNet by default) on ``train``, evaluate on ``test``, test across domains on each
    ``target``, export.

    One parameter per option of ``digitflow run`` (digitflow/config/options.py, where each is defined
    with its type, default and help). Dataset specs look like ``mnist:train``, ``mnist:test[:8000]``,
    ``usps:test[:50%]``. Unset, ``test``, ``target`` and ``augment`` follow the training dataset, and the
    training settings the device and the optimizer (digitflow/params/run.py). ``data_dir`` defaults to
    ``$DIGITFLOW_DATA_DIR`` of the process that runs the flow (for a deployment: the worker's
    environment), else ``./data``. ``adapt="dann"`` also trains the source-only model, so every
    cross-domain figure has its baseline; ``nproc`` > 1 trains data-parallel on that many processes.
    """
    clock = RunClock()  # where the wall time goes: start-up (process start to here), then a lap per step
    prestart_verifier()  # the export's verifier process imports torch meanwhile, not after the export (step 5)
    quiet_expected_errors()  # one line per expected error in the log (a deployment's worker shows it)
    options = {**defaults(RUN_OPTIONS), **options}
    config = build_config(**options)
    experiment, nproc = options["experiment"], options["nproc"]
    check_data_parallel(config, nproc)
    check_experiment(experiment, how_to_change="the experiment parameter (-p experiment=NAME)")
    check_output_dir(config.output_dir, how_to_change="the output_dir parameter (-p output_dir=DIR)")
    data = config.data
    experiment_id = setup_tracking(experiment, output_dir=config.output_dir)
    tags = flow_run_tags()
    with tracked_run(
        run_name=parent_run_name(config, default_run_config(config)), tags=tags
    ) as parent:  # ends KILLED on Ctrl-C / SIGTERM
        run_id = parent.info.run_id
        runlog.log_params(flatten(config))
        if options["augment"] is None:  # train.augment.* say what was used; this tag says why
            runlog.set_tag("train.augment.default_for", augment_family(config.data.train))
        clock.lap("tracking")

        # 1. data: download + transform every split the run needs, before any long work starts
        train_data = prepare_data(data.train, data.data_dir, data.cache_dir, data.offline, run_id)
        test_data = prepare_data(data.test, data.data_dir, data.cache_dir, data.offline, run_id)
        target_data = [prepare_data(t, data.data_dir, data.cache_dir, data.offline, run_id) for t in data.targets]
        runlog.set_tags({"dataset.train.digest": train_data.digest, "dataset.test.digest": test_data.digest})
        runlog.set_tags({f"dataset.target.{target_key(t.spec)}.digest": t.digest for t in target_data})
        clock.lap("data")

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
        clock.lap("training")
        test_metrics = evaluate_model(trained, test_data, data, run_id)
        clock.lap("evaluation")
        cross_metrics = [cross_domain_test(trained, t, data, run_id, baseline=baseline) for t in target_data]
        clock.lap("cross_domain")
        # 4b. robustness: the held-out split under FGSM and PGD attacks (--attack none: skipped)
        robust_metrics = (
            robustness_test(trained, test_data, data, config.robustness, config.train.seed, run_id)
            if config.robustness.attacks
            else {}
        )
        clock.lap("robustness")

        # 5. export (TorchScript + torch.export), verify, register; a model that cannot be exported keeps
        # what the run trained and measured, and the run ends with the reason in one line after its summary
        export_error: ExportError | None = None
        try:
            exported = export_model(trained, test_data, config, test_metrics, cross_metrics, run_id)
        except ExportError as exc:
            exported, export_error = {}, exc
            runlog.set_tag("export.error", str(exc))
        clock.lap("export")

        times = clock.breakdown()  # 6. where the time went: time/* metrics and a line of the summary
        runlog.log_metrics(times)
        summary = PipelineSummary.collect(
            parent, experiment_id, trained, test_metrics, cross_metrics, exported, robust_metrics, times
        )
        summary.export_error = str(export_error or "")
    publish_summary(summary)
    if export_error is not None:
        raise not_exported(export_error, checkpoint, run_id)
    return summary


def not_exported(error: ExportError, checkpoint: str, run_id: str) -> ExportError:
    """The one line a run ends with when its model could not be exported: why, and what it keeps."""
    return ExportError(
        f"the model was trained but not exported: {error}; the run keeps what it trained: the checkpoint "
        f"{checkpoint}, the train step's logged model and every figure, in MLflow run {run_id}"
    )


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
