"""Named random-number streams: ``Rngs`` and ``RngStream``.

Design note: a stream is a key plus a counter, both held in Variables
(``RngKey``, ``RngCount``). A draw is ``fold_in(key, count)`` followed by
``count += 1``, so drawing inside a compiled function only changes a Variable's
value: no recompilation, and the transform writes the advanced counter back to
the caller. Keys are typed (``jax.random.key``). Unknown stream names fall back to
``default``; without one the error names the stream and the fix.
"""

from __future__ import annotations

import functools
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


# -- split_rngs: flax.nnx's way to give vmap lanes their own keys -------------------


class _SplitBackups:
    """Undoes a ``split_rngs``: each stream gets back its key (count advanced)."""

    def __init__(self, saved: list):
        self._saved = saved

    def restore(self) -> None:
        for stream, key, count in self._saved:
            stream.key.value = key
            stream.count.value = count

    def __enter__(self) -> _SplitBackups:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def _selected_streams(nodes: tuple, only: Any) -> list:
    from nnxlike._filters import to_predicate

    pred = to_predicate(only)
    seen: set[int] = set()
    streams = []
    for node in nodes:
        if not _graph.is_graph_node(node) and not isinstance(node, (list, tuple, dict)):
            continue
        for path, value in _graph.iter_graph(node):
            if isinstance(value, RngStream) and id(value) not in seen:
                if pred((*path, value.tag), value):
                    seen.add(id(value))
                    streams.append(value)
    return streams


def _split_now(nodes: tuple, splits: Any, only: Any, squeeze: bool) -> _SplitBackups:
    saved = []
    for stream in _selected_streams(nodes, only):
        if stream.key.value.ndim != 0:
            _SplitBackups(saved).restore()  # leave the earlier streams as they were
            raise ValueError(
                f"split_rngs: the {stream.tag!r} stream is already split (its key "
                f"has shape {stream.key.value.shape}); split it once."
            )
        key = stream()  # advances the caller's counter by one draw
        saved.append((stream, stream.key.value, stream.count.value))
        new = jax.random.split(key, splits)
        if squeeze:
            new = new[0] if np.ndim(splits) == 0 and splits == 1 else new
        stream.key.value = new
        stream.count.value = jnp.zeros(new.shape, dtype=jnp.uint32)
    return _SplitBackups(saved)


def split_rngs(
    node_or_fn: Any = None,
    /,
    *,
    splits: int | tuple[int, ...],
    only: Any = ...,
    squeeze: bool = False,
) -> Any:
    """Give every selected ``RngStream`` ``splits`` keys, for ``vmap``/``scan`` lanes.

    flax.nnx's spelling, kept so its code runs unchanged. As a decorator the keys
    are split for the call and restored afterwards (the streams advance by one
    draw); called on objects it splits them now and returns a context manager
    that restores them. ``only`` filters streams by tag (``'params'``) or any
    filter. nnxlike's ``nnx.vmap`` already gives each lane different randomness
    when the Rngs is not mapped (``in_axes=None``); this is for code that maps it.

    >>> import nnxlike as nnx
    >>> @nnx.split_rngs(splits=3)
    ... @nnx.vmap(in_axes=0, out_axes=0)
    ... def make(rngs):
    ...     return nnx.Linear(2, 2, rngs=rngs)
    >>> rngs = nnx.Rngs(0)
    >>> make(rngs).kernel.shape, rngs.default.key.value.shape
    ((3, 2, 2), ())
    >>> with nnx.split_rngs(rngs, splits=4):
    ...     rngs.default.key.value.shape
    (4,)
    """
    if node_or_fn is None:
        return lambda f: split_rngs(f, splits=splits, only=only, squeeze=squeeze)
    if callable(node_or_fn) and not _graph.is_graph_node(node_or_fn):
        fn = node_or_fn

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _split_now((*args, *kwargs.values()), splits, only, squeeze):
                return fn(*args, **kwargs)

        return wrapper
    return _split_now((node_or_fn,), splits, only, squeeze)
