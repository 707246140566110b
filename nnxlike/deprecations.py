"""flax's ``nnx.deprecations`` module: ``deprecated``, for renamed functions."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any


def deprecated(new_fn: Callable) -> Callable:
    """A deprecated alias of ``new_fn``: warns on every call, then calls it.

    >>> import warnings
    >>> import nnxlike as nnx
    >>> old = nnx.deprecations.deprecated(abs)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     out = old(-2)
    >>> out, caught[0].category.__name__
    (2, 'DeprecationWarning')
    """

    @functools.wraps(new_fn)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"This name is deprecated; use {new_fn.__qualname__} instead (same "
            "arguments).",
            DeprecationWarning,
            stacklevel=2,
        )
        return new_fn(*args, **kwargs)

    alias.__doc__ = (
        f"Deprecated: use ``{new_fn.__qualname__}``.\n\n{new_fn.__doc__ or ''}"
    )
    return alias
