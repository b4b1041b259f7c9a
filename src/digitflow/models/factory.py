"""Which model a run trains: ``--model lenet`` (a built-in name) or ``--model package.module:Factory``.

A model spec names a factory that takes the number of classes and returns a ``torch.nn.Module`` mapping
float images ``(N, 1, 28, 28)`` in [0, 1] to logits ``(N, classes)``. The built-in models are in
:data:`BUILTIN_MODELS`; any other spec is ``module:attribute``, imported the way uvicorn imports an app:
the current folder first (a ``mymodels.py`` beside where the run starts), then the installed packages.

:func:`create_model` builds one and :func:`check_model` makes sure it keeps that contract, each with a
one-line :class:`~digitflow.errors.ConfigError` that names the spec and what is wrong, so a user's
model fails before any data is read or training starts. :func:`model_name` is the short name a run
files things under: the registered model ``digitflow-<name>``, the exported ``<name>.pt``, the
checkpoint ``<name>-<hash>.pt``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from digitflow.errors import ConfigError
from digitflow.fileio import one_line
from digitflow.models.lenet import LeNet
from digitflow.models.minivgg import MiniVGG

ModelFactory = Callable[[int], nn.Module]  # number of classes -> a freshly initialised model

DEFAULT_MODEL = "lenet"
BUILTIN_MODELS: dict[str, type[nn.Module]] = {"lenet": LeNet, "minivgg": MiniVGG}
REGISTERED_PREFIX = "digitflow-"  # registered model name: digitflow-<model name>
INPUT_SHAPE = (1, 28, 28)  # what every model takes: grayscale 28x28 in [0, 1]
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")  # package.module:Factory(.attr)


def is_builtin(spec: str) -> bool:
    """Whether ``spec`` names a built-in model (``lenet``, ...)."""
    return spec in BUILTIN_MODELS


def check_spec(spec: str) -> None:
    """A one-line ConfigError unless ``spec`` is a built-in name or has the form ``package.module:Factory``
    (the form only: nothing is imported)."""
    if is_builtin(spec):
        return
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ConfigError(
            f"--model {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor "
            "package.module:Factory, a function or class that takes the number of classes"
        )


def model_name(spec: str) -> str:
    """The short name of ``spec``'s model, from the spec alone: the built-in name (``lenet``), or the
    factory's name in lower case with anything but letters, digits, ``-`` and ``_`` as ``-``
    (``mymodels:TinyNet`` -> ``tinynet``)."""
    check_spec(spec)
    if is_builtin(spec):
        return spec
    return re.sub(r"[^a-z0-9_-]+", "-", spec.rsplit(":", 1)[1].rsplit(".", 1)[-1].lower())


def model_label(spec: str) -> str:
    """What a run's name and log call the model: the built-in class (``LeNet``) or the factory's name."""
    check_spec(spec)
    if is_builtin(spec):
        return BUILTIN_MODELS[spec].__name__
    return spec.rsplit(":", 1)[1].rsplit(".", 1)[-1]


def registered_model_name(spec: str) -> str:
    """The registered model a run of ``spec`` files its versions under: ``digitflow-<model name>``."""
    return REGISTERED_PREFIX + model_name(spec)


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    """The current folder on ``sys.path`` while importing (as ``python -m`` and uvicorn have it), so a
    ``mymodels.py`` beside where the run starts imports whatever script started it."""
    here = str(Path.cwd())
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def load_factory(spec: str) -> ModelFactory:
    """The factory ``spec`` names: a built-in model's class, or ``package.module:Factory`` imported.

    A one-line ConfigError if the module cannot be imported (with the import's own error), has no
    such attribute, or the attribute cannot be called.
    """
    check_spec(spec)
    if is_builtin(spec):
        return BUILTIN_MODELS[spec]
    module_name, attribute = spec.split(":", 1)
    try:
        with _current_folder_importable():
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - anything the user's module raises while importing is "cannot import"
        raise ConfigError(f"--model {spec}: cannot import {module_name} ({one_line(exc)})") from None
    factory: object = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ConfigError(f"--model {spec}: {module_name} has no {attribute}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ConfigError(
            f"--model {spec}: {attribute} is a {type(factory).__name__}, not a function or class "
            "that takes the number of classes"
        )
    return factory  # checked callable; create_model checks what it returns


def create_model(spec: str, num_classes: int, seed: int | None = None) -> nn.Module:
    """A freshly initialised model of ``spec`` for ``num_classes`` classes (``torch.manual_seed(seed)``
    first when ``seed`` is given: the same seed, the same initial weights). A one-line ConfigError if
    the factory raises or returns something other than an ``nn.Module``."""
    factory = load_factory(spec)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = factory(num_classes)
    except Exception as exc:  # noqa: BLE001 - the user's factory failing is their input error, in one line
        raise ConfigError(f"--model {spec}: the factory failed for {num_classes} classes ({one_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@torch.no_grad()
def check_model(model: nn.Module, num_classes: int, spec: str) -> None:
    """One forward pass on a ``(2, 1, 28, 28)`` batch of [0, 1] pixels, in eval mode on the model's
    device: a one-line ConfigError if it raises or does not return float logits ``(2, num_classes)``.
    The model's mode is left as it was; its weights are not changed (the global RNG is not drawn)."""
    parameters = [*model.parameters(), *model.buffers()]
    device = parameters[0].device if parameters else torch.device("cpu")
    images = torch.rand(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
    except Exception as exc:  # noqa: BLE001 - the user's forward failing is their input error, in one line
        raise ConfigError(
            f"--model {spec}: the model fails on a batch of shape (2, 1, 28, 28) ({one_line(exc)}); it must take "
            "float images (N, 1, 28, 28) in [0, 1]"
        ) from None
    finally:
        model.train(was_training)
    expected = (2, num_classes)
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(
            f"--model {spec}: the model returned a {type(logits).__name__} for a (2, 1, 28, 28) batch, "
            f"not a tensor of logits (2, {num_classes})"
        )
    if tuple(logits.shape) != expected or not logits.is_floating_point():
        shape = "(" + ", ".join(str(d) for d in logits.shape) + ")"
        raise ConfigError(
            f"--model {spec}: the model returned {logits.dtype} {shape} for a (2, 1, 28, 28) batch; "
            f"it must return float logits (N, classes) = (2, {num_classes})"
        )
