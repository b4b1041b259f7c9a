"""Standalone verifier for an exported digitflow model: imports only torch and the standard library.

:func:`digitflow.export.exporters.verify_export` runs this file in a fresh interpreter
(``python -I verifier.py INPUTS MODEL OUTPUT [MODEL OUTPUT ...]``, cwd = a temporary folder) to prove
that the exported files work without any of this project's code: one process for every file of an
export. It refuses to import the project's packages (``digitflow``, ``flows``, ``tasks``, ``tracking``,
``reporting``) even where they are installed, so an export that secretly depends on them fails here
instead of in a user's hands.

Protocol:
    INPUTS  a ``torch.save``-d float tensor (N, 1, 28, 28) (a classifier's images) or (N, latent)
            (a generator's noise), loaded with ``weights_only=True``.
    MODEL   a TorchScript ``.pt`` (``torch.jit.load``), torch.export ``.pt2``
            (``torch.export.load(...).module()``) or AOTInductor ``.aoti.pt2``
            (``torch._inductor.aoti_load_package``) file.
    OUTPUT  where that model's output tensor (logits (N, num_classes), or images) is ``torch.save``-d.

``verifier.py --wait`` starts ahead of its job (:func:`digitflow.export.exporters.prestart_verifier`):
it imports torch and torch.export's loader first, then reads its arguments, the same ones, as one JSON
list on stdin (and exits at once, with 0, if stdin closes first).

Exit status 0 on success. On failure it writes exactly one line, starting with ``verify-export:``,
to stderr, naming the model file it concerns, and exits with 2 (a model file cannot be loaded), 3 (a
model failed to run on the inputs) or 4 (bad inputs or usage).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the verifier imports torch only once its import guard is in place (main)
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    import torch

FORBIDDEN = frozenset({"digitflow", "flows", "tasks", "tracking", "reporting"})
PREFIX = "verify-export:"


class _ForbidProject(importlib.abc.MetaPathFinder):
    """Make ``import digitflow`` (and the other project packages) fail inside this process."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:  # importlib's MetaPathFinder protocol
        if fullname.split(".", 1)[0] in FORBIDDEN:
            raise ImportError(f"the verifier may not import project package {fullname!r}")
        return None


def _fail(code: int, what: str, exc: BaseException) -> NoReturn:
    lines = str(exc).strip().splitlines()
    detail = lines[0].strip() if lines else ""
    if len(detail) > 200:
        detail = detail[:197] + "..."
    message = f"{PREFIX} {what}: {type(exc).__name__}" + (f": {detail}" if detail else "")
    sys.stderr.write(message + "\n")
    sys.exit(code)


def _load(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    if path.endswith(".aoti.pt2"):  # an AOTInductor package: compiled code, no compiler needed to load it
        import torch._inductor

        package: Callable[[torch.Tensor], torch.Tensor] = torch._inductor.aoti_load_package(path)
        return package
    if path.endswith(".pt2"):
        program: torch.nn.Module = torch.export.load(path).module()
        return program
    # TorchScript is deprecated in torch 2.x and jit.load says so with a FutureWarning on every
    # call; this script exists to load TorchScript, so that one message is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        model: torch.jit.ScriptModule = torch.jit.load(path, map_location="cpu")
    return model.eval()


def main(argv: list[str]) -> int:
    """Load each MODEL, run it on INPUTS under inference mode, save its output to its OUTPUT."""
    if len(argv) < 3 or len(argv) % 2 != 1:
        sys.stderr.write(f"{PREFIX} usage: verifier.py INPUTS MODEL OUTPUT [MODEL OUTPUT ...]\n")
        return 4
    inputs_path, pairs = argv[0], list(zip(argv[1::2], argv[2::2], strict=True))
    sys.meta_path.insert(0, _ForbidProject())

    import torch

    try:
        images = torch.load(inputs_path, map_location="cpu", weights_only=True)
        # images (N, 1, 28, 28) for a classifier, noise (N, latent) for a GAN's generator
        if not isinstance(images, torch.Tensor) or images.dim() < 2:
            raise ValueError("inputs must be a batch tensor: (N, 1, 28, 28) images or (N, latent) noise")
    except Exception as exc:  # noqa: BLE001 - reported as one line
        _fail(4, "cannot read inputs", exc)
    for model_path, output_path in pairs:
        name = model_path.replace("\\", "/").rsplit("/", 1)[-1]
        try:
            model = _load(model_path)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            _fail(2, f"cannot load the model file {name}", exc)
        try:
            with torch.inference_mode():
                logits = model(images)
            if not isinstance(logits, torch.Tensor):
                raise TypeError(f"model returned {type(logits).__name__}, expected a logits tensor")
            torch.save(logits.detach().to("cpu").contiguous().clone(), output_path)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            _fail(3, f"{name} failed on the inputs", exc)
    leaked = sorted(name for name in sys.modules if name.split(".", 1)[0] in FORBIDDEN)
    if leaked:
        sys.stderr.write(f"{PREFIX} project modules were imported: {', '.join(leaked)}\n")
        return 3
    return 0


def wait_for_job() -> int:
    """``--wait``: import what loading takes now, then run the job that arrives on stdin."""
    import json

    sys.meta_path.insert(0, _ForbidProject())
    import torch  # the slow part (seconds), done before the job is known

    # torch.export.load's serialisation modules, another second, imported on its first call (another
    # torch may have them elsewhere: they then load with the first .pt2)
    with contextlib.suppress(ImportError):
        import torch.export.pt2_archive._package  # noqa: F401
    # and what its symbolic shapes import on their first use (torch._dynamo's frame evaluation, the
    # inductor's size rules, ...: 0.5 s of loading a .pt2 with a dynamic batch size). The run's
    # process is importing too at this point, on the other core.
    with contextlib.suppress(ImportError, AttributeError):
        from torch.fx.experimental.symbolic_shapes import uninteresting_files

        uninteresting_files()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    return main([str(arg) for arg in json.loads(line)])


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown of torch (0.7 s here, every module's objects
    freed one by one), which the run waits for: the outputs are saved and closed, stderr is flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(wait_for_job() if sys.argv[1:] == ["--wait"] else main(sys.argv[1:]))
