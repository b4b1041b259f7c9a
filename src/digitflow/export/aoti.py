"""AOTInductor: the torch.export program compiled ahead of time into a package, ``lenet.aoti.pt2``.

The package holds the model compiled to a shared library (Inductor's C++ kernels and wrapper, built with
the C++ compiler found at export time) and its weights. Python loads it with
``torch._inductor.aoti_load_package(path)``, C++ with ``torch::inductor::AOTIModelPackageLoader``
(consumers/cpp); neither needs a compiler or this project. It is a ``.pt2`` file like the torch.export
program (``lenet.pt2``, loaded with ``torch.export.load``), so its name ends in ``.aoti.pt2`` to say
which loader it takes. It runs on the CPU it was compiled for (this machine's instruction set).

Compiling takes tens of seconds on a CPU and needs g++ (or ``$CXX``), so the pipeline writes it only
when asked (``--export-formats torchscript,export,aoti``); a model it cannot compile is one ExportError
line, and the pipeline keeps its other files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from digitflow.errors import ConfigError, ExportError
from digitflow.export.exporters import AOTI_SUFFIX, capture_program, cuda_home_warning_silenced
from digitflow.export.inputs import class_name
from digitflow.fileio import atomic_write, one_line


def compiler_missing() -> str | None:
    """Why AOTInductor cannot compile here (no C++ compiler: ``$CXX``, else ``g++``), or None."""
    name = os.environ.get("CXX") or "g++"
    if shutil.which(name) is None:
        return f"AOTInductor needs a C++ compiler at export time and {name!r} is not found (install g++ or set $CXX)"
    return None


def export_aoti(model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Compile ``model`` with AOTInductor into a package at ``path`` (``*.aoti.pt2``); its path.

    The model is captured as :func:`digitflow.export.exporters.export_program` captures it (eval-mode CPU
    copy, dynamic batch), then ``torch._inductor.aoti_compile_and_package`` compiles it for this CPU.

    Raises ConfigError for a path not ending in ``.aoti.pt2`` or an example the model cannot take;
    ExportError (one line) without a C++ compiler, or if the model cannot be captured or compiled.
    """
    path = Path(path)
    if not path.name.endswith(AOTI_SUFFIX):
        raise ConfigError(f"AOTInductor package file must end in {AOTI_SUFFIX!r}, got {str(path)!r}")
    reason = compiler_missing()
    if reason:
        raise ExportError(reason)
    program = capture_program(model, example)
    from torch import _inductor  # a second or two of imports, only when a package is compiled

    def write(tmp: Path) -> None:
        _inductor.aoti_compile_and_package(program, package_path=str(tmp))

    try:
        with cuda_home_warning_silenced():
            return atomic_write(path, write)
    except Exception as exc:
        raise ExportError(f"AOTInductor could not compile {class_name(model)}: {one_line(exc)}") from exc
