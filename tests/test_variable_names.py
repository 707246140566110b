"""Tests for nnxlike._variable_names: Linen collection names <-> Variable kinds."""

from __future__ import annotations

import pytest

import nnxlike as nnx


def test_known_linen_names_map_both_ways():
    pairs = {
        "params": nnx.Param,
        "batch_stats": nnx.BatchStat,
        "cache": nnx.Cache,
        "intermediates": nnx.Intermediate,
        "perturbations": nnx.Perturbation,
    }
    for name, typ in pairs.items():
        assert nnx.variable_type_from_name(name) is typ
        assert nnx.variable_name_from_type(typ) == name


def test_unknown_names_and_types_need_allow_register():
    with pytest.raises(ValueError, match="not_a_collection is not registered"):
        nnx.variable_type_from_name("not_a_collection")
    made = nnx.variable_type_from_name(
        "t_counts", base=nnx.BatchStat, allow_register=True
    )
    assert made.__name__ == "t_counts" and issubclass(made, nnx.BatchStat)
    assert nnx.variable_type_from_name("t_counts") is made  # created once

    class TStat(nnx.Variable):
        pass

    with pytest.raises(ValueError, match="TStat is not registered"):
        nnx.variable_name_from_type(TStat)
    assert nnx.variable_name_from_type(TStat, allow_register=True) == "TStat"
    assert nnx.variable_type_from_name("TStat") is TStat


def test_register_refuses_silent_overwrite_and_non_variables():
    class TOther(nnx.Variable):
        pass

    with pytest.raises(ValueError, match="params already mapped to type Param"):
        nnx.register_variable_name("params", TOther)
    assert nnx.register_variable_name("t_other", TOther) is TOther
    assert nnx.register_variable_name("t_other", nnx.Cache, overwrite=True) is nnx.Cache
    with pytest.raises(TypeError, match="expected a Variable subclass"):
        nnx.register_variable_name("t_bad", int)
    assert nnx.variablelib.register_variable_name is nnx.register_variable_name
