"""One rank of ``digitflow run --nproc N``: started by torchrun from the train task (tasks/train.py).

Every rank loads the prepared training data (the cache the flow's prepare task wrote), builds the
same LeNet and trains it with :func:`digitflow.training.classifier.fit` (``data_parallel=True``: DDP, a shard of
every batch). Rank 0 alone logs the per-epoch figures to the train task's MLflow run, prints one
line per epoch (the task forwards them to its log) and writes the checkpoint, from which the task
takes the trained model. ``--resume`` continues from the checkpoint on every rank.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tasks.ddp_worker SPEC
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from digitflow.device import resolve_device
from digitflow.training import data_parallel
from digitflow.training.augment import build_augment
from digitflow.training.classifier import build_model, fit


def cpu_threads(world: int) -> int:
    """Torch threads per rank: the cores this process may use, shared among the ranks."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // world)


def main(spec_path: str) -> int:
    with Path(spec_path).open("rb") as f:
        spec: dict[str, Any] = pickle.load(f)  # written by the train task of this run, just before
    config, data = spec["config"], spec["data"]
    cfg = config.train
    device = data_parallel.init(resolve_device(cfg.device))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(cpu_threads(world))

    from digitflow.data.framing import model_inputs
    from tasks.data import load_prepared  # after init: every rank is up before the slow imports

    dataset = load_prepared(data, config.data.data_dir, config.data.cache_dir)
    images, labels = model_inputs(dataset, config.data.target_preprocess, device)
    model = build_model(dataset.num_classes, cfg.seed, cfg.model).to(device)

    on_epoch = None
    if rank == 0:
        client = None
        if spec.get("run_id"):
            import mlflow

            mlflow.set_tracking_uri(spec["tracking_uri"])
            client = mlflow.MlflowClient()

        def on_epoch(record: dict[str, float]) -> None:
            epoch = int(record["epoch"])
            if client is not None:
                for key in ("loss", "accuracy", "lr"):
                    client.log_metric(spec["run_id"], f"train/{key}", record[key], step=epoch)
            print(
                f"epoch {epoch}/{cfg.epochs}: loss {record['loss']:.4f}, accuracy {record['accuracy']:.4f}, "
                f"{record['images_per_sec']:,.0f} images/s on {world} processes",
                flush=True,
            )

    result = fit(
        model,
        images,
        labels,
        cfg,
        augment=build_augment(cfg.augment),
        checkpoint_path=spec["checkpoint"],
        resume=spec["resume"],
        on_epoch=on_epoch,
        data_parallel=True,
    )
    if rank == 0:
        outcome = {"resumed_from_epoch": result.resumed_from_epoch, "step": f"{result.step}, DDP x{world}"}
        Path(spec["result"]).write_text(json.dumps({**outcome, "history": result.history}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
