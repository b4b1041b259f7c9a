"""How fast ``digitflow predict`` scores a Kaggle CSV: images per second, reading the CSV and writing the output
included, process start-up excluded.

    python scripts/predict_bench.py --data-dir ../shared/data [--model lenet.pt] [--rounds 5] [--flow]

Writes the 10,000 MNIST test images (``--spec``) as a Kaggle Digit Recognizer CSV with labels (untimed), then,
each round with an empty tensor cache so the CSV is parsed every time, times what the prediction task does:
read the CSV (``csv:FILE`` prepared into the cache), load it, the images' ids, score them with the exported
model, write the predictions file and the submission. ``--model``: an exported TorchScript / torch.export file
(``outputs/exports/RUN/lenet.pt``); by default an untrained LeNet exported here (the weights do not change the
time). ``--flow`` also times the whole flow ``digitflow-predict`` in this process as ``digitflow predict`` runs
it (a local Prefect server, a temporary MLflow store, no flow-run heartbeats): the same work plus the run's
bookkeeping, after one untimed call that pays the imports and the server's start. Prints each round and the
median. Run it on a quiet machine: it measures time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from digitflow.data import load, load_dataset, prepare
from digitflow.data.ids import image_ids
from digitflow.export.exporters import export_torchscript
from digitflow.export.inputs import for_export
from digitflow.export.metadata import default_metadata
from digitflow.models.lenet import LeNet
from digitflow.prediction.model import load_scoring_model
from digitflow.prediction.output import write_predictions, write_submission
from digitflow.prediction.score import predict_dataset


def write_kaggle_csv(path: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Kaggle's Digit Recognizer layout, ``label,pixel0..pixel783``, one image a row."""
    rows = torch.cat([labels[:, None], images.reshape(len(images), -1).long()], dim=1).tolist()
    header = ",".join(["label", *(f"pixel{i}" for i in range(images[0].numel()))])
    path.write_text(header + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


def one_round(model_path: str, csv: Path, folder: Path) -> dict[str, float]:
    """The prediction task's work on ``csv``, timed by part, with a cold tensor cache in ``folder``."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    model = load_scoring_model(model_path)
    times["model"] = time.perf_counter() - start
    prepared = prepare(f"csv:{csv}", "", folder / "cache")  # parses the CSV
    dataset = load(prepared)
    ids = image_ids(prepared)
    times["read"] = time.perf_counter() - start - sum(times.values())
    predictions = predict_dataset(model, dataset, ids)
    times["score"] = time.perf_counter() - start - sum(times.values())
    write_predictions(predictions, folder / "predictions.csv")
    write_submission(predictions, folder / "predictions-submission.csv")
    times["write"] = time.perf_counter() - start - sum(times.values())
    times["total"] = time.perf_counter() - start
    times["accuracy"] = predictions.accuracy() or 0.0
    return times


def time_flow(model_path: str, csv: Path, folder: Path, rounds: int) -> list[float]:
    """Seconds of each call of the flow ``digitflow-predict`` in this process (after an untimed one)."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    from flows.local_server import use_local_server

    server = use_local_server()
    from flows.cli.options import without_flow_heartbeats
    from flows.predict import predict

    if server is not None:
        server.wait_ready()
    seconds = []
    for i in range(rounds + 1):
        start = time.perf_counter()
        with without_flow_heartbeats():  # as digitflow predict runs it
            predict(
                input=f"csv:{csv}",
                model=model_path,
                output=str(folder / "flow-predictions.csv"),
                cache_dir=str(folder / f"flow-cache-{i}"),
            )
        if i:
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="the official files (default ./data)")
    parser.add_argument("--cache-dir", default=".cache/digitflow", help="where the MNIST test tensors are cached")
    parser.add_argument("--spec", default="mnist:test", help="the images written to the CSV (default mnist:test)")
    parser.add_argument("--model", help="an exported .pt / .pt2 file (default: an untrained LeNet, exported here)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--flow", action="store_true", help="also time the flow digitflow-predict in this process")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="digitflow-predict-bench-") as tmp:
        folder = Path(tmp)
        dataset = load_dataset(args.spec, args.data_dir, args.cache_dir, offline=True)
        csv = write_kaggle_csv(folder / "digits.csv", dataset.images, dataset.labels)
        model_path = args.model
        if model_path is None:
            model_path = str(folder / "lenet.pt")
            model = for_export(LeNet().eval())  # as the export task writes it: PixelInput around the model
            export_torchscript(model, torch.rand(1, 1, 28, 28), model_path, metadata=default_metadata(10))
        n = len(dataset)
        size = csv.stat().st_size / 1e6
        model_name, threads = args.model or "an untrained LeNet", torch.get_num_threads()
        print(f"{n} images of {args.spec} as a Kaggle CSV ({size:.1f} MB); {model_name}; {threads} threads")
        totals = []
        for i in range(args.rounds):
            round_folder = folder / f"round-{i}"
            round_folder.mkdir()
            t = one_round(model_path, csv, round_folder)
            totals.append(t["total"])
            parts = ", ".join(f"{k} {t[k]:.3f} s" for k in ("model", "read", "score", "write"))
            speed = n / t["total"]
            print(f"round {i + 1}: {t['total']:.3f} s, {speed:,.0f} images/s ({parts}); accuracy {t['accuracy']:.4f}")
        median = statistics.median(totals)
        print(
            f"prediction task's work: median {median:.3f} s, {n / median:,.0f} images/s (best {n / min(totals):,.0f})"
        )
        if args.flow:
            flow = time_flow(model_path, csv, folder, args.rounds)
            median = statistics.median(flow)
            print(
                f"flow digitflow-predict in-process: median {median:.3f} s, {n / median:,.0f} images/s (runs: "
                + ", ".join(f"{s:.2f}" for s in flow)
                + " s)"
            )


if __name__ == "__main__":
    main()
