"""A training step captured once as a CUDA graph and replayed for every batch.

On a GPU a LeNet step is all launch overhead: forward, backward and the optimizer are some sixty
small kernels, each of which the host must launch, while the arithmetic of a batch of 512 takes the
card a fraction of that time. A CUDA graph records the whole step (gather the batch, augment,
forward, loss, backward, optimizer update, running sums) once and replays it with one launch.

What makes a step capturable, and how this module provides it:

- Static memory: the batch is selected by an index tensor that lives at a fixed address
  (``static_idx``); each replay copies the next batch's indices into it. Everything else (weights,
  gradients, optimizer state, the running sums of :class:`~digitflow.training.step.TrainStep`) keeps its
  address from one replay to the next.
- No host work inside the step: the learning rate becomes a 1-element tensor on the device, so a
  scheduler's update (which ``fill_``s it) reaches the replayed kernels; optimizers with a
  ``capturable`` switch get it on; LBFGS (host-side line search) and torchvision ``extra``
  augmentations (host-side random draws) cannot be captured: see :func:`graph_unsupported_reason`.
- Warm-up without side effects: capture needs a few eager steps first (cuDNN picks its kernels, the
  optimizer creates its state). Those steps would change the weights, so every parameter, buffer and
  optimizer state tensor is restored in place afterwards, and state the warm-up created is zeroed,
  which is the state a fresh optimizer starts from (SGD's momentum with dampening 0, Adam's moments
  and step count).

Random draws (augmentation) inside the graph come from PyTorch's graph-safe CUDA generator:
``torch.manual_seed`` before an epoch still decides them, so runs stay reproducible and ``--resume``
still works, though the draws are not the ones the eager step would make. The last, partial batch of
an epoch has a graph of its own.
"""

from __future__ import annotations

import inspect
from typing import TypedDict

import torch

from digitflow.training.step import TrainStep

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as PyTorch's CUDA-graph notes advise


def graph_unsupported_reason(
    device: torch.device, optimizer_name: str, augment: object | None, *, adversarial: str | None = None
) -> str | None:
    """Why a training step with these settings cannot be captured, or None if it can."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if optimizer_name == "LBFGS":
        return "LBFGS runs its line search on the host, which a CUDA graph cannot replay"
    cls = getattr(torch.optim, optimizer_name, None)
    if cls is not None and optimizer_name != "SGD" and "capturable" not in inspect.signature(cls).parameters:
        return f"torch.optim.{optimizer_name} has no capturable mode"
    if getattr(augment, "extra", None) is not None:
        return "torchvision extra augmentations draw their randomness on the host"
    if adversarial is not None:
        return f"adversarial training ({adversarial}) runs its attack eagerly: its epsilon changes during the ramp"
    return None


class CudaGraphStep:
    """Replays captured :class:`TrainStep` s: one graph per batch shape an epoch of ``num_images`` has
    (``batch_size``, and the last, partial batch when ``batch_size`` does not divide it).

    Each graph is self-contained (its own gradient buffers, read by its own optimizer update) and
    shares the weights and optimizer state with the others. Same interface as the step it wraps
    (``step(idx)``, ``reset()``, ``loss_sum``, ``correct``); a batch of any other size runs eagerly.
    """

    def __init__(self, step: TrainStep, batch_size: int, num_images: int | None = None) -> None:
        self.step = step
        self.loss_sum, self.correct = step.loss_sum, step.correct
        optimizer = step.optimizer
        device = step.images.device
        for group in optimizer.param_groups:
            if not isinstance(group["lr"], torch.Tensor):  # a float would be frozen into the graph
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
            if "capturable" in group:
                group["capturable"] = True
        num_images = step.images.shape[0] if num_images is None else num_images
        sizes = sorted({min(batch_size, num_images), num_images % batch_size} - {0}, reverse=True)

        saved = _snapshot(step.model, optimizer)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        for size in sizes:
            static_idx = torch.arange(size, device=device) % step.images.shape[0]
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    step(static_idx)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)  # this graph's gradients are allocated in its own pool
            with torch.cuda.graph(graph):
                step(static_idx)
            self.graphs[size] = (graph, static_idx)
        _restore(step.model, optimizer, saved)  # capture records kernels; warm-up changes are undone
        step.reset()

    def reset(self) -> None:
        self.step.reset()

    def __call__(self, idx: torch.Tensor) -> None:
        captured = self.graphs.get(idx.shape[0])
        if captured is None:  # a batch shape that was not captured: eager, on the same tensors
            self.step(idx)
            return
        graph, static_idx = captured
        static_idx.copy_(idx)
        graph.replay()


class _Snapshot(TypedDict):
    model: dict[str, torch.Tensor]  # state_dict name -> copy
    optimizer: dict[tuple[int, str], torch.Tensor]  # (id(param), state key) -> copy


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> _Snapshot:
    tensors = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    state = {
        (id(p), key): value.detach().clone()
        for p, entries in optimizer.state.items()
        for key, value in entries.items()
        if isinstance(value, torch.Tensor)
    }
    return {"model": tensors, "optimizer": state}


@torch.no_grad()
def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: _Snapshot) -> None:
    model_saved, state_saved = saved["model"], saved["optimizer"]
    for name, t in model.state_dict(keep_vars=True).items():
        t.data.copy_(model_saved[name])
    for p, entries in optimizer.state.items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                before = state_saved.get((id(p), key))
                if before is None:
                    value.zero_()  # created by the warm-up: a fresh optimizer's zeros
                else:
                    value.copy_(before)
