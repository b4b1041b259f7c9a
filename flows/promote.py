"""The promotion flow: does a pipeline run's model become the ``champion``?

Read top to bottom, :func:`promote` finds the run's registered model version, compares it with the
version that holds the alias ``champion`` (digitflow.evaluation.promotion: held-out and cross-domain accuracy,
with a margin; export verification must have passed) and moves the alias only when it is better. The
decision and the figures both ways go onto the model version as tags and into a Prefect markdown
artifact. The deployment ``evaluate-and-promote`` (prefect.yaml) runs it whenever a nightly training
run completes, with that flow run's id.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from digitflow.config import PromotionConfig
from digitflow.config.options import PROMOTE_OPTIONS, defaults
from digitflow.errors import ConfigError
from flows.signature import takes_options
from reporting.logs import quiet_expected_errors
from tasks.promotion import Outcome, find_candidate, promote_if_better
from tracking.store import setup_tracking


@flow(name="digitflow-promote", log_prints=True)
@takes_options(PROMOTE_OPTIONS)
def promote(**options: Any) -> Outcome:
    """Promote the model of one pipeline run to ``alias`` if it beats the model that holds it.

    Name the pipeline run by its MLflow parent run id (``run_id``) or by the Prefect flow run that
    logged it (``flow_run_id``: the id, or an event's ``prefect.flow-run.<id>``). ``figures`` are the
    metric patterns compared (default ``test/accuracy`` and ``cross/*/accuracy``); a figure counts as
    better or worse only by more than ``margin``. The first model ever becomes the champion.
    """
    quiet_expected_errors()
    o = {**defaults(PROMOTE_OPTIONS), **options}
    run_id, flow_run_id, margin, figures, alias = o["run_id"], o["flow_run_id"], o["margin"], o["figures"], o["alias"]
    if margin < 0:
        raise ConfigError(f"the promotion margin must be >= 0, got {margin}")
    config = PromotionConfig(
        figures=tuple(figures) if figures else PromotionConfig.figures, margin=margin, champion_alias=alias
    )
    setup_tracking()  # the store (and a one-line error if its server does not answer)

    candidate = find_candidate(run_id, flow_run_id, config)
    outcome = promote_if_better(candidate, config, promoter=f"digitflow-promote flow run {flow_run.id}")

    create_markdown_artifact(
        markdown=outcome.markdown(),
        key="promotion-decision",
        description=f"{candidate.model_name} version {candidate.version}: {outcome.decision.word}",
    )
    return outcome


if __name__ == "__main__":
    promote()
