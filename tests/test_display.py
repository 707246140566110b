"""Tests for nnxlike._display: treescope renderings asserted by substrings."""

from __future__ import annotations

import jax.numpy as jnp
import treescope

import nnxlike as nnx


class Block(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((3, 3)))
        self.n = 3


class Model(nnx.Module):
    def __init__(self):
        block = Block()
        self.first = block
        self.second = block  # shared
        self.stats = nnx.BatchStat(jnp.zeros(2, jnp.int32))


def test_repr_is_treescope_text():
    m = Model()
    assert repr(m) == treescope.render_to_text(m, ignore_exceptions=True)


def test_first_line_has_class_counts_and_bytes():
    first = repr(Model()).splitlines()[0]
    assert first.startswith("Model(")
    assert "Param: 9 (36 B)" in first
    assert "BatchStat: 2 (8 B)" in first


def test_counts_shared_variables_once_and_humanise_bytes():
    m = nnx.Module()
    m.big = nnx.Param(jnp.zeros((16, 128)))
    m.alias = m.big
    first = repr(m).splitlines()[0]
    assert "Param: 2,048 (8.0 KB)" in first


def test_children_statics_and_nested_values_render():
    text = treescope.render_to_text(Model())
    assert "first=Block(" in text
    assert "n=3" in text
    assert "w=Param(" in text
    assert "stats=BatchStat(" in text


def test_shared_submodule_is_marked_the_second_time():
    text = repr(Model())
    assert text.count("first=Block(") == 1
    assert "second=<shared Block: same object as .first>" in text
    assert "Repeated python obj" not in text  # treescope's own comment is not added
    assert "second=Block(" not in text


def test_shared_variable_is_marked():
    m = nnx.Module()
    m.a = nnx.Param(jnp.ones(1))
    m.b = m.a
    assert "b=<shared Param: same object as .a>" in repr(m)
    m.inner = nnx.Module()
    m.inner.c = m.a
    assert "c=<shared Param: same object as .a>" in repr(m)


def test_cycle_renders_without_recursing():
    a = nnx.Module()
    a.child = nnx.Module()
    a.child.parent = a
    text = repr(a)
    assert "child=Module(" in text
    # treescope itself marks the back edge as a cyclic reference
    assert "parent=<cyclic reference to Module" in text


def test_variable_renders_kind_value_and_metadata():
    text = repr(nnx.Param(jnp.ones(2), sharding=("a", None)))
    assert text.startswith("Param(")
    assert "value=" in text and "sharding=('a', None)" in text


def test_state_renders_with_counts():
    state = nnx.state(Model())
    text = treescope.render_to_text(state)
    first = text.splitlines()[0]
    assert first.startswith("State(")
    assert "Param: 9 (36 B)" in first and "BatchStat: 2 (8 B)" in first
    assert "first=State(" in text and "second" not in text  # stored once
    assert repr(nnx.Cache(1.0)).startswith("Cache(")


def test_graphdef_renders_structure():
    text = repr(nnx.graphdef(Model()))
    assert text.startswith("GraphDef(")
    assert "Model #0" in text
    assert "first: Block #1" in text
    assert "w: Param #2" in text
    assert "n: 3" in text
    assert "second: <shared #1>" in text
    lines = repr(nnx.graphdef({"l": [jnp.ones(1), (1, "a")]})).splitlines()
    assert "  dict #0" in lines
    assert "    l: list #1" in lines
    assert "      0: <array>" in lines
    assert "      1: tuple" in lines
    assert "        1: 'a'" in lines


def test_graphdef_shows_variable_metadata():
    m = nnx.Module()
    m.w = nnx.Param(jnp.ones(1), tag="t")
    assert "w: Param #1 {'tag': 't'}" in repr(nnx.graphdef(m))


def test_containers_and_rngs_render():
    assert repr(nnx.List([1, Block()])).startswith("List( # Param: 9")
    assert repr(nnx.Dict(a=1)).startswith("Dict(")
    rngs = nnx.Rngs(0)
    text = repr(rngs)
    assert "RngState: 2 (12 B)" in text.splitlines()[0]
    assert "tag='default'" in text


def test_object_without_variables_has_no_comment():
    m = nnx.Module()
    m.n = 1
    assert repr(m) == "Module(n=1)"


def test_display_prints_outside_a_notebook(capsys):
    m = Model()
    nnx.display(m, nnx.graphdef(m))
    out = capsys.readouterr().out
    assert out.startswith("Model( # Param: 9 (36 B)")
    assert "GraphDef(" in out
    assert out.endswith(")\n")
