"""The prediction flow: an exported model scores a dataset spec, one row per image.

Read top to bottom, :func:`predict` loads the model (a registered version by alias or number, a run's
model, or a local exported file), reads the input the way the model needs it (its framing, from the
file), scores every image, and writes the predictions (and, for a Kaggle-layout CSV, a submission).
One MLflow run records the model, the input's digest, the predictions per class and, when the input
has labels, the accuracy. The deployment ``predict-nightly`` (prefect.yaml) runs it on a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from digitflow.config.options import PREDICT_OPTIONS, complete
from digitflow.data import parse_spec
from digitflow.params.run import check_experiment, default_data_dir
from digitflow.prediction.inputs import input_spec
from digitflow.prediction.output import check_writable, default_submission
from flows.signature import takes_options
from reporting.logs import quiet_expected_errors
from tasks.data import prepare_data
from tasks.predict import PredictionReport, load_model, predict_images
from tracking import runlog
from tracking.runs import flow_run_tags, tracked_run
from tracking.store import setup_tracking
from tracking.ui import run_url


@dataclass
class PredictionSummary:
    """What a prediction run ends with: its report, and where its MLflow run is."""

    report: PredictionReport
    model: str  # the URI given, and the registered version it resolved to
    run_id: str
    run_url: str

    def lines(self) -> list[str]:
        """Short lines for the terminal."""
        return [f"model: {self.model}", *self.report.lines(), f"MLflow run: {self.run_url}"]


@flow(name="digitflow-predict", log_prints=True)
@takes_options(PREDICT_OPTIONS)
def predict(**options: Any) -> PredictionSummary:
    """Score the images of ``input`` with the model ``model`` and write ``output``, a CSV row per image.

    ``model`` is a registered version (``models:/digitflow-lenet@champion``, ``models:/digitflow-lenet/3``),
    a run's model (``runs:/RUN_ID/torchscript-model``) or an exported file; it carries its class names and
    the framing its inputs need. ``input`` is any dataset spec; a ``csv:`` input also gets Kaggle's
    ``ImageId,Label`` submission (``submission``, default beside ``output``).
    """
    quiet_expected_errors()
    o = complete(PREDICT_OPTIONS, options, "digitflow predict")
    spec = parse_spec(o["input"])
    submission = o["submission"] or (str(default_submission(o["output"])) if spec.name == "csv" else None)
    for path, option in ((o["output"], "output"), (submission, "submission")):
        if path:
            check_writable(path, option)
    check_experiment(o["experiment"], how_to_change="the experiment parameter (-p experiment=NAME)")
    data_dir = o["data_dir"] or default_data_dir()
    experiment_id = setup_tracking(o["experiment"])
    with tracked_run(run_name=f"predict {spec}", tags=flow_run_tags()) as run:
        run_id = run.info.run_id

        # 1. the model, and what it carries: class names, the framing its inputs need
        loaded = load_model(o["model"])
        runlog.log_params({**loaded.params(), "input": str(spec), "output": o["output"]})

        # 2. the input, read as the model needs it (a folder's images framed as the model's were)
        read_as = input_spec(str(spec), loaded.model.metadata)
        data = prepare_data(read_as, data_dir, o["cache_dir"], o["offline"], run_id)

        # 3. score every image; write the predictions (and the submission)
        report = predict_images(
            loaded, data, data_dir, o["cache_dir"], o["output"], submission, o["batch_size"], run_id
        )
    version = f" (version {loaded.source.version})" if loaded.source.version else ""
    summary = PredictionSummary(report, f"{o['model']}{version}", run_id, run_url(run_id, experiment_id))
    create_markdown_artifact(  # what a deployment's run found, in the Prefect UI
        markdown="\n".join(f"- {line}" for line in summary.lines()),
        key="predictions",
        description=f"{report.num_images} images of {report.spec}",
    )
    return summary


if __name__ == "__main__":
    predict()
