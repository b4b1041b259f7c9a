"""``digitflow replay``: log what runs kept on disk when their tracking server was lost mid-run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from flows.cli.options import EXIT_BAD_INPUT, EXIT_FAILED

NAME = "replay"
EPILOG = """\
examples:
  digitflow replay                       # every run kept under outputs/unlogged
  digitflow replay outputs/unlogged/RUN_ID
A run whose tracking server stops answering keeps the metrics, params, tags, artifacts and final status
it could not log in a folder of its own (the run's error line names where); this logs them into the same
run on the same server (the one the run logged to, recorded in the folder's run.json; MLFLOW_TRACKING_URI
does not change it), once it answers again, and removes what was logged.
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``digitflow replay`` and its options."""
    replay = commands.add_parser(
        NAME,
        help="log what runs kept on disk while their tracking server was lost",
        description="Log the metrics, params, tags, artifacts and final status that runs kept on disk when "
        "their MLflow tracking server stopped answering, into those runs on that server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument(
        "folder",
        nargs="?",
        default="outputs/unlogged",
        help="a kept run's folder, or a folder of them (default outputs/unlogged)",
    )
    return replay


def execute(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Replay each kept run folder; one line per run."""
    folder = Path(args.folder)
    runs = [folder] if (folder / "run.json").is_file() else sorted(p.parent for p in folder.glob("*/run.json"))
    if not runs:
        parser.exit(EXIT_BAD_INPUT, f"digitflow: error: nothing kept to replay in {folder}\n")
    import mlflow  # after the folder is checked: importing MLflow takes a second or two

    from tracking.runlog import replay
    from tracking.store import server_problem

    failed = 0
    for run in runs:
        uri = json.loads((run / "run.json").read_text())["tracking_uri"]
        problem = server_problem(uri)
        if problem:
            print(f"digitflow: error: {run}: {problem}")
            failed += 1
            continue
        mlflow.set_tracking_uri(uri)  # the run's artifact store is resolved against it
        try:
            counts = replay(run, mlflow.MlflowClient(tracking_uri=uri))
        except (mlflow.MlflowException, OSError) as exc:  # the next runs are still replayed
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            left = run.name if run.name.endswith(".replaying") else f"{run.name}.replaying"
            print(f"digitflow: error: {run}: {message} (kept as {left}; replay it again)")
            failed += 1
            continue
        print(f"{run.name}: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()) + f" logged to {uri}")
    return EXIT_FAILED if failed else 0
