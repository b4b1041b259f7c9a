"""A flow's parameters from its option table (:mod:`digitflow.config.options`), so they are defined once.

``@takes_options(RUN_OPTIONS)`` on ``def pipeline(**options)`` gives the function the signature the
table describes: one parameter per option, with its type and default, and the option's help in the
docstring's ``Args:`` section. Prefect reads both through :func:`inspect.signature` and the docstring:
it validates a run's parameters against the types, and a deployment's form (``prefect deploy``, the UI)
shows each parameter with its default and help, as if the function had been written out by hand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from digitflow.config.options import Option

KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
F = TypeVar("F", bound=Callable[..., Any])


def takes_options(options: Sequence[Option]) -> Callable[[F], F]:
    """Give the decorated ``fn(**options)`` the signature and ``Args:`` docs of ``options``."""

    def decorate(fn: F) -> F:
        returns = inspect.signature(fn).return_annotation
        parameters = [
            inspect.Parameter(
                o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=o.default, annotation=o.annotation
            )
            for o in options
        ]
        fn.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
        fn.__annotations__ = {**{o.name: o.annotation for o in options}, "return": returns}
        args = "\n".join(f"    {o.name}: {o.help or o.name}" for o in options)
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n"
        return fn

    return decorate
