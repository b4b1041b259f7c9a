"""The digitflow GAN flow: data -> judge -> train the GAN (judged every epoch) -> export the generator.

Read top to bottom, :func:`gan_pipeline` is the table of contents; each step is a task in
``tasks/gan.py`` (or ``tasks/data.py``, ``tasks/train.py`` for the judge) that logs to MLflow under
this flow run's parent run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
from prefect import flow
from prefect.artifacts import create_link_artifact

from digitflow.config import GanConfig, flatten
from digitflow.config.options import GAN_OPTIONS, defaults
from digitflow.data import parse_spec
from digitflow.data.own import classes_of
from digitflow.params.gan import build_gan_config, gan_checkpoint_path
from digitflow.params.run import check_experiment, check_output_dir
from flows.signature import takes_options
from flows.summary import publish_lines
from reporting.logs import quiet_expected_errors
from tasks.data import prepare_data
from tasks.gan import TrainedGan, export_generator, load_judge, train_gan, train_judge
from tracking import runlog
from tracking.runs import flow_run_tags, tracked_run
from tracking.store import setup_tracking, unwrap
from tracking.ui import open_ui_line, run_url, ui_command

GAN_EXPERIMENT = "digitflow-gan"

GAN_EXPERIMENT_DESCRIPTION = unwrap("""\
**digitflow GAN**: generative adversarial networks trained on digits by the Prefect flow `digitflow-gan`
(`digitflow gan`, or a deployment run by a worker). One parent run per flow run, named after what differs from
the architecture's defaults, then architecture, training split and epochs; its child runs are the judge
(a LeNet trained on the same data, unless `--judge` named one), `train` (per-epoch losses, FID and class
figures, a sample grid per epoch under `samples/`, an animated `samples/progress.gif`) and `export`.

To compare runs, add these columns (*Columns* above the table):

- Metrics: `gan/fid`, `gan/fid_floor`, `gan/fid_ratio`, `gan/coverage`, `gan/entropy`, `gan/confidence`
- Parameters: `train.arch`, `train.epochs`, `train.batch_size`, `train.optimizer.kwargs.lr`, `train.ema_decay`
- Tags: `gan.collapse`, `prefect.flow_run_name`

The exported generator of each run is a version of the registered model `digitflow-gan-generator`
(*Models*; the newest has the alias `candidate`).
""")


def gan_run_name(config: GanConfig) -> str:
    """What a GAN run did, for the runs list: the training and evaluation options that differ from the
    architecture's defaults, then ``GAN-<arch> <train split> epochs=N``."""
    defaults = flatten(GanConfig(train=build_gan_config(arch=config.train.arch).train))
    ours = flatten(config)
    changed = []
    for key, value in ours.items():
        if not key.startswith(("train.", "evaluation.")) or key in ("train.epochs", "train.device", "train.arch"):
            continue
        if defaults.get(key) != value and value != {}:
            short = key.rsplit(".", 1)[-1]
            changed.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
    what = f"GAN-{config.train.arch} {config.data.train} epochs={config.train.epochs}"
    name = " ".join(changed) + " · " + what if changed else what
    return name if len(name) <= 240 else name[:239] + "…"


@dataclass
class GanSummary:
    """The figures and places a user looks for after a GAN run."""

    run_id: str
    experiment_id: str
    artifact_uri: str
    run_url: str
    tracking_uri: str
    arch: str
    epochs: int
    final: dict[str, float] = field(default_factory=dict)
    collapse: list[str] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_sec: float = 0.0
    device: str = "cpu"
    precision: str = "float32"
    exported: dict[str, Any] = field(default_factory=dict)
    ui_command: str = "make ui"

    @classmethod
    def collect(cls, parent, experiment_id: str, config: GanConfig, trained: TrainedGan, exported) -> GanSummary:
        """Gather the summary from the task results of one flow run."""
        return cls(
            run_id=parent.info.run_id,
            experiment_id=experiment_id,
            artifact_uri=parent.info.artifact_uri,
            run_url=run_url(parent.info.run_id, experiment_id),
            tracking_uri=mlflow.get_tracking_uri(),
            arch=config.train.arch,
            epochs=config.train.epochs,
            final=dict(trained.final),
            collapse=list(trained.collapse),
            train_seconds=trained.seconds,
            images_per_sec=trained.images_per_sec,
            device=trained.device,
            precision=trained.precision,
            exported=dict(exported or {}),
            ui_command=ui_command(),
        )

    def lines(self) -> list[str]:
        """The summary as short 'label: value' lines, for the terminal and the markdown artifact."""
        f = self.final
        out = []
        if f:
            out.append(
                f"FID {f['gan/fid']:.1f} (floor {f['gan/fid_floor']:.1f}: {f['gan/fid_ratio']:.2f}x), "
                f"coverage {f['gan/coverage']:.0f}/10, entropy {f['gan/entropy']:.3f} nats, "
                f"confidence {f['gan/confidence']:.3f}"
            )
        out.append("mode collapse: " + "; ".join(self.collapse) if self.collapse else "mode collapse: none detected")
        out.append(
            f"training: {self.arch}, {self.epochs} epochs, {self.train_seconds:.1f} s, "
            f"{self.images_per_sec:,.0f} images/s on {self.device} ({self.precision})"
        )
        out += [f"exported: {self.exported[k]}" for k in ("torchscript_path", "program_path") if k in self.exported]
        if "model_version" in self.exported:
            out.append(
                f"registered: {self.exported['model_name']} version {self.exported['model_version']} "
                f"(alias {self.exported['alias']})"
            )
        out += [
            f"MLflow run: {self.run_id} (experiment {self.experiment_id}, store {self.tracking_uri})",
            "sample grids: the child run 'train', artifacts samples/epoch_NNN.png and samples/progress.gif",
            open_ui_line(self.ui_command, self.run_url),
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish_gan_summary(summary: GanSummary) -> None:
    """Log the summary, and add a markdown artifact with it and a link artifact to the MLflow run."""
    publish_lines(
        summary.lines(),
        title="digitflow gan",
        key="digitflow-gan-summary",
        description="FID against its floor, class coverage, collapse, exports, and where the MLflow run is.",
    )
    create_link_artifact(link=summary.run_url, link_text=f"MLflow run {summary.run_id}", key="mlflow-run")


@flow(name="digitflow-gan", log_prints=True)
@takes_options(GAN_OPTIONS)
def gan_pipeline(**options: Any) -> GanSummary:
    """Train a GAN (``arch``: mlp or dcgan) on ``train``, judge what it generates against ``test`` with a
    classifier (``judge``: an MLflow model URI; None: one is trained first on ``train``), export the
    generator. Unset options take the architecture's defaults (:data:`digitflow.config.GAN_ARCH_DEFAULTS`);
    ``test`` follows ``train`` as in the classifier pipeline (``mnist:test[:8000]`` -> ``mnist:test[8000:]``).
    """
    quiet_expected_errors()
    options = {**defaults(GAN_OPTIONS), **options}
    config = build_gan_config(**options)
    experiment = options["experiment"]
    check_experiment(experiment, how_to_change="the experiment parameter (-p experiment=NAME)")
    check_output_dir(config.output_dir, how_to_change="the output_dir parameter (-p output_dir=DIR)")
    data = config.data
    experiment_id = setup_tracking(experiment, description=GAN_EXPERIMENT_DESCRIPTION, output_dir=config.output_dir)
    # A named judge is resolved before anything else: a URI that does not resolve, or a judge of another
    # number of classes, ends the run in seconds, before data, training or a parent run in MLflow.
    num_classes = len(classes_of(parse_spec(data.train)))
    judge_model = load_judge(config.evaluation.judge, num_classes) if config.evaluation.judge else None
    tags = flow_run_tags()
    if config.evaluation.judge:
        tags["gan.judge"] = config.evaluation.judge
    with tracked_run(run_name=gan_run_name(config), tags=tags) as parent:
        run_id = parent.info.run_id
        runlog.log_params(flatten(config))

        # 1. data: the training split and the held-out real images FID compares with
        train_data = prepare_data(data.train, data.data_dir, data.cache_dir, data.offline, run_id)
        test_data = prepare_data(data.test, data.data_dir, data.cache_dir, data.offline, run_id)
        runlog.set_tags({"dataset.train.digest": train_data.digest, "dataset.test.digest": test_data.digest})

        # 2. the judge: the one named, or a LeNet trained on the same data (its own child run)
        if judge_model is None:
            judge_model = train_judge(train_data, test_data, config, run_id)

        # 3. train the GAN, judged every epoch; 4. export, verify and register the generator
        checkpoint_file = str(gan_checkpoint_path(config, train_data.digest))
        trained = train_gan(train_data, test_data, judge_model, config, checkpoint_file, run_id)
        runlog.log_metrics(trained.final)
        runlog.set_tag("gan.collapse", str(bool(trained.collapse)).lower())
        exported = export_generator(trained, config, run_id)

        summary = GanSummary.collect(parent, experiment_id, config, trained, exported)
    publish_gan_summary(summary)
    return summary


if __name__ == "__main__":
    gan_pipeline()
