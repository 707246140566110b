"""Named random-number streams: ``Rngs`` and ``RngStream``.

Design note: a stream is a key plus a counter, both held in Variables
(``RngKey``, ``RngCount``). A draw is ``fold_in(key, count)`` followed by
``count += 1``, so drawing inside a compiled function only changes a Variable's
value: no recompilation, and the transform writes the advanced counter back to
the caller. Keys are typed (``jax.random.key``). Unknown stream names fall back to
``default``; without one the error names the stream and the fix.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlike import _graph
from nnxlike._object import Object
from nnxlike._variables import RngCount, RngKey


def _as_key(seed: Any) -> jax.Array:
    if isinstance(seed, int):
        return jax.random.key(seed)
    if isinstance(seed, RngKey):
        seed = seed.value
    try:
        arr = jnp.asarray(seed) if not isinstance(seed, jax.Array) else seed
    except (TypeError, ValueError):  # strings, None: report in our own words below
        arr = np.asarray(seed, dtype=object)
    if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
        return arr
    if arr.dtype == jnp.uint32 and arr.shape[-1:] == (2,):
        return jax.random.wrap_key_data(arr)
    if jnp.issubdtype(arr.dtype, jnp.integer) and arr.ndim == 0:
        return jax.random.key(arr)
    raise TypeError(
        f"Rngs: a seed must be an int, a typed key (jax.random.key) or a raw "
        f"uint32 key (jax.random.PRNGKey), got {type(seed).__name__} with dtype "
        f"{arr.dtype} and shape {arr.shape}."
    )


class RngStream(Object):
    """One named stream: call it to get a fresh key.

    >>> import nnxlike as nnx
    >>> stream = nnx.Rngs(params=0).params
    >>> k1, k2 = stream(), stream()
    >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
    True
    >>> int(stream.count.value)
    2
    """

    def __init__(self, key: Any, *, tag: str, count: Any = None):
        key = _as_key(key)
        self.tag = tag
        self.key = RngKey(key, tag=tag)
        if count is None:
            count = jnp.zeros(key.shape, dtype=jnp.uint32)
        self.count = RngCount(count, tag=tag)

    def __call__(self) -> jax.Array:
        count = self.count.value
        key = self.key.value
        if key.ndim == 0:
            new_key = jax.random.fold_in(key, count)
        else:  # a split stream (under vmap, or after Rngs.split): one key per lane
            new_key = jax.vmap(jax.random.fold_in)(
                key.reshape(-1), jnp.reshape(count, -1)
            ).reshape(key.shape)
        self.count.value = count + 1
        return new_key

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> RngStream:
        """A new independent stream seeded from this one (advancing it)."""
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return RngStream(key, tag=self.tag)

    def reseed(self, seed: Any) -> None:
        key = _as_key(seed)
        self.key.value = key
        self.count.value = jnp.zeros(key.shape, dtype=jnp.uint32)


class Rngs(Object):
    """A set of named random streams: ``Rngs(0)``, ``Rngs(params=0, dropout=1)``.

    ``rngs.params()`` draws from the ``params`` stream, ``rngs()`` from
    ``default``; a stream that does not exist falls back to ``default``.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(0, dropout=1)
    >>> rngs.params().shape, rngs().dtype
    ((), key<fry>)
    >>> sorted(name for name, _ in rngs.items())
    ['default', 'dropout']
    """

    def __init__(self, default: Any = None, /, **streams: Any):
        if default is not None:
            streams = {"default": default, **streams}
        if not streams:
            raise TypeError(
                "Rngs needs at least one seed: `nnx.Rngs(0)` or "
                "`nnx.Rngs(params=0, dropout=1)`."
            )
        for name, seed in streams.items():
            if isinstance(seed, RngStream):
                seed = seed()
            setattr(self, name, RngStream(seed, tag=name))

    def _stream(self, name: str) -> RngStream:
        d = self.__dict__
        stream = d.get(name)
        if stream is None:
            stream = d.get("default")
            if stream is None:
                raise AttributeError(
                    f"Rngs has no stream {name!r} and no 'default' stream to fall "
                    f"back on (streams: {sorted(k for k, _ in self.items())}). "
                    "Create it: "
                    f"`nnx.Rngs({name}=0, ...)`, or give a default: `nnx.Rngs(0)`."
                )
        return stream

    def __getattr__(self, name: str) -> RngStream:
        if name.startswith("__") or name.startswith("_nnx_"):
            raise AttributeError(name)
        return self._stream(name)

    def __getitem__(self, name: str) -> RngStream:
        return self._stream(name)

    def __call__(self) -> jax.Array:
        return self._stream("default")()

    def __contains__(self, name: str) -> bool:
        return isinstance(self.__dict__.get(name), RngStream)

    def items(self):
        return [(k, v) for k, v in self._nnx_children() if isinstance(v, RngStream)]

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> Rngs:
        """New independent Rngs (each stream seeded by a draw from this one)."""
        new = object.__new__(Rngs)
        for name, stream in self.items():
            setattr(new, name, stream.fork(split=split))
        return new

    def split(self, n: int | tuple[int, ...]) -> Rngs:
        """An Rngs whose streams hold ``n`` keys each: one per ``vmap`` lane."""
        return self.fork(split=n)

    def reseed(self, **seeds: Any) -> None:
        """Restart the named streams from new seeds (counters back to zero)."""
        for name, seed in seeds.items():
            if name not in self:
                raise AttributeError(
                    f"reseed: Rngs has no stream {name!r}; streams: "
                    f"{[k for k, _ in self.items()]}."
                )
            self.__dict__[name].reseed(seed)


def reseed(node: Any, /, **seeds: Any) -> None:
    """Reseed every ``RngStream`` with one of the given tags anywhere in ``node``.

    >>> import nnxlike as nnx
    >>> m = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> nnx.reseed(m, dropout=1)
    >>> int(m.rngs.count.value)
    0
    """
    for _, value in _graph.iter_graph(node):
        if isinstance(value, RngStream) and value.tag in seeds:
            value.reseed(seeds[value.tag])


def split_rngs_keys(rngs: Rngs | RngStream, n: int) -> Any:
    """Helper: the Rngs for ``n`` vmap lanes (used by transforms)."""
    return rngs.split(n) if isinstance(rngs, Rngs) else rngs.fork(split=n)
