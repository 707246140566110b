"""Tests for nnxlike._summary: tabulate's rows, counts and FLOPs against hand counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnxlike as nnx

PLAIN = {"force_terminal": False, "no_color": True, "width": 400}


class Block(nnx.Module):
    def __init__(self, din, dout, rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.bn = nnx.BatchNorm(dout, rngs=rngs)

    def forward(self, x):
        return nnx.relu(self.bn(self.linear(x)))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.block1 = Block(3, 5, rngs)
        self.block2 = Block(5, 2, rngs)

    def __call__(self, x):
        return self.block2.forward(self.block1.forward(x))


def _rows(table: str) -> list[list[str]]:
    """The first line of each body row, split into stripped cells."""
    lines = table.splitlines()
    out, start = [], False
    for i, line in enumerate(lines):
        if line.startswith(("┡", "├")):
            start = True
            if i + 1 < len(lines) and lines[i + 1].startswith("│"):
                out.append([c.strip() for c in lines[i + 1].strip("│").split("│")])
    return out[:-1] if start else out  # the last one is the footer


def test_rows_paths_shapes_and_counts_match_hand_counts():
    net = Net(nnx.Rngs(0))
    table = nnx.tabulate(net, jnp.ones((4, 3)), console_kwargs=PLAIN)
    rows = _rows(table)
    assert [r[:4] for r in rows] == [
        ["", "Net", "float32[4,3]", "float32[4,2]"],
        ["block1/forward", "Block", "float32[4,3]", "float32[4,5]"],
        ["block1/linear", "Linear", "float32[4,3]", "float32[4,5]"],
        ["block1/bn", "BatchNorm", "float32[4,5]", "float32[4,5]"],
        ["block2/forward", "Block", "float32[4,5]", "float32[4,2]"],
        ["block2/linear", "Linear", "float32[4,5]", "float32[4,2]"],
        ["block2/bn", "BatchNorm", "float32[4,2]", "float32[4,2]"],
    ]
    header = [c.strip() for c in table.splitlines()[2].strip("┃").split("┃")]
    assert header == ["path", "type", "inputs", "outputs", "BatchStat", "Param"]
    # Param: kernels 3*5 + 5*2, biases 5 + 2, BatchNorm scale+bias 2*(5 + 2)
    params = 3 * 5 + 5 * 2 + 5 + 2 + 2 * (5 + 2)
    stats = 2 * (5 + 2)  # BatchNorm mean+var
    assert rows[0][4:] == [f"{stats} ({4 * stats} B)", f"{params} ({4 * params} B)"]
    assert f"Total Parameters: {params + stats} ({4 * (params + stats)} B)" in table
    assert "kernel: float32[3,5]" in table and "mean: float32[5]" in table


def test_depth_shared_modules_and_caller_untouched():
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 2, rngs=rngs)
            self.again = self.lin
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.again(self.lin(x)))

    model = Shared(nnx.Rngs(0))
    before = nnx.clone(model)
    table = nnx.tabulate(model, jnp.ones((1, 2)), console_kwargs=PLAIN)
    # the shared Linear is one object called twice with the same input shapes
    assert [r[0] for r in _rows(table)] == ["", "lin", "drop"]
    footer = next(line for line in table.splitlines() if "Total │" in line)
    assert "│ 6 (24 B)" in footer  # the shared kernel and bias counted once
    shallow = nnx.tabulate(model, jnp.ones((1, 2)), depth=0, console_kwargs=PLAIN)
    assert [r[0] for r in _rows(shallow)] == [""]
    for a, b in zip(nnx.state(model).flat_state(), nnx.state(before).flat_state()):
        x, y = a[1].value, b[1].value
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert type(model).__call__ is Shared.__dict__["__call__"]  # methods restored
    assert "forward" not in nnx.Linear.__dict__


def test_flops_columns_match_the_matmul_count():
    class MatMul(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((4, 8)))

        def __call__(self, x):
            return x @ self.w.value

    table = nnx.tabulate(
        MatMul(),
        jnp.ones((3, 4)),
        compute_flops=True,
        compute_vjp_flops=True,
        console_kwargs=PLAIN,
    )
    header = [c.strip() for c in table.splitlines()[2].strip("┃").split("┃")]
    assert header[:6] == ["path", "type", "inputs", "outputs", "flops", "vjp_flops"]
    (row,) = _rows(table)
    assert int(row[4]) == 2 * 3 * 4 * 8  # one multiply-add per (i, k, j)
    assert int(row[5]) >= int(row[4])  # the VJP has the forward and two matmuls


def test_inputs_show_structures_and_keywords():
    class Model(nnx.Module):
        def sub(self, foo, x, *, flag=None):
            return x

        def __call__(self, x):
            self.sub({}, x, flag=None)
            return self.sub([x, 2], x, flag={})

    table = nnx.tabulate(Model(), jnp.zeros((1, 8)), console_kwargs=PLAIN)
    assert "- {}" in table and "flag: None" in table
    assert "- - float32[1,8]" in table and "flag: {}" in table
