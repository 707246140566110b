"""Named random-number streams: ``Rngs`` and ``RngStream``, and their helpers.

Design note: a stream is a key plus a counter, both held in Variables
(``RngKey``, ``RngCount``). A draw is ``fold_in(key, count)`` followed by
``count += 1``, so drawing inside a compiled function only changes a Variable's
value: no recompilation, and the transform writes the advanced counter back to
the caller. Keys are typed (``jax.random.key``). Unknown stream names fall back to
``default``; without one the error names the stream and the fix.

Every derivation follows flax.nnx 0.12.8 draw for draw, so the same seed gives
the same numbers in both: the samplers (``rngs.normal(shape)``) draw one key
and call ``jax.random``; ``fork`` seeds a new stream with one draw; ``split``
splits one draw; ``broadcast`` repeats one draw; ``reseed`` seeds each stream
with a draw from a fresh ``Rngs(tag=seed)``. The helpers that map over a graph
(``split_rngs``, ``fork_rngs``, ``with_rngs``) either change the streams in
place and return backups (``graph_updates=True``) or return a copy of the graph
whose streams were replaced, leaving the input's streams advanced by one draw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnxlike import _config, _graph
from nnxlike._object import Object
from nnxlike._variables import RngCount, RngKey

_MISSING: Any = object()


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


def _shape(k: int | tuple[int, ...]) -> tuple[int, ...]:
    return (k,) if isinstance(k, (int, np.integer)) else tuple(k)


# -- samplers: `rngs.normal(shape)`, `rngs.params.lecun_normal()(shape)` ------------

# The jax.random functions flax.nnx 0.12.8 exposes as methods, in its order.
RANDOM_FUNCTIONS = (
    "bits uniform randint permutation choice normal multivariate_normal "
    "truncated_normal bernoulli beta cauchy dirichlet exponential gamma loggamma "
    "poisson gumbel categorical laplace logistic pareto t chisquare f rademacher "
    "maxwell double_sided_maxwell weibull_min orthogonal generalized_normal ball "
    "rayleigh wald geometric triangular lognormal binomial multinomial"
).split()

# The initializer constructors exposed as methods (those whose names clash with a
# jax.random function, and the constant ones, are left out, as in flax.nnx).
INITIALIZERS = (
    "delta_orthogonal glorot_normal glorot_uniform he_normal he_uniform "
    "kaiming_normal kaiming_uniform lecun_normal lecun_uniform variance_scaling "
    "xavier_normal xavier_uniform"
).split()


def _sampler(name: str) -> Callable[..., jax.Array]:
    fn = getattr(jax.random, name)

    def sample(self, *args: Any, **kwargs: Any) -> jax.Array:
        return fn(self(), *args, **kwargs)

    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = (
        f"``jax.random.{name}`` with the next key of this stream (same arguments, "
        "without the key)."
    )
    return sample


def _initializer(name: str) -> Callable[..., Callable[..., jax.Array]]:
    constructor = getattr(jax.nn.initializers, name)

    def make(self, *args: Any, **kwargs: Any) -> Callable[..., jax.Array]:
        init = constructor(*args, **kwargs)

        def keyless_init(*init_args: Any, **init_kwargs: Any) -> jax.Array:
            return init(self(), *init_args, **init_kwargs)  # a draw per call

        return keyless_init

    make.__name__ = make.__qualname__ = name
    make.__doc__ = (
        f"``jax.nn.initializers.{name}(...)`` as a keyless initializer: each call "
        "``init(shape, dtype)`` draws the next key of this stream."
    )
    return make


class _Samplers:
    """The ``jax.random`` and initializer shorthands shared by Rngs and RngStream.

    ``x.normal(shape)`` is ``jax.random.normal(x(), shape)``: one draw per call,
    so the numbers equal flax.nnx's for the same seed.

    >>> import jax
    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(0, params=1)
    >>> rngs.normal((2, 3)).shape, rngs.params.uniform((4,)).shape
    ((2, 3), (4,))
    >>> init = rngs.lecun_normal()
    >>> init((3, 5)).shape, int(rngs.default.count.value)
    ((3, 5), 2)
    """

    def __call__(self) -> jax.Array:  # pragma: no cover - overridden
        raise NotImplementedError


for _name in RANDOM_FUNCTIONS:
    setattr(_Samplers, _name, _sampler(_name))
for _name in INITIALIZERS:
    setattr(_Samplers, _name, _initializer(_name))
del _name


# -- RngStream ------------------------------------------------------------------------


class RngStream(_Samplers, Object):
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
        """A new independent stream seeded by one draw from this one.

        ``split=`` is flax.nnx's older spelling of ``stream.split(k)``.

        >>> import nnxlike as nnx
        >>> stream = nnx.Rngs(params=0).params
        >>> child = stream.fork()
        >>> child.tag, int(stream.count.value), int(child.count.value)
        ('params', 1, 0)
        """
        if split is not None:
            return self.split(split)
        return type(self)(self(), tag=self.tag)

    def split(self, k: int | tuple[int, ...]) -> RngStream:
        """A new stream holding ``k`` keys (one per ``vmap`` lane), split from a draw.

        >>> import nnxlike as nnx
        >>> lanes = nnx.Rngs(params=0).params.split(4)
        >>> lanes.key.value.shape, lanes.count.value.shape
        ((4,), (4,))
        """
        return type(self)(jax.random.split(self(), k), tag=self.tag)

    def broadcast(self, k: int | tuple[int, ...]) -> RngStream:
        """A new stream holding one draw repeated to shape ``k`` (same key per lane).

        >>> import nnxlike as nnx
        >>> same = nnx.Rngs(params=0).params.broadcast((2, 3))
        >>> same.key.value.shape
        (2, 3)
        >>> data = jax.random.key_data(same.key.value)
        >>> bool((data == data[:1, :1]).all())
        True
        """
        key = self()
        return type(self)(jnp.broadcast_to(key, _shape(k) + key.shape), tag=self.tag)

    def reseed(self, seed: Any) -> None:
        """Restart from ``seed`` itself (count zero): ``stream()`` is then
        ``fold_in(key(seed), 0)``. ``nnx.reseed`` derives the key as flax.nnx does.

        >>> import nnxlike as nnx
        >>> stream = nnx.Rngs(params=0).params
        >>> _ = stream()
        >>> stream.reseed(3)
        >>> int(stream.count.value)
        0
        """
        key = _as_key(seed)
        self.key.value = key
        self.count.value = jnp.zeros(key.shape, dtype=jnp.uint32)


# -- Rngs -----------------------------------------------------------------------------


def _per_stream(arg: Any, what: str) -> list[tuple[Callable, Any, Any]]:
    """``k`` or ``{filter: k}`` as ``[(predicate, filter, k)]``, first match wins."""
    from nnxlike._filters import to_predicate

    if arg is None or isinstance(arg, (int, np.integer, tuple)):
        arg = {...: arg}
    elif not isinstance(arg, Mapping):
        raise TypeError(
            f"{what}: expected an int, a tuple of ints, None or a mapping "
            f"{{filter: int | tuple | None}}, got {type(arg).__name__} {arg!r}."
        )
    return [(to_predicate(f), f, k) for f, k in arg.items()]


def _stream_matches(pred: Callable, path: tuple, stream: RngStream) -> bool:
    # A path string filter ('params') matches a stream's attribute name or its tag.
    return bool(pred((*path, stream.tag), stream))


class Rngs(_Samplers, Object):
    """A set of named random streams: ``Rngs(0)``, ``Rngs(params=0, dropout=1)``.

    ``rngs.params()`` draws from the ``params`` stream, ``rngs()`` from
    ``default``; a stream that does not exist falls back to ``default``. The
    ``jax.random`` shorthands draw from ``default``: ``rngs.normal((2, 3))``.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(0, dropout=1)
    >>> rngs.params().shape, rngs().dtype
    ((), key<fry>)
    >>> sorted(rngs), len(rngs)
    (['default', 'dropout'], 2)
    """

    def __init__(self, default: Any = None, /, **streams: Any):
        if default is not None:
            if isinstance(default, Mapping):
                streams = {**default, **streams}
            else:
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

    @classmethod
    def _of_streams(cls, streams: dict[str, RngStream]) -> Rngs:
        new = object.__new__(cls)
        for name, stream in streams.items():
            setattr(new, name, stream)
        return new

    def _stream(self, name: str) -> RngStream:
        d = self.__dict__
        stream = d.get(name)
        if stream is None:
            stream = d.get("default")
            if stream is None:
                raise AttributeError(
                    f"No RngStream named {name!r} found in Rngs, and no 'default' "
                    f"stream to fall back on (streams: {sorted(self)}). Create it: "
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

    def __contains__(self, name: Any) -> bool:
        return isinstance(self.__dict__.get(name), RngStream)

    def __iter__(self) -> Iterator[str]:
        for name, _ in self.items():
            yield name

    def __len__(self) -> int:
        return len(self.items())

    def items(self) -> list[tuple[str, RngStream]]:
        """``(name, stream)`` pairs in creation order."""
        return [(k, v) for k, v in self._nnx_children() if isinstance(v, RngStream)]

    def _map(self, arg: Any, what: str, method: str) -> Rngs:
        rules = _per_stream(arg, what)
        streams = {}
        for name, stream in self.items():
            for pred, _, k in rules:
                if _stream_matches(pred, (name,), stream):
                    if k is not None:
                        stream = getattr(stream, method)(k)
                    break
            streams[name] = stream
        # flax.nnx rebuilds every stream from its key: untouched ones restart at 0.
        return type(self)._of_streams(
            {n: RngStream(s.key.value, tag=n) for n, s in streams.items()}
        )

    def split(self, k: int | tuple[int, ...] | Mapping[Any, Any]) -> Rngs:
        """New Rngs whose streams hold ``k`` keys each: one per ``vmap`` lane.

        ``k`` may map filters to sizes (``None``: leave that stream whole).

        >>> import nnxlike as nnx
        >>> rngs = nnx.Rngs(params=1, dropout=2, noise=3)
        >>> new = rngs.split({"params": 5, "dropout": None, ...: (2, 5)})
        >>> new.params.key.value.shape, new.dropout.key.value.shape
        ((5,), ())
        >>> new.noise.key.value.shape
        (2, 5)
        """
        return self._map(k, "Rngs.split", "split")

    def broadcast(self, k: int | tuple[int, ...] | Mapping[Any, Any] | None) -> Rngs:
        """New Rngs whose streams hold one draw repeated to shape ``k``.

        >>> import nnxlike as nnx
        >>> rngs = nnx.Rngs(params=1, dropout=2)
        >>> new = rngs.broadcast({"params": 5, "dropout": None})
        >>> new.params.key.value.shape, new.dropout.key.value.shape
        ((5,), ())
        """
        return self._map(k, "Rngs.broadcast", "broadcast")

    def fork(
        self, *, split: int | tuple[int, ...] | Mapping[Any, Any] | None = None
    ) -> Rngs:
        """New independent Rngs: each stream seeded by one draw from this one.

        ``split=`` (flax.nnx's older form) splits the matching streams instead.

        >>> import nnxlike as nnx
        >>> rngs = nnx.Rngs(params=1, dropout=2)
        >>> new = rngs.fork()
        >>> int(rngs.params.count.value), int(new.params.count.value)
        (1, 0)
        """
        rules = [] if split is None else _per_stream(split, "Rngs.fork")
        streams = {}
        for name, stream in self.items():
            for pred, _, k in rules:
                if _stream_matches(pred, (name,), stream):
                    streams[name] = stream.fork(split=k)
                    break
            else:
                streams[name] = stream.fork()
        return type(self)._of_streams(streams)

    def reseed(self, **seeds: Any) -> None:
        """Restart the named streams from the seeds themselves (counters at zero).

        >>> import nnxlike as nnx
        >>> rngs = nnx.Rngs(params=0)
        >>> first = rngs.params()
        >>> rngs.reseed(params=0)
        >>> bool((jax.random.key_data(rngs.params()) ==
        ...       jax.random.key_data(first)).all())
        True
        """
        for name, seed in seeds.items():
            if name not in self:
                raise AttributeError(
                    f"reseed: Rngs has no stream {name!r}; streams: {list(self)}."
                )
            self.__dict__[name].reseed(seed)


# -- graph-wide helpers ---------------------------------------------------------------


def _streams(node: Any) -> Iterator[tuple[tuple, RngStream]]:
    for path, value in _graph.iter_graph(node):
        if isinstance(value, RngStream):
            yield path, value


def _map_streams(node: Any, fn: Callable[[tuple, RngStream], RngStream | None]) -> Any:
    """A copy of ``node`` in which ``fn(path, stream)`` replaced each stream.

    ``fn`` sees the caller's streams (so drawing from them advances the caller's
    counters) and returns the replacement, or None to keep an unchanged copy.
    """
    copy = _graph.clone(node)
    done: dict[int, Any] = {}

    def visit(orig: Any, new: Any, path: tuple) -> Any:
        if id(orig) in done:
            return done[id(orig)]
        if isinstance(orig, RngStream):
            replaced = fn(path, orig)
            done[id(orig)] = new if replaced is None else replaced
            return done[id(orig)]
        if isinstance(orig, Object):
            done[id(orig)] = new
            pairs = zip(orig._nnx_children(), new._nnx_children())
            items = [(k, visit(v, nv, (*path, k))) for (k, v), (_, nv) in pairs]
            if any(v is not nv for (_, v), (_, nv) in zip(items, new._nnx_children())):
                new._nnx_set_children(items)
            return new
        if isinstance(orig, (list, dict)):
            done[id(orig)] = new
            keys = range(len(orig)) if isinstance(orig, list) else list(orig)
            for k in keys:
                new[k] = visit(orig[k], new[k], (*path, k))
            return new
        if isinstance(orig, tuple):
            items = [
                visit(v, nv, (*path, i)) for i, (v, nv) in enumerate(zip(orig, new))
            ]
            return type(new)(*items) if hasattr(new, "_fields") else tuple(items)
        return new

    return visit(node, copy, ())


class SplitBackups:
    """The keys and counts a ``split_rngs``/``fork_rngs`` replaced, to put back.

    Iterate it for ``(stream, key, count)`` triples; ``nnx.restore_rngs(backups)``
    or leaving a ``with`` block restores them.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(0)
    >>> with nnx.split_rngs(rngs, splits=4) as backups:
    ...     rngs.default.key.value.shape, len(list(backups))
    ((4,), 1)
    >>> rngs.default.key.value.shape
    ()
    """

    def __init__(self, backups: list):
        self.backups = backups

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.backups)

    def restore(self) -> None:
        restore_rngs(self)

    def __enter__(self) -> SplitBackups:
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rngs(self)


def restore_rngs(backups: Any, /) -> None:
    """Put back the keys (and counts) saved by ``split_rngs``/``fork_rngs``.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> backups = nnx.fork_rngs(rngs)
    >>> model = nnx.Linear(2, 3, rngs=rngs)
    >>> nnx.restore_rngs(backups)
    >>> int(rngs.params.count.value)
    1
    """
    for backup in backups:
        stream = backup[0]
        stream.key.value = backup[1]
        if len(backup) == 3:
            stream.count.value = backup[2]


def backup_keys(node: Any, /, *, graph: bool | None = None) -> list:
    """``(stream, key)`` for every stream in ``node``, for ``restore_rngs``.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(0)
    >>> saved = nnx.backup_keys(rngs)
    >>> nnx.reseed(rngs, default=1)
    >>> nnx.restore_rngs(saved)
    >>> bool((jax.random.key_data(rngs.default.key.value) ==
    ...       jax.random.key_data(jax.random.key(0))).all())
    True
    """
    return [(stream, stream.key.value) for _, stream in _streams(node)]


def _in_place(graph: bool | None, graph_updates: bool | None) -> bool:
    if graph is None:
        graph = _config.set_graph_mode.current_value()
    if graph_updates is None:
        graph_updates = _config.set_graph_updates.current_value()
    return bool(graph and graph_updates)


def _scalars_only(path: tuple, key: jax.Array, shape: tuple) -> jax.Array:
    if shape != ():
        raise ValueError(
            f"reseed: the stream at path {path!r} holds keys of shape {shape} (a "
            "split stream), so one new key cannot replace them. Pass "
            "`policy='match_shape'` to split the new key to that shape, or a "
            "callable `(path, key, shape) -> keys`."
        )
    return key


def _match_shape(path: tuple, key: jax.Array, shape: tuple) -> jax.Array:
    return key if shape == () else jax.random.split(key, shape)


def reseed(
    node: Any,
    /,
    *,
    graph: bool | None = None,
    policy: str | Callable[[tuple, jax.Array, tuple], jax.Array] = "scalars_only",
    **stream_keys: Any,
) -> None:
    """Reseed every ``RngStream`` with one of the given tags anywhere in ``node``.

    As in flax.nnx, the streams tagged ``t`` are seeded with successive draws of
    ``nnx.Rngs(t=seed)``, so a Dropout built from ``nnx.Rngs(dropout=42)`` and
    reseeded with ``dropout=42`` replays its masks. ``policy`` says what to do
    with a split stream: ``'scalars_only'`` (an error), ``'match_shape'`` (split
    the new key to the stream's shape) or ``(path, key, shape) -> keys``.

    >>> import jax.numpy as jnp
    >>> import nnxlike as nnx
    >>> m = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y1 = m(jnp.ones(6))
    >>> nnx.reseed(m, dropout=0)
    >>> bool((m(jnp.ones(6)) == y1).all())
    True
    """
    if policy == "scalars_only":
        policy = _scalars_only
    elif policy == "match_shape":
        policy = _match_shape
    elif not callable(policy):
        raise ValueError(
            f"reseed: policy must be 'scalars_only', 'match_shape' or a callable "
            f"(path, key, shape) -> keys, got {policy!r}."
        )
    seeds = Rngs(**stream_keys)
    for path, stream in list(_streams(node)):
        if stream.tag in stream_keys:
            key = policy(path, seeds[stream.tag](), stream.key.value.shape)
            stream.key.value = key
            stream.count.value = jnp.zeros(key.shape, dtype=jnp.uint32)


def _split_keys(stream: RngStream, splits: Any, squeeze: bool) -> jax.Array:
    if stream.key.value.ndim != 0:
        raise ValueError(
            f"split_rngs: the {stream.tag!r} stream is already split (its key "
            f"has shape {stream.key.value.shape}); split it once."
        )
    key = jax.random.split(stream(), splits)
    return key[0] if squeeze else key


def _selected(node: Any, only: Any) -> list[tuple[tuple, RngStream]]:
    from nnxlike._filters import to_predicate

    pred = to_predicate(only)
    return [(p, s) for p, s in _streams(node) if _stream_matches(pred, p, s)]


def _split_in_place(node: Any, splits: Any, only: Any, squeeze: bool) -> SplitBackups:
    backups: list = []
    try:
        for _, stream in _selected(node, only):
            new = _split_keys(stream, splits, squeeze)
            backups.append((stream, stream.key.value, stream.count.value))
            stream.key.value = new
            stream.count.value = jnp.zeros(new.shape, dtype=jnp.uint32)
    except Exception:
        restore_rngs(backups)  # leave the earlier streams as they were
        raise
    return SplitBackups(backups)


def _split_copy(node: Any, splits: Any, only: Any, squeeze: bool) -> Any:
    chosen = {id(s) for _, s in _selected(node, only)}

    def replace(path: tuple, stream: RngStream) -> RngStream | None:
        if id(stream) not in chosen:
            return None
        return RngStream(_split_keys(stream, splits, squeeze), tag=stream.tag)

    return _map_streams(node, replace)


def _args_decorator(apply: Callable[[Any], Any], in_place: bool) -> Callable:
    """A decorator applying ``apply`` to a function's ``(args, kwargs)``."""

    def decorator(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if in_place:
                with apply((args, kwargs)):
                    return f(*args, **kwargs)
            args, kwargs = apply((args, kwargs))
            return f(*args, **kwargs)

        return wrapper

    return decorator


def split_rngs(
    node: Any = _MISSING,
    /,
    *,
    splits: int | tuple[int, ...],
    only: Any = ...,
    squeeze: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Give every selected ``RngStream`` ``splits`` keys, for ``vmap``/``scan`` lanes.

    flax.nnx's spelling, kept so its code runs unchanged. Each selected stream
    draws one key and splits it. With ``graph_updates=True`` (the default) the
    streams of ``node`` are changed in place and a ``SplitBackups`` is returned
    (a context manager; ``nnx.restore_rngs`` puts the old keys back, the streams
    advanced by one draw); with ``graph_updates=False`` (or ``graph=False``) a
    copy of ``node`` holding the split streams is returned. Without ``node`` it
    is a decorator that splits the function's arguments for the call. ``only``
    selects streams by name or tag (``'params'``) or any filter.

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
    >>> copy = nnx.split_rngs(rngs, splits=5, only="default", graph_updates=False)
    >>> copy.default.key.value.shape, rngs.default.key.value.shape
    ((5,), ())
    """
    in_place = _in_place(graph, graph_updates)
    if node is _MISSING:
        return _args_decorator(
            lambda x: split_rngs(
                x,
                splits=splits,
                only=only,
                squeeze=squeeze,
                graph=graph,
                graph_updates=in_place,
            ),
            in_place,
        )
    if squeeze and splits != 1:
        raise ValueError(
            f"split_rngs: squeeze=True removes a split axis of size 1, so it needs "
            f"splits=1, got splits={splits!r}."
        )
    if in_place:
        return _split_in_place(node, splits, only, squeeze)
    return _split_copy(node, splits, only, squeeze)


def fork_rngs(
    node: Any = _MISSING,
    /,
    *,
    split: int | tuple[int, ...] | Mapping[Any, Any] | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Fork every ``RngStream`` in ``node``: each restarts from one draw of its own.

    ``split`` (an int, a tuple, or ``{filter: k}``) splits the forked keys of the
    matching streams. In place with backups (``graph_updates=True``, the
    default), as a copy (``graph_updates=False``), or as a decorator, like
    ``split_rngs``.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> with nnx.fork_rngs(rngs, split={"params": 3}):
    ...     rngs.params.key.value.shape, rngs.dropout.key.value.shape
    ((3,), ())
    >>> rngs.params.key.value.shape
    ()
    """
    in_place = _in_place(graph, graph_updates)
    if node is _MISSING:
        return _args_decorator(
            lambda x: fork_rngs(x, split=split, graph=graph, graph_updates=in_place),
            in_place,
        )
    rules = _per_stream(split, "fork_rngs")

    def forked(path: tuple, stream: RngStream) -> RngStream | None:
        for pred, _, k in rules:
            if _stream_matches(pred, path, stream):
                return stream.fork(split=k)
        return None

    if not in_place:
        return _map_streams(node, forked)
    backups = []
    for path, stream in list(_streams(node)):
        new = forked(path, stream)
        if new is not None:
            backups.append((stream, stream.key.value, stream.count.value))
            stream.key.value = new.key.value
            stream.count.value = new.count.value
    return SplitBackups(backups)


def with_rngs(
    node: Any = _MISSING,
    /,
    *,
    split: int | tuple[int, ...] | Mapping[Any, Any] | None = None,
    fork: Any = None,
    broadcast: int | tuple[int, ...] | Mapping[Any, Any] | None = None,
    only: Any = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """A copy of ``node`` whose streams are split, broadcast or forked by filter.

    ``split``/``broadcast`` take a shape or ``{filter: shape}`` (first match
    wins); ``fork`` takes a filter or a list of filters. A stream matched by no
    rule is copied unchanged; the input's streams advance by one draw each time
    one of them is used. A stream matched by two specific rules (not ``...``) is
    an error. Without ``node`` it is a decorator. Unlike flax.nnx, which refuses
    ``graph_updates=True`` here, the result is always a copy.

    >>> import nnxlike as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> new = nnx.with_rngs(rngs, split={"params": 4}, fork=...)
    >>> new.params.key.value.shape, new.dropout.key.value.shape
    ((4,), ())
    >>> int(rngs.params.count.value), int(rngs.dropout.count.value)
    (1, 1)
    """
    if node is _MISSING:
        return _args_decorator(
            lambda x: with_rngs(
                x, split=split, fork=fork, broadcast=broadcast, only=only, graph=graph
            ),
            False,
        )
    from nnxlike._filters import to_predicate

    splits = [] if split is None else _per_stream(split, "with_rngs(split=)")
    broadcasts = [] if broadcast is None else _per_stream(broadcast, "with_rngs")
    if fork is None:
        fork = []
    elif isinstance(fork, str) or not isinstance(fork, (list, tuple)):
        fork = [fork]
    forks = [(to_predicate(f), f, None) for f in fork]
    only_pred = to_predicate(only)

    def update(path: tuple, stream: RngStream) -> RngStream | None:
        if not _stream_matches(only_pred, path, stream):
            return None
        found = {}
        for rule, rules in (
            ("split", splits),
            ("broadcast", broadcasts),
            ("fork", forks),
        ):
            for pred, filt, k in rules:
                if _stream_matches(pred, path, stream):
                    found[rule] = (filt, k)
                    break
        specific = [
            r for r, (filt, _) in found.items() if filt is not ... and filt is not True
        ]
        if len(found) > 1 and len(specific) > 1:
            lines = "\n".join(
                f"  - {r} matches filter {f!r}" for r, (f, _) in found.items()
            )
            raise ValueError(
                f"with_rngs: the RngStream at path {path} matches multiple rules:\n"
                f"{lines}\nMake the filters exclusive, e.g. "
                "`fork=nnx.Not('params')` next to `split={'params': 4}`."
            )
        if "split" in found:
            return stream.split(found["split"][1])
        if "broadcast" in found:
            return stream.broadcast(found["broadcast"][1])
        if "fork" in found:
            return stream.fork()
        return None

    return _map_streams(node, update)


def split_rngs_keys(rngs: Rngs | RngStream, n: int) -> Any:
    """Helper: the Rngs for ``n`` vmap lanes (used by transforms)."""
    return rngs.split(n)
