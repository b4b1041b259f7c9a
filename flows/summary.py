"""What a pipeline run ends with: a summary for the terminal, the Prefect UI and MLflow."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from reporting.timing import breakdown_line
from tracking.ui import open_ui_line, run_url, ui_command


@dataclass
class PipelineSummary:
    """The figures and places a user looks for after a run."""

    run_id: str
    experiment_id: str
    artifact_uri: str
    run_url: str
    tracking_uri: str
    test_accuracy: float
    test_loss: float
    cross_accuracy: dict[str, float] = field(default_factory=dict)
    source_only_accuracy: dict[str, float] = field(default_factory=dict)  # runs with --adapt: the baseline
    train_seconds: float = 0.0
    images_per_sec: float = 0.0
    device: str = "cpu"
    precision: str = "float32"
    step: str = "eager"
    exported: dict[str, Any] = field(default_factory=dict)
    robust_accuracy: dict[str, float] = field(default_factory=dict)  # "robust/<attack>/accuracy_eps<step>"
    ui_command: str = "make ui"  # see tracking.ui.ui_command
    times: dict[str, float] = field(default_factory=dict)  # reporting.timing: time/<phase>, time/wall, time/own
    export_error: str = ""  # why the model could not be exported (the run then registered nothing)

    @classmethod
    def collect(
        cls,
        parent: mlflow.ActiveRun,
        experiment_id: str,
        trained,
        test_metrics,
        cross_metrics,
        exported,
        robust_metrics: dict[str, float] | None = None,
        times: dict[str, float] | None = None,
    ) -> PipelineSummary:
        """Gather the summary from the task results of one flow run."""
        cross = {
            key.split("/")[1]: value
            for metrics in cross_metrics
            for key, value in metrics.items()
            if key.endswith("/accuracy") and "/class_" not in key
        }
        source_only = {
            key.split("/")[1]: value
            for metrics in cross_metrics
            for key, value in metrics.items()
            if key.endswith("/source_only_accuracy")
        }
        return cls(
            run_id=parent.info.run_id,
            experiment_id=experiment_id,
            artifact_uri=parent.info.artifact_uri,
            run_url=run_url(parent.info.run_id, experiment_id),
            tracking_uri=mlflow.get_tracking_uri(),
            test_accuracy=test_metrics["test/accuracy"],
            test_loss=test_metrics["test/loss"],
            cross_accuracy=cross,
            source_only_accuracy=source_only,
            train_seconds=trained.seconds,
            images_per_sec=trained.images_per_sec,
            device=trained.device,
            precision=trained.precision,
            step=trained.step,
            exported=dict(exported or {}),
            robust_accuracy=dict(robust_metrics or {}),
            ui_command=ui_command(),
            times=dict(times or {}),
        )

    def lines(self) -> list[str]:
        """The summary as short 'label: value' lines, for the terminal and the markdown artifact."""
        out = [f"test accuracy: {self.test_accuracy:.4f} (loss {self.test_loss:.4f})"]
        out += [
            f"cross-domain accuracy on {name}: {acc:.4f}"
            + (f" (source-only {self.source_only_accuracy[name]:.4f})" if name in self.source_only_accuracy else "")
            for name, acc in self.cross_accuracy.items()
        ]
        out += self.robustness_lines()
        graphs = ", CUDA graph" if self.step == "cuda-graph" else ""
        out.append(
            f"training: {self.train_seconds:.1f} s, {self.images_per_sec:,.0f} images/s on {self.device} "
            f"({self.precision}{graphs})"
        )
        if self.times:
            out.append(breakdown_line(self.times))
        if self.export_error:
            out.append(f"not exported: {self.export_error}")
        for key in ("torchscript_path", "program_path", "aoti_path"):
            if key in self.exported:
                out.append(f"exported: {self.exported[key]}")
        if "model_version" in self.exported:
            out.append(
                f"registered: {self.exported['model_name']} version {self.exported['model_version']} "
                f"(alias {self.exported['alias']})"
            )
        out += [
            f"MLflow run: {self.run_id} (experiment {self.experiment_id}, store {self.tracking_uri})",
            f"artifacts: {self.artifact_uri}",
            open_ui_line(self.ui_command, self.run_url),
        ]
        return out

    def robustness_lines(self) -> list[str]:
        """One line per attack: ``accuracy under PGD: 0.9900 / 0.9500 / 0.6000 at eps 0 / 0.1 / 0.3``."""
        by_attack: dict[str, dict[int, float]] = {}
        for key, value in self.robust_accuracy.items():  # robust/pgd/accuracy_eps10
            _, attack, rest = key.split("/")
            by_attack.setdefault(attack, {})[int(rest.removeprefix("accuracy_eps"))] = value
        lines = []
        for attack, values in by_attack.items():
            steps = sorted(values)
            lines.append(
                f"accuracy under {attack.upper()}: {' / '.join(f'{values[s]:.4f}' for s in steps)} "
                f"at eps {' / '.join(f'{s / 100:g}' for s in steps)}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish_summary(summary: PipelineSummary) -> None:
    """Log the summary, and add a markdown artifact with it and a link artifact to the MLflow run."""
    publish_lines(
        summary.lines(),
        title="digitflow run",
        key="digitflow-summary",
        description="Test and cross-domain accuracy, exports, and where the MLflow run is.",
    )
    # Prefect's link artifact (Prefect 3.9 stores it as "[text](link)" with type "markdown": its UI
    # has no separate link type). The link and the command lead to the store the run was written to.
    on_server = summary.tracking_uri.startswith(("http://", "https://"))
    opening = "the tracking server's UI" if on_server else f"serve the UI first: `{summary.ui_command}`"
    create_link_artifact(
        link=summary.run_url,
        link_text=f"MLflow run {summary.run_id}",
        key="mlflow-run",
        description=f"The MLflow parent run of this flow run in {summary.tracking_uri} ({opening}).",
    )


def publish_lines(lines: list[str], *, title: str, key: str, description: str) -> None:
    """A flow's summary: each line in the run's log, and all of them as the markdown artifact ``key``."""
    logger = get_run_logger()
    for line in lines:
        logger.info(line)
    create_markdown_artifact(
        markdown=f"# {title}\n\n" + "\n".join(f"- {line}" for line in lines), key=key, description=description
    )
