"""A flow's parameters from its option table (:mod:`digitflow.config.options`), so they are defined once.

``@takes_options(RUN_OPTIONS)`` on ``def pipeline(**options)`` gives the function the signature the
table describes: one parameter per option, with its type and default, and the option's help in the
docstring's ``Args:`` section. Prefect reads both through :func:`inspect.signature` and the docstring:
it validates a run's parameters against the types, and a deployment's form (``prefect deploy``, the UI)
shows each parameter with its default and help, as if the function had been written out by hand.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from digitflow.config.options import Option

KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
F = TypeVar("F", bound=Callable[..., Any])


def takes_options(options: Sequence[Option]) -> Callable[[F], F]:
    """Give the decorated ``fn(**options)`` the signature and ``Args:`` docs of ``options``; it is called
    with every argument by name (Prefect passes positional-or-keyword parameters positionally)."""

    def decorate(fn: F) -> F:
        returns = inspect.signature(fn).return_annotation
        signature = inspect.Signature(
            [inspect.Parameter(o.name, KEYWORD, default=o.default, annotation=o.annotation) for o in options],
            return_annotation=returns,
        )

        @functools.wraps(fn)
        def by_name(*args: Any, **kwargs: Any) -> Any:
            return fn(**signature.bind(*args, **kwargs).arguments)

        by_name.__signature__ = signature  # type: ignore[attr-defined]
        by_name.__annotations__ = {**{o.name: o.annotation for o in options}, "return": returns}
        args = "\n".join(f"    {o.name}: {o.help or o.name}" for o in options)
        by_name.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n"
        return by_name  # type: ignore[return-value]

    return decorate
