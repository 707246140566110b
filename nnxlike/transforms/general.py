"""``split_inputs`` / ``merge_inputs``: lift a plain JAX transform by hand.

Design note: a pair of wrappers over ``nnx.update_context`` and
``to_tree``/``from_tree`` (``_contexts``, ``_extract``). ``split_inputs(t)``
splits the graph nodes among the arguments into pytrees before calling ``t``
(``jax.jit``, ``jax.vmap``, ``jax.lax.cond``, ...); ``merge_inputs(f)`` rebuilds
them inside, calls ``f``, and returns ``(inputs, output)`` split again (the
inputs with non-node leaves set to None, so every change made inside reaches
the caller's objects). A transform with output axes must therefore describe
that pair (``out_axes=(in_axes, ...)``). Transforms with a fixed output
structure (``jax.grad``, ``jax.lax.scan``) cannot be lifted this way; use
``nnx.grad`` / ``nnx.scan``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from nnxlike._contexts import update_context
from nnxlike._extract import clear_non_graph_nodes, from_tree, to_tree

F = TypeVar("F", bound=Callable[..., Any])
_TAG = "split_merge_inputs"


def split_inputs(f: F | None = None, *, ctxtag: Hashable = _TAG) -> Any:
    """Give ``f`` (a JAX transform of a ``merge_inputs`` function) pytrees.

    The graph nodes among the arguments are split (sharing kept) before ``f``
    runs; its ``(inputs, output)`` result is merged back onto the caller's
    objects, so Variable writes and structural changes made inside stay.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> from nnxlike.transforms.general import merge_inputs, split_inputs
    >>> @split_inputs
    ... @jax.jit
    ... @merge_inputs
    ... def forward_and_zero(model, x):
    ...     y = model(x)
    ...     model.kernel[...] = jnp.zeros_like(model.kernel[...])
    ...     return y
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> forward_and_zero(model, jnp.ones((1, 2))).shape, float(model.kernel[...].sum())
    ((1, 2), 0.0)
    """
    if f is None:
        return functools.partial(split_inputs, ctxtag=ctxtag)

    @functools.wraps(f)
    def split_inputs_wrapper(*args: Any) -> Any:
        with update_context(ctxtag):
            pure_args = to_tree(args, ctxtag=ctxtag)
            pure_args_out, pure_out = f(*pure_args)
            _, out = from_tree((pure_args_out, pure_out), ctxtag=ctxtag, is_inner=False)
        return out

    return split_inputs_wrapper


def merge_inputs(f: F | None = None, *, ctxtag: Hashable = _TAG) -> Any:
    """Rebuild the objects ``split_inputs`` split, call ``f``, split again.

    Returns ``(inputs, output)`` as pytrees: the inputs with every non-node
    leaf set to None, then ``f``'s output. See ``split_inputs``.

    >>> import jax, jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> from nnxlike.transforms.general import merge_inputs, split_inputs
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> y = split_inputs(jax.lax.cond)(
    ...     False, merge_inputs(lambda m, x: m(x)), merge_inputs(lambda m, x: x + 1),
    ...     model, jnp.ones((1, 2)))
    >>> y.tolist()
    [[2.0, 2.0]]
    """
    if f is None:
        return functools.partial(merge_inputs, ctxtag=ctxtag)

    @functools.wraps(f)
    def merge_inputs_wrapper(*pure_args: Any) -> tuple:
        args = from_tree(pure_args, ctxtag=ctxtag, is_inner=True)
        out = f(*args)
        return to_tree((clear_non_graph_nodes(args), out), ctxtag=ctxtag)

    return merge_inputs_wrapper
