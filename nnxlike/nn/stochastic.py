"""``Dropout``.

Design note: a Dropout owns an ``RngStream`` forked at construction from
``rngs[rng_collection]`` (tagged with that name, so ``nnx.reseed(model,
dropout=...)`` finds it); a call may also pass ``rngs=`` to draw from elsewhere.
``deterministic`` is a static attribute flipped by ``train()``/``eval()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nnxlike._module import Module
from nnxlike._rngs import Rngs, RngStream


class Dropout(Module):
    """Zero each element with probability ``rate`` and scale the rest by 1/(1-rate).

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    >>> y = drop(jnp.ones((1000,)))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> bool((drop.eval()(jnp.ones(3)) == 1).all())
    True
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: Rngs | RngStream | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1], got {rate}.")
        self.rate = rate
        self.broadcast_dims = tuple(broadcast_dims)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, Rngs):
            rngs = RngStream(rngs[rng_collection](), tag=rng_collection)
        self.rngs = rngs

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | jax.Array | None = None,
    ) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        if rngs is None:
            rngs = self.rngs
        if rngs is None:
            raise ValueError(
                "Dropout.__call__: no random stream to draw from. Build it with "
                "`nnx.Dropout(rate, rngs=rngs)`, pass `rngs=` at call time, or "
                "call it with `deterministic=True` (or `model.eval()`)."
            )
        if isinstance(rngs, Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, RngStream):
            key = rngs()
        else:
            key = rngs
        keep = 1.0 - self.rate
        shape = list(jnp.shape(inputs))
        for d in self.broadcast_dims:
            shape[d] = 1
        mask = jax.random.bernoulli(key, p=keep, shape=shape)
        mask = jnp.broadcast_to(mask, jnp.shape(inputs))
        return jnp.where(mask, inputs / keep, jnp.zeros_like(inputs))
