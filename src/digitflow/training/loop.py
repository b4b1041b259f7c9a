"""The epoch loop every training step runs in: seeding, batch order, progress, NaN stop, checkpoints
and resume. What happens to one batch is the step's business (:class:`digitflow.training.step.Step`).

The classifier (:class:`digitflow.training.step.TrainStep`), the GAN, adversarial training and domain
adaptation are steps; :func:`run_epochs` trains any of them the same way, so a fix or feature here
(a progress callback, a checkpoint format, the divergence check) reaches all of them.

Reproducibility: every epoch reseeds the global RNG from ``(seed, epoch)`` and draws its batch order
from a generator seeded the same way. An epoch's randomness therefore does not depend on what ran
before it, which is what lets ``--resume`` continue an interrupted run to the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from digitflow.errors import CheckpointError, TrainingDivergedError
from digitflow.training.checkpoint import load_checkpoint, save_checkpoint
from digitflow.training.step import Step

# on_batch(epoch, batch_index, num_batches, loss_or_None): loss is only a float on check intervals,
# so reporting progress never forces a GPU sync on every batch.
BatchCallback = Callable[[int, int, int, float | None], None]
EpochCallback = Callable[[dict[str, Any]], None]
Shard = tuple[int, int]  # (rank, world_size) of data-parallel training

CHECK_EVERY = 20  # batches between finiteness checks of the running loss (one device sync each)


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed for one epoch: distinct per epoch, independent of earlier epochs."""
    return seed * 100_003 + epoch


def run_epoch(
    step: Step,
    num_examples: int,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    epoch: int = 1,
    on_batch: BatchCallback | None = None,
    run_batch: Callable[[torch.Tensor], None] | None = None,
    shard: Shard | None = None,
) -> dict[str, float]:
    """One pass over ``num_examples`` in shuffled batches: the step's metrics plus ``seconds`` and
    ``images_per_sec``.

    ``run_batch`` replaces ``step(idx)`` for the batches (a CUDA-graph replay of the same step:
    :mod:`digitflow.training.cuda_graph`). The host reads the running loss only every ``CHECK_EVERY`` batches
    and at the end, and raises TrainingDivergedError as soon as it is NaN or infinite.

    ``shard=(rank, world_size)``: data-parallel training. Every rank draws the same order (same
    generator), drops the last ``num_examples % world_size`` examples so all ranks run the same
    number of batches, and trains on its share of each batch (``batch[rank::world_size]``): the
    batch size stays the global one. The step is handed the number of examples all ranks trained
    on; a data-parallel step sums its running figures across ranks in ``epoch_metrics``.
    """
    step.train()
    run_batch = run_batch or step
    device = step.loss_sum.device
    order = torch.randperm(num_examples, generator=generator).to(device)
    rank, world = shard or (0, 1)
    num_examples -= num_examples % world
    num_batches = (num_examples + batch_size - 1) // batch_size
    step.reset()
    start = time.perf_counter()
    seen = 0  # examples this rank trained on so far

    for b in range(num_batches):
        idx = order[b * batch_size : min((b + 1) * batch_size, num_examples)]
        idx = idx[rank::world] if world > 1 else idx
        run_batch(idx)
        seen += idx.shape[0]
        last = b == num_batches - 1
        reported = None
        if last or (b + 1) % CHECK_EVERY == 0:
            loss_sum = float(step.loss_sum)  # the one host sync of a check interval
            reported = loss_sum / seen
            if not math.isfinite(loss_sum):
                raise TrainingDivergedError(
                    f"training loss became {reported} in epoch {epoch}, batch {b + 1}/{num_batches}; "
                    "lower the learning rate or pick another optimizer"
                )
        if on_batch is not None:
            on_batch(epoch, b + 1, num_batches, reported)

    seconds = time.perf_counter() - start  # the last check above synchronised with the device
    return {**step.epoch_metrics(num_examples), "seconds": seconds, "images_per_sec": num_examples / seconds}


@dataclass
class LoopResult:
    """What :func:`run_epochs` hands back."""

    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, "epoch" key 1-based
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0


def resume_from(step: Step, checkpoint_path: str | Path | None, settings: dict[str, Any]) -> list[dict[str, float]]:
    """Load the checkpoint at ``checkpoint_path`` into ``step`` and return its history (one record per
    completed epoch); ``[]`` when there is no checkpoint to resume from.

    Raises CheckpointError (one line) for a checkpoint of another step (``step.name``) or one written
    with other ``settings``: resuming it would not continue the run that was interrupted.
    """
    if checkpoint_path is None or not Path(checkpoint_path).exists():
        return []
    state = load_checkpoint(checkpoint_path, model_name=step.name)
    if state["config"] != settings:
        raise CheckpointError(
            f"{checkpoint_path} was written with other training settings; "
            "resume with the same options or start without --resume"
        )
    try:
        step.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint_path}: {exc}") from None
    history: list[dict[str, float]] = list(state["history"])
    return history


def run_epochs(
    step: Step,
    num_examples: int,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    settings: dict[str, Any],
    checkpoint_path: str | Path | None = None,
    history: list[dict[str, float]] | None = None,
    on_batch: BatchCallback | None = None,
    on_epoch: EpochCallback | None = None,
    run_batch: Callable[[torch.Tensor], None] | None = None,
    shard: Shard | None = None,
) -> LoopResult:
    """Train ``step`` from the epoch after ``history`` (from :func:`resume`; empty: from the start) to
    ``epochs``.

    Each epoch is seeded from ``(seed, epoch)``; after it the step's ``end_epoch`` runs, then a
    checkpoint (the step's state, ``settings``, the epoch and the history) is written atomically to
    ``checkpoint_path``, then ``on_epoch(record)`` is called. ``settings`` are what a resumed run must
    share with its checkpoint (everything but the device, typically). With ``shard`` (data-parallel
    training, see :func:`run_epoch`) only rank 0 writes the checkpoint.
    """
    history = list(history or [])
    resumed_from = len(history)
    for epoch in range(resumed_from + 1, epochs + 1):
        torch.manual_seed(epoch_seed(seed, epoch))  # augmentation, noise and attack draws (CPU and CUDA)
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))  # batch order
        metrics = run_epoch(
            step,
            num_examples,
            batch_size=batch_size,
            generator=generator,
            epoch=epoch,
            on_batch=on_batch,
            run_batch=run_batch,
            shard=shard,
        )
        step.end_epoch(metrics)
        record = {"epoch": epoch, **metrics}
        history.append(record)
        if checkpoint_path is not None and (shard is None or shard[0] == 0):
            state = {"model_name": step.name, **step.state_dict()}
            save_checkpoint(checkpoint_path, {**state, "config": settings, "epoch": epoch, "history": history})
        if on_epoch is not None:
            on_epoch(record)
    return LoopResult(
        history=history,
        checkpoint=Path(checkpoint_path) if checkpoint_path is not None else None,
        resumed_from_epoch=resumed_from,
    )
