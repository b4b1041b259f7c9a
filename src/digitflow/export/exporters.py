"""Export a trained model to TorchScript (``.pt``) or torch.export (``.pt2``), verify, time it.

* :func:`export_torchscript` / :func:`export_program` write the file from an eval-mode CPU copy of
  the model (the caller's model is left untouched).
* :func:`verify_export` proves the file runs without this project: a fresh ``python -I`` process
  that imports only torch (``verifier.py``) loads it, runs the images, and the logits are
  compared with the eager model's.
* :func:`measure_latency` / :func:`compare_latency` time eager vs exported inference on CPU.

Models take float images (N, 1, 28, 28) in [0, 1]; normalization is inside the model, so an
exported file needs no preprocessing code of ours.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from digitflow.errors import ConfigError, ExportError
from digitflow.export.inputs import class_name
from digitflow.export.metadata import PROGRAM_EXTRA_FILE, ModelMetadata
from digitflow.export.metadata import attach as attach_metadata
from digitflow.fileio import atomic_write, one_line

EXPORT_MODES = ("script", "trace")
TORCHSCRIPT_SUFFIX = ".pt"
PROGRAM_SUFFIX = ".pt2"
AOTI_SUFFIX = ".aoti.pt2"  # an AOTInductor package (aoti.py): a .pt2 too, but loaded by torch._inductor
VERIFIER = Path(__file__).with_name("verifier.py")

# torch 2.14 emits, as a FutureWarning, on every TorchScript entry point we use:
#   "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
#   (and the same for `torch.jit.trace`, `torch.jit.trace_method`;
#   "`torch.jit.save` / `torch.jit.load` is deprecated. Please switch to `torch.export`.")
# We export TorchScript on purpose (it is the format the issue asks for, next to torch.export), so
# these exact messages are silenced around our own calls only. Any other warning, including other
# deprecations from torch, still reaches the user.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated\. Please switch to"


@contextlib.contextmanager
def torchscript_deprecation_silenced() -> Iterator[None]:
    """Around our own TorchScript calls (export, load): torch 2.14's deprecation FutureWarning for them only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        yield


@contextlib.contextmanager
def cuda_home_warning_silenced() -> Iterator[None]:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." around compiling or loading an AOTInductor
    package for the CPU: a CUDA wheel logs it (once a process) when it looks for CUDA, which a CPU package does
    not use. Every other message of that logger still shows."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    drop = _DropPrefix("No CUDA runtime is found")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _check_example(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """The example as a float CPU tensor, after checking it is an image batch the model takes."""
    if not isinstance(example, torch.Tensor):
        raise ConfigError(f"example input must be a tensor, got {type(example).__name__}")
    expected = tuple(getattr(model, "input_shape", ()) or ())
    name = class_name(model)
    if expected and (example.dim() != len(expected) + 1 or tuple(example.shape[1:]) != expected):
        raise ConfigError(
            f"{name} cannot take images of shape {_shape(example.shape)}: it takes "
            f"(N, {', '.join(map(str, expected))}) float images in [0, 1]"
        )
    if example.shape[0] < 1:
        raise ConfigError("example input is an empty batch; give at least one image")
    if not example.is_floating_point():
        raise ConfigError(f"example input has dtype {example.dtype}; {name} takes float images in [0, 1]")
    return example.detach().to("cpu", torch.float32)


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu").eval()


def _check_suffix(path: Path, suffix: str, what: str) -> None:
    if path.suffix != suffix:
        raise ConfigError(f"{what} file must end in {suffix!r}, got {str(path)!r}")


def export_torchscript(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    mode: str = "script",
    *,
    metadata: ModelMetadata | None = None,
) -> Path:
    """Write ``model`` as a TorchScript file (``.pt``) and return its path.

    ``mode="script"`` compiles the Python code (``torch.jit.script``); ``mode="trace"`` records the
    ops run on ``example`` (``torch.jit.trace``). Either works on an eval-mode CPU copy, so batch
    norm uses its running statistics and the caller's model is not changed. ``example`` is a float
    batch (N, 1, 28, 28) checked against ``model.input_shape``; the file takes any batch size.
    ``metadata`` (class names, framing) goes into the file as the module's ``digitflow_metadata``
    attribute (:mod:`digitflow.export.metadata`).

    Raises ConfigError for an unknown mode, a path not ending in ``.pt`` or an example the model
    cannot take; ExportError if torch cannot script/trace the model.
    """
    if mode not in EXPORT_MODES:
        raise ConfigError(f"unknown export mode {mode!r}; valid modes: {', '.join(EXPORT_MODES)}")
    path = Path(path)
    _check_suffix(path, TORCHSCRIPT_SUFFIX, "TorchScript")
    example = _check_example(model, example)
    cpu_model = _cpu_eval_copy(model)
    with torchscript_deprecation_silenced():
        try:
            if mode == "script":
                compiled = torch.jit.script(cpu_model)
            else:
                with torch.no_grad():
                    compiled = torch.jit.trace(cpu_model, example)
        except Exception as exc:
            raise ExportError(f"torch.jit.{mode} failed for {class_name(model)}: {one_line(exc)}") from exc
        if metadata is not None:
            attach_metadata(compiled, metadata)
        return atomic_write(path, lambda tmp: torch.jit.save(compiled, str(tmp)))


def export_program(
    model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str], *, metadata: ModelMetadata | None = None
) -> Path:
    """Write ``model`` as a torch.export program (``.pt2``) and return its path.

    Exported with ``torch.export.export`` from an eval-mode CPU copy, with a dynamic batch
    dimension (``Dim("batch", min=1)``), and saved with ``torch.export.save``. Load it with
    ``torch.export.load(path).module()``. A one-image example is repeated to two images for the
    export, because torch.export specializes a dimension whose example size is 1. ``metadata`` goes into
    the file as the extra file ``digitflow_metadata.json`` (:mod:`digitflow.export.metadata`).

    Raises ConfigError for a path not ending in ``.pt2`` or an example the model cannot take;
    ExportError if torch.export cannot capture the model.
    """
    path = Path(path)
    _check_suffix(path, PROGRAM_SUFFIX, "torch.export")
    if path.name.endswith(AOTI_SUFFIX):
        raise ConfigError(f"{str(path)!r} names an AOTInductor package ({AOTI_SUFFIX}); a torch.export file is *.pt2")
    program = capture_program(model, example)
    extra_files = None if metadata is None else {PROGRAM_EXTRA_FILE: metadata.to_json()}
    return atomic_write(path, lambda tmp: torch.export.save(program, str(tmp), extra_files=extra_files))


def capture_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``model`` captured by ``torch.export.export`` (an eval-mode CPU copy, dynamic batch): what
    :func:`export_program` saves and AOTInductor compiles (aoti.py). ExportError if it cannot be captured."""
    example = _check_example(model, example)
    if example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()
    cpu_model = _cpu_eval_copy(model)
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(cpu_model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ExportError(f"torch.export failed for {class_name(model)}: {one_line(exc)}") from exc


def load_export(path: str | os.PathLike[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file in this process: ``.pt`` via ``torch.jit.load`` (eval mode, CPU),
    ``.aoti.pt2`` via ``torch._inductor.aoti_load_package``, another ``.pt2`` via
    ``torch.export.load(path).module()``. Each is a callable images -> logits.

    Only load files you trust: both formats can run code they contain. Raises ExportError (one
    line, naming the file) if the file cannot be loaded, ConfigError for another suffix.
    """
    path = Path(path)
    _check_export_suffix(path)
    if not path.is_file():
        raise ExportError(f"exported model file not found: {path}")
    try:
        if path.name.endswith(AOTI_SUFFIX):
            from torch import _inductor  # a second of imports, only where an AOTInductor package is loaded

            with cuda_home_warning_silenced():
                package: Callable[[torch.Tensor], torch.Tensor] = _inductor.aoti_load_package(str(path))
            return package
        if path.suffix == PROGRAM_SUFFIX:
            program: nn.Module = torch.export.load(str(path)).module()
            return program
        with torchscript_deprecation_silenced():
            scripted: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")
            return scripted.eval()
    except Exception as exc:
        raise ExportError(f"cannot load exported model {path}: {one_line(exc)}") from exc


def _check_export_suffix(path: Path) -> None:
    if path.suffix not in (TORCHSCRIPT_SUFFIX, PROGRAM_SUFFIX):
        raise ConfigError(
            f"exported model file must end in {TORCHSCRIPT_SUFFIX!r} (TorchScript), "
            f"{PROGRAM_SUFFIX!r} (torch.export) or {AOTI_SUFFIX!r} (AOTInductor), got {str(path)!r}"
        )


def eager_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Reference logits for :func:`verify_export`: the model in eval mode on CPU, float32.

    Runs a CPU copy, so the caller's model keeps its device and train/eval mode.
    """
    with torch.inference_mode():
        logits: torch.Tensor = _cpu_eval_copy(model)(images.detach().to("cpu", torch.float32))
        return logits.clone()


def verify_export(
    path: str | os.PathLike[str],
    images: torch.Tensor,
    reference_logits: torch.Tensor,
    max_abs_diff: float = 1e-5,
    timeout_s: float = 120.0,
    *,
    predictions: bool = True,
) -> dict[str, float | int]:
    """Check an exported file against the eager model, in a fresh Python that imports only torch.

    ``images`` is a float batch (N, 1, 28, 28) in [0, 1]; ``reference_logits`` (N, num_classes) are
    the eager model's logits for them (see :func:`eager_logits`: CPU, eval mode). The file is run
    by ``verifier.py`` under ``python -I`` in a temporary folder, with the project's packages
    blocked from import. Passes when the largest absolute logit difference is ``<= max_abs_diff``
    and every argmax prediction is the same.

    ``predictions=False`` is for a model that does not classify (the GAN's generator: noise (N, latent)
    in, images out): ``images`` is then any input batch, ``reference_logits`` the eager outputs of any
    shape, and only the largest absolute difference counts.

    Returns ``{"max_abs_diff": float, "mismatched_predictions": int, "num_images": int}``.
    Raises ExportError (one line, naming the file) if the file is missing, cannot be loaded or run,
    the verifier times out, or the logits disagree; ConfigError for unusable arguments.
    """
    [result] = verify_exports([path], images, reference_logits, max_abs_diff, timeout_s, predictions=predictions)
    return result


def verify_exports(
    paths: Sequence[str | os.PathLike[str]],
    images: torch.Tensor,
    reference_logits: torch.Tensor,
    max_abs_diff: float | Sequence[float] = 1e-5,
    timeout_s: float = 120.0,
    *,
    predictions: bool = True,
) -> list[dict[str, float | int]]:
    """:func:`verify_export` for several files of one export at once: one torch-only process runs them
    all (a Python start and a torch import, about a second, once). A result per file, in order.
    ``max_abs_diff``: one limit for every file, or one per file (an AOTInductor package's fused kernels
    sum in another order than eager's)."""
    files = [Path(p) for p in paths]
    limits = [float(max_abs_diff)] * len(files) if isinstance(max_abs_diff, (int, float)) else list(max_abs_diff)
    if len(limits) != len(files):
        raise ConfigError(f"{len(limits)} logit limits for {len(files)} exported files")
    for path in files:
        _check_export_suffix(path)
    if predictions:
        _check_classifier_batch(images, reference_logits)
    elif (
        not isinstance(images, torch.Tensor)
        or images.dim() < 2
        or images.shape[0] < 1
        or not images.is_floating_point()
    ):
        raise ConfigError("verification inputs must be a float batch with at least one row")
    for path in files:
        if not path.is_file():
            raise ExportError(f"exported model file not found: {path}")
    outputs = _run_verifier(files, images, timeout_s)
    return [
        _compare(path, output, reference_logits, limit, predictions)
        for path, output, limit in zip(files, outputs, limits, strict=True)
    ]


def _check_classifier_batch(images: torch.Tensor, reference_logits: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 1:
        got = _shape(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"verification images must be a float batch (N, 1, 28, 28), got {got}")
    if not images.is_floating_point():
        raise ConfigError(f"verification images must be float in [0, 1], got {images.dtype}")
    n = int(images.shape[0])
    if not isinstance(reference_logits, torch.Tensor) or reference_logits.dim() != 2 or reference_logits.shape[0] != n:
        got = (
            _shape(reference_logits.shape)
            if isinstance(reference_logits, torch.Tensor)
            else type(reference_logits).__name__
        )
        raise ConfigError(f"reference logits must have shape ({n}, num_classes), got {got}")


def _compare(
    path: Path, output: torch.Tensor, reference: torch.Tensor, max_abs_diff: float, predictions: bool
) -> dict[str, float | int]:
    """One file's output against the eager one: the largest difference and, for a classifier, the
    predictions that differ; ExportError (one line) beyond the limits."""
    expected = reference.detach().to("cpu", torch.float32)
    what = "logits" if predictions else "outputs"
    if output.shape != expected.shape:
        raise ExportError(
            f"exported model {path} returned {what} of shape {_shape(output.shape)}, expected {_shape(expected.shape)}"
        )
    output = output.to(torch.float32)
    diff = (output - expected).abs()
    max_diff = float(diff.max()) if torch.isfinite(diff).all() else float("inf")
    n = int(output.shape[0])
    mismatched = int((output.argmax(dim=1) != expected.argmax(dim=1)).sum()) if predictions else 0
    if not max_diff <= max_abs_diff or mismatched:
        if predictions:
            raise ExportError(
                f"exported model {path} disagrees with the eager model on {n} images: "
                f"max |logit diff| {max_diff:.3g} (limit {max_abs_diff:g}), "
                f"{mismatched} different predictions"
            )
        raise ExportError(
            f"exported model {path} disagrees with the eager model on {n} inputs: "
            f"max |diff| {max_diff:.3g} (limit {max_abs_diff:g})"
        )
    return {"max_abs_diff": max_diff, "mismatched_predictions": mismatched, "num_images": n}


_waiting: subprocess.Popen[str] | None = None  # a verifier started ahead of its job (prestart_verifier)


def prestart_verifier() -> None:
    """Start the verifier process now, so that its Python start and torch import (about 3.5 s of one
    core) overlap the run's other work instead of following the export; the next :func:`verify_exports`
    of this process hands it its job. If one is already waiting, only its exit hook moves to the end of the
    list (see below). A waiting verifier that never gets a job is stopped when this process exits (or,
    killed, when the verifier sees its stdin close)."""
    global _waiting
    if _waiting is None or _waiting.poll() is not None:
        _waiting = _start_verifier(["--wait"], cwd=tempfile.gettempdir(), stdin=subprocess.PIPE)
    # Exit hooks run last registered first, and one registered after this one may end the process without
    # the rest (the CLI's interrupt handling, flows/interrupt.py): registered again with each call (the CLI's,
    # then the flow's), it runs before those, and a Ctrl-C leaves no verifier behind.
    atexit.unregister(_stop_waiting)
    atexit.register(_stop_waiting, _waiting)


def _stop_waiting(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _start_verifier(args: list[str], cwd: str, stdin: int | None = None) -> subprocess.Popen[str]:
    # -I: no PYTHONPATH, no user site, no script folder on sys.path; cwd is a folder without the
    # project. That is not enough on its own: an editable install (`pip install -e .`) puts the
    # project on sys.path through a .pth file in site-packages, so the verifier also blocks
    # importing the project's packages.
    return subprocess.Popen(
        [sys.executable, "-I", str(VERIFIER), *args],
        cwd=cwd,
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_verifier(paths: list[Path], images: torch.Tensor, timeout_s: float) -> list[torch.Tensor]:
    global _waiting
    with tempfile.TemporaryDirectory(prefix="digitflow-verify-") as tmp:
        inputs = Path(tmp, "inputs.pt")
        outputs = [Path(tmp, f"output-{i}.pt") for i in range(len(paths))]
        torch.save(images.detach().to("cpu", torch.float32).contiguous(), inputs)
        args = [str(inputs)]
        for path, output in zip(paths, outputs, strict=True):
            args += [str(path.resolve()), str(output)]
        names = ", ".join(str(p) for p in paths)
        process, _waiting = _waiting, None
        job = json.dumps(args) + "\n"
        if process is None or process.poll() is not None:  # none started ahead, or it died: start one now
            process, job = _start_verifier(args, cwd=tmp), ""
        try:
            _, stderr = process.communicate(job or None, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.communicate()
            raise ExportError(f"verifying exported model {names} timed out after {timeout_s:g} s") from exc
        if process.returncode != 0:
            summary = _summarise(stderr, process.returncode)
            failed = next((p for p in paths if p.name in summary), paths[0]) if len(paths) > 1 else paths[0]
            raise ExportError(f"exported model {failed} failed verification: {summary}")
        results = []
        for path, output in zip(paths, outputs, strict=True):
            try:
                results.append(torch.load(output, map_location="cpu", weights_only=True))
            except Exception as exc:
                raise ExportError(f"verifier for {path} wrote no readable logits: {one_line(exc)}") from exc
        return results


def _summarise(stderr: str, returncode: int) -> str:
    """The verifier's own one-line report, else the last stderr line, else the exit status."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("verify-export:")]
    text = ours[-1].removeprefix("verify-export:").strip() if ours else (lines[-1] if lines else "")
    if not text:
        text = f"verifier exited with status {returncode}"
    return text if len(text) <= 300 else text[:297] + "..."


def _timing_model(model: Any) -> Any:
    """A CPU, eval-mode version of ``model`` to time, leaving the caller's model untouched."""
    if isinstance(model, (str, os.PathLike)):
        return load_export(model)
    if isinstance(model, torch.fx.GraphModule):
        return model  # torch.export's module(): already inference-mode graph; eval() unsupported
    if isinstance(model, nn.Module):
        on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
        if model.training or not on_cpu:
            return _cpu_eval_copy(model)
    return model


def measure_latency(
    model: Any,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 50,
    warmup: int = 10,
    seed: int = 0,
    budget_s: float | None = None,
) -> dict[int, float]:
    """Median wall-clock milliseconds per forward pass on CPU, for each batch size.

    ``model`` is an eager ``nn.Module`` (timed as an eval-mode CPU copy if it is training or not
    on CPU), a loaded TorchScript module, a torch.export ``module()``, or a path to a ``.pt`` /
    ``.pt2`` file. Inputs are uniform random images (N, 1, 28, 28) from ``seed``; every pass runs
    under ``torch.inference_mode`` with torch's current CPU thread count. ``budget_s`` caps the seconds
    spent per batch size: the warm-up stops after half of it (at least one pass: the first builds the
    kernels' caches), the timed passes once all of it is spent (at least 5), and the median is of the
    passes so far. Returns ``{batch_size: median_ms}``.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ConfigError(f"latency batch sizes must be >= 1, got {tuple(batch_sizes)}")
    runner = _timing_model(model)
    generator = torch.Generator().manual_seed(seed)
    result: dict[int, float] = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            batch_size = int(batch_size)
            images = torch.rand(batch_size, 1, 28, 28, generator=generator)
            began = time.perf_counter()
            for _ in range(warmup):
                runner(images)
                if budget_s is not None and time.perf_counter() - began > budget_s / 2:
                    break  # a batch of 256 took all 10 warm-up passes, 30 ms each, before the budget applied
            times: list[float] = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner(images)
                times.append(time.perf_counter() - start)
                if budget_s is not None and len(times) >= 5 and time.perf_counter() - began > budget_s:
                    break
            result[batch_size] = statistics.median(times) * 1000.0
    return result


def compare_latency(
    eager_model: nn.Module,
    scripted_model: Any,
    program_model: Any = None,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 50,
    warmup: int = 10,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Eager vs exported CPU latency as flat metric keys (median ms per batch; ``budget_s``: see
    :func:`measure_latency`).

    ``scripted_model`` / ``program_model`` are loaded modules or paths to the ``.pt`` / ``.pt2``
    files; ``program_model`` is optional. Keys, for each batch size B (default 1 and 256):

    * ``export/eager_ms_bB``: the eager model (eval mode, CPU);
    * ``export/torchscript_ms_bB``: the TorchScript module;
    * ``export/program_ms_bB``: the torch.export module (only when ``program_model`` is given).
    """
    models = {"eager": eager_model, "torchscript": scripted_model}
    if program_model is not None:
        models["program"] = program_model
    metrics: dict[str, float] = {}
    for name, model in models.items():
        timings = measure_latency(model, batch_sizes=batch_sizes, repeats=repeats, warmup=warmup, budget_s=budget_s)
        for batch_size, ms in timings.items():
            metrics[f"export/{name}_ms_b{batch_size}"] = ms
    return metrics
