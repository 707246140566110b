"""Tests for nnxlike._views: view, view_info, with_attributes, with_vars, vars_as."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxlike as nnx


class Block(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, deterministic=False, rngs=rngs)
        self.bn = nnx.BatchNorm(3, use_running_average=False, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.dropout(self.linear(x)))


class Flagged(nnx.Module):
    """A user Module with a mode flag but no set_view."""

    def __init__(self):
        self.w = nnx.Param(jnp.ones(()))
        self.deterministic = False


class Any_(nnx.Module):
    """set_view taking **kwargs: it consumes every key."""

    def __init__(self):
        self.seen = {}

    def set_view(self, **kwargs) -> None:
        self.seen = dict(kwargs)


# -- view ------------------------------------------------------------------------


def test_view_calls_set_view_and_shares_variables():
    block = Block(rngs=nnx.Rngs(0))
    ev = nnx.view(block, deterministic=True, use_running_average=True)
    assert ev is not block and ev.dropout is not block.dropout
    assert (ev.dropout.deterministic, ev.bn.use_running_average) == (True, True)
    assert (block.dropout.deterministic, block.bn.use_running_average) == (False, False)
    assert ev.linear.kernel is block.linear.kernel and ev.bn.mean is block.bn.mean
    # the eval view computes Linear then BatchNorm with the stored statistics
    # (mean 0, var 1, scale 1, bias 0), and Dropout is the identity
    x = jnp.arange(4.0).reshape(2, 2)
    k, b = block.linear.kernel[...], block.linear.bias[...]
    expected = (x @ k + b[None, :]) / jnp.sqrt(1.0 + 1e-5)
    np.testing.assert_allclose(ev(x), expected, rtol=1e-6, atol=1e-6)
    # a write through the original is seen by the view (same Variable)
    block.linear.bias[...] = jnp.full((3,), 10.0)
    np.testing.assert_allclose(
        ev(x), (x @ k + 10.0) / jnp.sqrt(1.0 + 1e-5), rtol=1e-6, atol=1e-5
    )


def test_view_only_selects_modules():
    block = Block(rngs=nnx.Rngs(0))
    ev = nnx.view(block, only=nnx.Dropout, deterministic=True)
    assert ev.dropout.deterministic is True
    assert ev.bn.use_running_average is False


def test_view_unused_key_raises_unless_told_not_to():
    block = Block(rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"Unused keys found in nnx.view: \['unknown'\]\. .*view_info"
    ):
        nnx.view(block, deterministic=True, unknown=True)
    ev = nnx.view(block, deterministic=True, unknown=True, raise_if_not_found=False)
    assert ev.dropout.deterministic is True
    # only= leaves no Module to take use_running_average
    with pytest.raises(ValueError, match=r"\['use_running_average'\]"):
        nnx.view(block, only=nnx.Dropout, use_running_average=True)


def test_view_set_view_with_var_keyword_takes_everything():
    m = nnx.Module()
    m.a = Any_()
    ev = nnx.view(m, anything=1, other="x")
    assert ev.a.seen == {"anything": 1, "other": "x"} and m.a.seen == {}


def test_view_warns_for_module_with_attribute_but_no_set_view():
    m = nnx.Module()
    m.drop = nnx.Dropout(0.5)
    m.mine = Flagged()
    with pytest.warns(
        nnx.ViewWarning, match=r"Flagged at mine has attribute\(s\) \['deterministic'\]"
    ):
        ev = nnx.view(m, deterministic=True)
    assert ev.drop.deterministic is True and ev.mine.deterministic is False
    # selecting on purpose: no warning (warnings are errors in this suite)
    ev = nnx.view(m, only=nnx.Dropout, deterministic=True)
    assert ev.drop.deterministic is True


def test_view_error_names_modules_without_set_view():
    m = nnx.Module()
    m.mine = Flagged()
    with pytest.raises(
        ValueError, match=r"Flagged at mine; set it with nnx.with_attributes"
    ):
        nnx.view(m, deterministic=True)


def test_view_tree_mode_and_shared_references():
    block = Block(rngs=nnx.Rngs(0))
    ev = nnx.view(block, deterministic=True, graph=False)
    assert ev.dropout.deterministic is True
    assert ev.linear.kernel is block.linear.kernel
    m = nnx.Module()
    m.a = m.b = nnx.Dropout(0.5)
    with pytest.raises(ValueError, match="nnx.view in tree mode"):
        nnx.view(m, deterministic=True, graph=False)
    ev = nnx.compat.view(m, deterministic=True)  # graph mode keeps the sharing
    assert ev.a is ev.b and ev.a.deterministic is True


def test_view_decode_creates_cache_on_the_view_only():
    mha = nnx.MultiHeadAttention(2, 4, decode=False, rngs=nnx.Rngs(0))
    dec = nnx.view(mha, decode=True, batch_size=(2, 3), max_length=5)
    assert dec.decode is True and mha.decode is False
    assert dec.cached_key.shape == (2, 3, 5, 2, 2)
    assert float(jnp.abs(dec.cached_value[...]).sum()) == 0.0
    assert int(dec.cache_index[...]) == 0 and mha.cached_key is None
    with pytest.raises(TypeError, match="'max_length' must be provided"):
        nnx.view(mha, decode=True, batch_size=2)


# -- view_info ---------------------------------------------------------------------


class TwoSpace(nnx.Module):
    def set_view(self, arg1: bool | None = None, arg2: int | None = None, **kwargs):
        """Example set_view docstring, flax's 2-space style.

        Args:
          arg1: The first argument.
          arg2: The second argument.
            This has two lines.
        """


class FourSpace(nnx.Module):
    def set_view(self, flag: bool = False, undocumented: int = 3) -> None:
        """Four-space style.

        Args:
            flag: turns it on.
                Second line.

        Returns:
            Nothing.
        """


def test_view_info_formats_signature_and_docstring():
    assert nnx.view_info(TwoSpace()) == (
        "TwoSpace:\n  arg1: bool | None = None\n    The first argument.\n"
        "  arg2: int | None = None\n    The second argument.\n    This has two lines."
    )
    assert nnx.view_info(FourSpace()) == (
        "FourSpace:\n  flag: bool = False\n    turns it on.\n    Second line.\n"
        "  undocumented: int = 3"
    )


def test_view_info_lists_each_class_once_sorted_and_filters():
    m = nnx.Module()
    m.b1, m.b2 = Block(rngs=nnx.Rngs(0)), Block(rngs=nnx.Rngs(1))
    info = nnx.view_info(m)
    assert info.count("BatchNorm:") == 1 and info.count("Dropout:") == 1
    assert info.index("BatchNorm:") < info.index("Dropout:")
    assert "use_running_average: bool | None = None" in info
    only = nnx.view_info(m, only=nnx.Dropout)
    assert only == "Dropout:\n  deterministic: bool | None = None\n" + (
        "    if True, disables dropout masking."
    )
    assert nnx.view_info(m, only=nnx.MultiHeadAttention) == ""
    assert nnx.compat.view_info(m) == info


# -- with_attributes ---------------------------------------------------------------


def test_with_attributes_sets_copies_only():
    block = Block(rngs=nnx.Rngs(0))
    new = nnx.with_attributes(block, deterministic=True, use_running_average=True)
    assert (new.dropout.deterministic, new.bn.use_running_average) == (True, True)
    assert (block.dropout.deterministic, block.bn.use_running_average) == (False, False)
    assert new.linear.kernel is block.linear.kernel
    # plain attributes, no set_view needed
    m = nnx.Module()
    m.mine = Flagged()
    assert nnx.with_attributes(m, deterministic=True).mine.deterministic is True
    assert m.mine.deterministic is False


def test_with_attributes_filter_and_errors():
    block = Block(rngs=nnx.Rngs(0))
    new = nnx.with_attributes(block, only=nnx.Dropout, deterministic=True, rate=0.25)
    assert new.dropout.rate == 0.25 and new.bn.use_running_average is False
    with pytest.raises(
        ValueError,
        match=r"with_attributes: Could not find at least one instance of the "
        r"following attributes: \['unknown'\]",
    ):
        nnx.with_attributes(block, deterministic=True, unknown=True)
    new = nnx.with_attributes(
        block, deterministic=True, unknown=True, raise_if_not_found=False
    )
    assert new.dropout.deterministic is True and not hasattr(new, "unknown")
    # a method is not an attribute to set
    with pytest.raises(ValueError, match=r"\['eval'\]"):
        nnx.with_attributes(block, eval=1)
    with pytest.raises(ValueError, match=r"\['eval'\]"):
        block.set_attributes(eval=1)
    assert callable(block.eval)


# -- with_vars / vars_as -----------------------------------------------------------


class Two(nnx.Module):
    def __init__(self):
        self.a = nnx.Param(jnp.asarray(1.0))
        self.b = nnx.BatchStat(jnp.asarray(2.0))


def test_with_vars_ref_copies_only_changed_variables():
    m = Two()
    r = nnx.with_vars(m, ref=True)
    assert r.a.ref and r.b.ref and not m.a.ref
    assert isinstance(r.a.get_raw_value(), jax.Ref)
    assert float(r.a[...]) == 1.0 and float(r.b[...]) == 2.0
    r2 = nnx.with_vars(r, hijax=True, only=nnx.BatchStat)
    assert r2.b.hijax and not r2.a.hijax and r2.a.ref
    assert r2.a is r.a and r2 is not r  # unchanged Variables are shared
    r3 = nnx.with_vars(r2, ref=True)  # nothing differs: nothing copied
    assert r3.a is r2.a and r3.b is r2.b


def test_with_vars_list_root_and_path_filter():
    node = [nnx.Variable(1.0), nnx.Variable(2.0)]
    out = nnx.with_vars(node, ref=True, only=lambda path, x: path[0] == 0)
    assert isinstance(out, list)
    assert isinstance(out[0].get_raw_value(), jax.Ref)
    assert out[1] is node[1] and isinstance(out[1].get_raw_value(), float)


def test_with_vars_refuses_shared_variables_unless_allowed():
    m = Two()
    m.c = m.a
    with pytest.raises(
        ValueError, match=r"Found duplicate at paths:\n  ---\n  a\n  c\n  ---\n"
    ):
        nnx.with_vars(m, ref=True)
    out = nnx.with_vars(m, ref=True, only=nnx.BatchStat)  # the shared one is left
    assert out.b.ref and out.a is m.a
    out = nnx.with_vars(m, ref=True, allow_duplicates=True)
    assert out.a is out.c and out.a.ref and out.a is not m.a


def test_vars_as_is_deprecated_with_vars():
    with pytest.warns(DeprecationWarning, match="nnx.with_vars"):
        out = nnx.vars_as(Two(), ref=True, only=nnx.Param)
    assert out.a.ref and not out.b.ref


# -- compat ------------------------------------------------------------------------


def test_compat_cached_partial_runs_under_tree_mode():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    model.shared = model.kernel  # needs graph mode

    @nnx.compat.jit
    def forward(m, x):
        return x @ m.kernel[...] + m.bias[None, :]

    x = jnp.ones((1, 2))
    with nnx.set_graph_mode(False):
        y = nnx.compat.cached_partial(forward, model)(x)
    np.testing.assert_allclose(y, x @ model.kernel[...] + model.bias[None, :])
