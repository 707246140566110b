"""``Dropout``.

Design note: a Dropout owns an ``RngStream`` forked at construction from
``rngs[rng_collection]`` (or from the stream it is given). Forked from an
``Rngs`` it is tagged ``rng_collection`` even when the draw fell back on
``default`` (flax.nnx tags it ``default`` there, so ``nnx.reseed(model,
dropout=...)`` silently misses it); the keys are the same. A call may also pass
``rngs=`` (an ``Rngs``, a stream or a key) to draw from elsewhere. Every mask is
``bernoulli(stream(), 1 - rate, shape)``, the draw flax.nnx 0.12.8 makes, so the
same seed gives the same masks in both. ``deterministic`` is a static attribute
flipped by ``train()``/``eval()``; ``None`` means it must be given at call time.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nnxlike._module import Module
from nnxlike._rngs import Rngs, RngStream


class Dropout(Module):
    """Zero each element with probability ``rate`` and scale the rest by 1/(1-rate).

    Args:
        rate: the probability of dropping an element (not the keep rate).
        broadcast_dims: dimensions that share one mask value.
        deterministic: True returns the input unchanged; None requires the
            call to say.
        rng_collection: the stream to fork from ``rngs`` (and to draw from when
            a call passes an ``Rngs``).
        rngs: an ``Rngs`` or ``RngStream`` to fork the layer's stream from, or
            None (then every call must pass ``rngs=``).

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
        deterministic: bool | None = False,
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
            # flax.nnx's fork, tagged with the collection even when the draw fell
            # back on 'default': nnx.reseed(model, dropout=...) then finds it.
            rngs = RngStream(rngs[rng_collection](), tag=rng_collection)
        elif isinstance(rngs, RngStream):
            rngs = rngs.fork()
        elif rngs is not None:
            raise TypeError(
                f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or None, got "
                f"{type(rngs).__name__}. Build it with "
                "`nnx.Dropout(rate, rngs=nnx.Rngs(dropout=0))`."
            )
        self.rngs = rngs

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Apply a fresh mask (unless deterministic).

        Args:
            inputs: the array to mask.
            deterministic: overrides the layer's flag for this call.
            rngs: an ``Rngs``, ``RngStream`` or key to draw the mask from
                instead of the layer's own stream.
        """
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None:
            raise ValueError(
                "Dropout.__call__: no `deterministic` given: the layer was built "
                "with deterministic=None. Pass it at call time "
                "(`dropout(x, deterministic=False)`), build it with "
                "`nnx.Dropout(rate, deterministic=False)`, or set it for the whole "
                "model with `model.train()` / `model.eval()`."
            )
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:  # no 0/0 in the gradient
            return jnp.zeros_like(inputs)
        if rngs is None:
            rngs = self.rngs
        if rngs is None:
            raise ValueError(
                "Dropout.__call__: `deterministic` is False, but no `rngs` argument "
                "was provided to Dropout (at construction or in the call), so there "
                "is no random stream to draw the mask from. Build it with "
                "`nnx.Dropout(rate, rngs=rngs)`, pass `rngs=` at call time, or "
                "call it with `deterministic=True` (or `model.eval()`)."
            )
        if isinstance(rngs, Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise TypeError(
                f"Dropout.__call__: rngs must be an nnx.Rngs, an nnx.RngStream or a "
                f"key (jax.random.key), got {type(rngs).__name__}."
            )
        keep = 1.0 - self.rate
        shape = list(jnp.shape(inputs))
        for d in self.broadcast_dims:
            shape[d] = 1
        # The mask takes the input's sharding: on a mesh of Explicit axes a
        # replicated mask could not be combined with a sharded input (flax).
        mask = jax.random.bernoulli(
            key, p=keep, shape=shape, out_sharding=jax.typeof(inputs).sharding
        )
        mask = jnp.broadcast_to(mask, jnp.shape(inputs))
        return jnp.where(mask, inputs / keep, jnp.zeros_like(inputs))

    def set_view(self, deterministic: bool | None = None) -> None:
        """What ``nnx.view(model, deterministic=...)`` sets on this layer.

        Args:
            deterministic: if True, disables dropout masking.

        >>> import nnxlike as nnx
        >>> drop = nnx.Dropout(0.5)
        >>> drop.set_view(deterministic=True)
        >>> drop.deterministic
        True
        """
        if deterministic is not None:
            self.deterministic = deterministic
