"""Tests for nnxlike._filters: every filter form and combinator."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import nnxlike as nnx
from nnxlike.filterlib import to_predicate


class MyParam(nnx.Param):
    pass


P = nnx.Param(0.0)
B = nnx.BatchStat(0.0)
M = MyParam(0.0)
VS = nnx.Param(0.0)


def test_type_filter_matches_kind_and_subclasses():
    pred = to_predicate(nnx.Param)
    assert pred(("w",), P) and pred(("w",), M) and pred(("w",), VS)
    assert not pred(("w",), B)
    assert not pred(("w",), 1.0)
    assert to_predicate(MyParam)(("w",), M) and not to_predicate(MyParam)(("w",), P)
    assert to_predicate(nnx.Variable)(("w",), B)


def test_type_filter_matches_non_variable_instances():
    # set_attributes(Norm, ...) filters Modules by type
    m = nnx.Module()
    assert to_predicate(nnx.Module)((), m)
    assert nnx.OfType(nnx.Module)((), m)


def test_string_filter_matches_a_path_component():
    pred = to_predicate("kernel")
    assert pred(("layers", 0, "kernel"), P)
    assert not pred(("layers", 0, "bias"), P)
    assert not pred(("kernels",), P)


def test_glob_filter_matches_the_joined_path():
    pred = to_predicate("layers/*/kernel")
    assert pred(("layers", 0, "kernel"), P)
    assert not pred(("layers", 0, "bias"), P)
    assert not pred(("kernel",), P)
    assert to_predicate("*bias")(("a", "b", "bias"), P)


@pytest.mark.parametrize(
    "f, expected", [(..., True), (True, True), (None, False), (False, False)]
)
def test_constant_filters(f, expected):
    pred = to_predicate(f)
    assert pred(("a",), P) is expected and pred((), 1) is expected


def test_callable_filter_is_used_as_is():
    def f(path, value):
        return len(path) == 2

    assert to_predicate(f) is f


def test_tuple_and_list_mean_any():
    for f in ((nnx.BatchStat, "bias"), [nnx.BatchStat, "bias"]):
        pred = to_predicate(f)
        assert pred(("bn", "mean"), B)
        assert pred(("linear", "bias"), P)
        assert not pred(("linear", "kernel"), P)


def test_combinators():
    assert nnx.All(nnx.Param, "w")(("w",), P)
    assert not nnx.All(nnx.Param, "w")(("v",), P)
    assert nnx.Any(nnx.BatchStat, "w")(("w",), P)
    assert not nnx.Any(nnx.BatchStat, "w")(("v",), P)
    assert nnx.Not(nnx.Param)(("w",), B) and not nnx.Not(nnx.Param)(("w",), P)
    assert nnx.PathContains(0)(("layers", 0), P)
    assert not nnx.PathContains("x")(("layers", 0), P)
    assert nnx.Everything()((), None) and not nnx.Nothing()((), None)
    assert nnx.All()(("x",), P) and not nnx.Any()(("x",), P)
    nested = nnx.All(nnx.Not(nnx.BatchStat), nnx.Any("a", "b"))
    assert nested(("a",), P) and not nested(("a",), B) and not nested(("c",), P)


def test_filter_objects_pass_through_to_predicate():
    f = nnx.Not(nnx.Param)
    assert to_predicate(f) is f


def test_filter_equality_hash_and_repr():
    assert nnx.Any(nnx.Param, "a") == nnx.Any(nnx.Param, "a")
    assert nnx.Any(nnx.Param) != nnx.All(nnx.Param)
    assert hash(nnx.All(nnx.Param)) == hash(nnx.All(nnx.Param))
    assert nnx.Not("a") == nnx.Not("a") and hash(nnx.Not("a")) == hash(nnx.Not("a"))
    assert nnx.Everything() == nnx.Everything() and nnx.Nothing() == nnx.Nothing()
    assert nnx.Everything() != nnx.Nothing()
    assert len({nnx.Everything(), nnx.Everything(), nnx.Nothing()}) == 2
    assert nnx.OfType(nnx.Param) == nnx.OfType(nnx.Param)
    assert nnx.PathContains("a") == nnx.PathContains("a")
    assert repr(nnx.Any("a", "b")) == "Any('a', 'b')"
    assert repr(nnx.All("a")) == "All('a')"
    assert repr(nnx.Not("a")) == "Not('a')"
    assert (
        repr(nnx.Everything()) == "Everything()" and repr(nnx.Nothing()) == "Nothing()"
    )


@pytest.mark.parametrize("bad", [3, 2.5, object()])
def test_invalid_filter_error(bad):
    with pytest.raises(
        TypeError, match=r"Invalid filter .* of type .*A filter is a Variable type"
    ):
        to_predicate(bad)


def test_filters_drive_state_and_split():
    class Model(nnx.Module):
        def __init__(self):
            self.layers = [nnx.Module(), nnx.Module()]
            for layer in self.layers:
                layer.kernel = nnx.Param(jnp.ones(1))
                layer.bias = MyParam(jnp.zeros(1))
            self.bn = nnx.BatchStat(jnp.zeros(1))

    m = Model()
    paths = lambda s: s.flat_state().paths  # noqa: E731
    assert paths(nnx.state(m, "layers/*/kernel")) == (
        ("layers", 0, "kernel"),
        ("layers", 1, "kernel"),
    )
    assert paths(nnx.state(m, MyParam)) == (
        ("layers", 0, "bias"),
        ("layers", 1, "bias"),
    )
    assert paths(nnx.state(m, nnx.All(nnx.Param, nnx.PathContains(1)))) == (
        ("layers", 1, "kernel"),
        ("layers", 1, "bias"),
    )
    _, bias, rest = nnx.split(m, "bias", ...)
    assert paths(bias) == (("layers", 0, "bias"), ("layers", 1, "bias"))
    assert paths(rest) == (("layers", 0, "kernel"), ("layers", 1, "kernel"), ("bn",))


def test_with_tag_selects_one_rng_stream():
    rngs = nnx.Rngs(params=0, dropout=1)
    picked = nnx.state(rngs, nnx.WithTag("dropout"))
    assert sorted(picked.flat_dict()) == [("dropout", "count"), ("dropout", "key")]
    rest = nnx.state(rngs, nnx.Not(nnx.WithTag("dropout")))
    assert sorted(rest.flat_dict()) == [("params", "count"), ("params", "key")]
    # Values without a tag never match (a Param has none).
    assert not nnx.WithTag("params")(("w",), nnx.Param(0.0))


def test_path_in_matches_exact_paths_only():
    m = nnx.Sequential(
        nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1))
    )
    f = nnx.filterlib.PathIn(("layers", 0, "kernel"), ("layers", 1, "bias"))
    assert sorted(nnx.state(m, f).flat_dict()) == [
        ("layers", 0, "kernel"),
        ("layers", 1, "bias"),
    ]
    assert f == nnx.filterlib.PathIn(("layers", 1, "bias"), ("layers", 0, "kernel"))
    assert hash(f) == hash(nnx.filterlib.PathIn(*f.paths))


def test_filters_to_predicates_refuses_ellipsis_before_the_end():
    with pytest.raises(
        ValueError, match=r"`\.\.\.` or `True` can only be used as the last filters"
    ):
        nnx.filterlib.filters_to_predicates((..., nnx.Param))
    preds = nnx.filterlib.filters_to_predicates((nnx.Param, ...))
    assert [p(("w",), nnx.Param(0.0)) for p in preds] == [True, True]
    model = nnx.Dict(a=nnx.Param(1.0), b=nnx.BatchStat(2.0))
    with pytest.raises(ValueError, match=r"got Ellipsis at index 0"):
        nnx.split(model, ..., nnx.Param)  # split applies the same rule
    with pytest.raises(ValueError, match=r"got True at index 1"):
        nnx.split(model, nnx.Param, True, nnx.BatchStat)
    with pytest.raises(ValueError, match="Non-exhaustive filters, got a non-empty"):
        nnx.split(model, nnx.Param)
