# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # JAX in 15 minutes (for PyTorch users)
#
# nnxlike gives you PyTorch-style objects, but underneath everything is JAX.
# Five facts about JAX explain almost everything that will surprise you:
#
# 1. arrays are **immutable**: you never write into one, you make a new one;
# 2. randomness takes an explicit **key**, and the same key gives the same numbers;
# 3. `jax.grad` differentiates **functions**, not tensors;
# 4. `jax.vmap` turns a function of one example into a function of a batch;
# 5. `jax.jit` compiles a whole function into one fast XLA program.
#
# Each section ends with assertions; the file runs top to bottom as a script.

# %%
import time

import jax
import jax.numpy as jnp

print("jax", jax.__version__, "on", jax.default_backend())

# %% [markdown]
# ## 1. Immutable arrays
#
# `jax.numpy` mirrors `numpy` (and most of `torch`'s tensor API), but a JAX array
# can not be modified in place: there is no `x[0] = 1`, no `x.add_(1)`.
# `x.at[index].set(value)` returns a **new** array with that entry changed
# (`.add`, `.multiply`, `.min`, `.max` work the same way). Inside a compiled
# function XLA turns this into an in-place update when the old array is not used
# any more, so it costs nothing.

# %%
x = jnp.arange(5.0)
try:
    x[0] = 10.0
except TypeError as e:
    print("TypeError:", str(e).splitlines()[0])

y = x.at[0].set(10.0)
z = x.at[1:3].add(100.0)
print("x:", x)
print("y:", y)
print("z:", z)
assert x[0] == 0.0  # x is unchanged
assert y[0] == 10.0 and z[1] == 101.0 and z[3] == 3.0

# %% [markdown]
# In nnxlike, a model's weights live in `Variable`s (`nnx.Param`, ...). A Variable
# is a mutable box around an immutable array: `param.value = new_array` swaps the
# array inside. That is how nnxlike Modules get PyTorch-like in-place semantics on
# top of immutable arrays.

# %% [markdown]
# ## 2. Explicit random keys
#
# PyTorch has a global generator (`torch.manual_seed(0)`); every call to
# `torch.randn` advances it. JAX has no hidden state: a random function takes a
# **key**, and the same key always gives the same numbers. To get new numbers,
# **split** the key into new keys and never reuse a key you have split.

# %%
key = jax.random.key(0)
a = jax.random.normal(key, (3,))
b = jax.random.normal(key, (3,))
print("same key, same numbers:", a, b)
assert jnp.array_equal(a, b)

key, subkey = jax.random.split(key)  # the usual idiom: keep one, use one
c = jax.random.normal(subkey, (3,))
print("split key, new numbers:", c)
assert not jnp.array_equal(a, c)

keys = jax.random.split(key, 4)  # several at once, e.g. one per layer
print("4 keys ->", keys.shape)
assert keys.shape == (4,)

# %% [markdown]
# This makes every random computation reproducible and parallel-safe, at the
# cost of passing keys around. nnxlike's `nnx.Rngs(0)` does the bookkeeping for
# you: `rngs.params()` returns a fresh key each call, derived from the seed and a
# counter stored in a Variable.

# %% [markdown]
# ## 3. `jax.grad` differentiates functions
#
# In PyTorch, gradients are attached to tensors (`requires_grad`,
# `loss.backward()`, `x.grad`). In JAX, `jax.grad(f)` is a new *function* that
# returns the derivative of `f` with respect to its first argument. There is
# nothing to zero and nothing stored on the arrays.


# %%
def f(x):
    return x**3 + 2 * x


df = jax.grad(f)
d2f = jax.grad(jax.grad(f))  # derivatives compose
print("f'(2) =", df(2.0), " f''(2) =", d2f(2.0))
assert df(2.0) == 3 * 2.0**2 + 2
assert d2f(2.0) == 6 * 2.0

# %% [markdown]
# The argument can be any **pytree** (nested dicts, lists, tuples of arrays), and
# the gradient has the same structure. This is how parameters are usually passed
# in plain JAX:

# %%
params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
x_batch = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
y_batch = jnp.array([1.0, 2.0, 3.0])


def mse(params, x, y):
    pred = x @ params["w"] + params["b"]
    return jnp.mean((pred - y) ** 2)


loss, grads = jax.value_and_grad(mse)(params, x_batch, y_batch)
print("loss:", float(loss))
print("dloss/dw:", grads["w"], " dloss/db:", grads["b"])
residual = x_batch @ params["w"] + params["b"] - y_batch
assert jnp.allclose(grads["w"], 2 * x_batch.T @ residual / 3)
assert jnp.allclose(grads["b"], 2 * residual.mean())

# %% [markdown]
# nnxlike's `nnx.grad(loss_fn)(model, ...)` is the same idea for objects: it
# differentiates with respect to the model's `Param`s and returns the gradients
# as a `State` shaped like the model.

# %% [markdown]
# ## 4. `jax.vmap`: write for one example, run on a batch
#
# `jax.vmap(f)` maps `f` over a leading axis, without a Python loop. A classic use
# that is awkward in PyTorch: **per-example gradients**, one gradient per row of
# the batch, by mapping `grad` over the examples.


# %%
def predict_one(params, x):  # one example: x has shape (2,)
    return x @ params["w"] + params["b"]


batched = jax.vmap(predict_one, in_axes=(None, 0))  # params shared, x mapped
print("batched predictions:", batched(params, x_batch))
assert jnp.allclose(batched(params, x_batch), x_batch @ params["w"] + params["b"])


def loss_one(params, x, y):
    return (predict_one(params, x) - y) ** 2


per_example = jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0))(
    params, x_batch, y_batch
)
print("per-example grads of w:", per_example["w"].shape)
assert per_example["w"].shape == (3, 2)
# Their mean is the gradient of the mean loss:
assert jnp.allclose(per_example["w"].mean(0), grads["w"])

# %% [markdown]
# ## 5. `jax.jit`: compile the whole function
#
# Without `jit`, each `jnp` operation is sent to the device one at a time from
# Python, like PyTorch's eager mode. `jax.jit` traces the function once per
# input shape and dtype, hands the whole computation to the XLA compiler (which
# fuses the small operations together) and reuses the compiled program on every
# later call.
#
# Tracing means the Python body runs once with abstract values: a `print` inside
# runs only while tracing, and Python `if` on array *values* is not allowed
# (use `jnp.where` or `jax.lax.cond`).


# %%
def many_small_ops(x):
    for _ in range(30):
        x = jnp.tanh(x) * 1.01 + 0.1 * jnp.sin(x)
    return x.sum()


traces = []


@jax.jit
def compiled(x):
    traces.append(x.shape)  # runs only while tracing
    return many_small_ops(x)


x = jnp.ones((100, 100))
compiled(x).block_until_ready()  # first call: trace + compile
compiled(x + 1).block_until_ready()  # same shape: reuses the program
compiled(jnp.ones((10, 10))).block_until_ready()  # new shape: traced again
print("traced for shapes:", traces)
assert traces == [(100, 100), (10, 10)]


def best_time(fn, x, repeats=20):
    fn(x).block_until_ready()  # warm up (and compile)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


eager_t = best_time(many_small_ops, x)
jit_t = best_time(compiled, x)
print(f"eager: {eager_t * 1e6:.0f} us, jit: {jit_t * 1e6:.0f} us")
print(f"speed-up from jit: {eager_t / jit_t:.1f}x")
assert jnp.allclose(many_small_ops(x), compiled(x), rtol=1e-5)
assert jit_t < eager_t

# %% [markdown]
# `nnx.jit` is `jax.jit` for functions that take nnxlike objects: it hands the
# model's arrays to the compiled program and writes the new values back into
# the model afterwards. The train step of every tutorial is wrapped in it.
#
# ## Recap
#
# | PyTorch | JAX |
# | --- | --- |
# | `x[0] = 1`, `x.add_(1)` | `x = x.at[0].set(1)`, `x = x + 1` |
# | `torch.manual_seed(0)` | `key = jax.random.key(0)` |
# | `torch.randn(3)` | `jax.random.normal(key, (3,))`, split the key next time |
# | `loss.backward()`, `w.grad` | `jax.grad(loss_fn)(params)` |
# | a Python loop over examples | `jax.vmap(f)` |
# | `torch.compile(f)` | `jax.jit(f)` |

# %%
print("all checks passed")
