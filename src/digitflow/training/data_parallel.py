"""Data-parallel training on several processes (``torch.distributed``): the classifier's step with
DistributedDataParallel, for :func:`digitflow.training.classifier.fit` (``data_parallel=True``).

Each process (rank) holds the whole preloaded dataset and trains on its share of every batch
(:func:`digitflow.training.loop.run_epoch` with ``shard``); DistributedDataParallel averages the gradients
across ranks in the backward pass, so every rank takes the same optimizer step, as one process
would on the whole batch. Launch the processes with ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...) and call :func:`init` in each: gloo on the CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from digitflow.config import RunConfig
from digitflow.errors import ConfigError
from digitflow.training.step import TrainStep


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun set up (gloo on the CPU, nccl on CUDA); returns this rank's
    device (``cuda:LOCAL_RANK`` on CUDA)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group."""
    if not dist.is_initialized():
        raise ConfigError("data-parallel training needs an initialised process group (launch with torchrun)")
    return dist.get_rank(), dist.get_world_size()


def check_data_parallel(config: RunConfig, nproc: int) -> None:
    """A one-line ConfigError for settings data-parallel training cannot run with."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if nproc == 1:
        return
    train = config.train
    if train.optimizer.name == "LBFGS":  # its line search evaluates a rank's own loss a varying number of times
        raise ConfigError("--nproc > 1 does not work with LBFGS (each rank's line search would step differently)")
    if train.batch_size % nproc:
        raise ConfigError(
            f"--batch-size {train.batch_size} must be a multiple of --nproc {nproc} (each rank takes a share)"
        )
    if train.adversarial.mode is not None or config.adapt.method is not None:  # their steps are single-process
        raise ConfigError("--nproc > 1 does not work with --adv-train or --adapt yet; train them on one process")


class DataParallelStep(TrainStep):
    """:class:`TrainStep` whose forward pass goes through DistributedDataParallel (gradients averaged
    across ranks in the backward pass) and whose epoch figures are summed over all ranks.

    The checkpointed state is the plain model's (no ``module.`` prefix), so a data-parallel
    checkpoint resumes on one process and the other way round.
    """

    def __init__(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
        self.network = DistributedDataParallel(model, device_ids=device_ids)

    def epoch_metrics(self, num_examples: int) -> dict[str, float]:
        """Loss and accuracy over every rank's examples (``num_examples``: all ranks together)."""
        sums = torch.stack([self.loss_sum.detach().double(), self.correct.double()])
        dist.all_reduce(sums)
        return {"loss": float(sums[0]) / num_examples, "accuracy": float(sums[1]) / num_examples}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
