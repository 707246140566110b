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
# # State outside objects
#
# In PyTorch, state lives *inside* objects: a module holds its weights, an
# optimizer holds its momentum buffers, `torch` holds the random generator, and
# methods change them in place. JAX's transformations (`jit`, `grad`, `vmap`,
# `scan`) only understand **pure functions**: everything a function reads comes
# in through its arguments, everything it changes goes out through its return
# value. This tutorial practises that rewrite on three small examples and then
# shows the three ways nnxlike lets you hold training state:
#
# 1. by hand: `params` and `opt_state` pytrees passed in and out of a step;
# 2. an `nnx.TrainState`: the same, bundled into one immutable pytree;
# 3. an nnxlike `Module` + `nnx.Optimizer`: PyTorch-style objects, with
#    `nnx.jit` doing the passing in and out for you.
#
# All three fit `y = 3x + 1` with `optax.sgd(0.1, momentum=0.9)` and produce the
# same numbers, which we plot (loss, `w`, `b` and the momentum terms).

# %%
import os
import sys
from pathlib import Path
from typing import NamedTuple

import matplotlib

if "ipykernel" not in sys.modules:  # a script or CI: draw into files only
    matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import nnxlike as nnx

try:  # next to this file; a notebook has no __file__: use the working directory
    _default_out = Path(__file__).resolve().parent / "outputs"
except NameError:
    _default_out = Path(
        "tutorials/outputs" if Path("tutorials").is_dir() else "outputs"
    )
OUT = Path(os.environ.get("NNXLIKE_TUTORIAL_OUT") or _default_out)
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. A state machine, as an object and as a pure function
#
# A coin-operated turnstile: a coin unlocks it, a push lets one person through
# and locks it again. Written the object way:

# %%
COIN, PUSH = 0, 1


class Turnstile:
    def __init__(self):
        self.locked = True
        self.coins = 0
        self.passed = 0

    def step(self, event: int) -> bool:
        if event == COIN:
            self.coins += 1
            self.locked = False
        elif event == PUSH and not self.locked:
            self.passed += 1
            self.locked = True
        return self.locked


events = [PUSH, COIN, PUSH, PUSH, COIN, COIN, PUSH, COIN]
gate = Turnstile()
locked_trace = [gate.step(e) for e in events]
print("object:  locked after each event", locked_trace)
print(f"         coins={gate.coins} passed={gate.passed}")

# %% [markdown]
# The pure version takes the state as an argument and returns the new state
# together with the output. The state is an immutable `NamedTuple` of arrays (a
# pytree), and Python `if` on values becomes `jnp.where`, so that the function
# can be traced by `jit` and iterated by `jax.lax.scan`, JAX's compiled loop
# (`scan(f, init, xs)` calls `f(state, x)` for every `x` and carries the state
# along).


# %%
class TurnstileState(NamedTuple):
    locked: jax.Array
    coins: jax.Array
    passed: jax.Array


def turnstile_step(state: TurnstileState, event) -> tuple[TurnstileState, jax.Array]:
    coin = event == COIN
    goes_through = (event == PUSH) & ~state.locked
    new = TurnstileState(
        locked=jnp.where(coin, False, jnp.where(goes_through, True, state.locked)),
        coins=state.coins + coin,
        passed=state.passed + goes_through,
    )
    return new, new.locked


init = TurnstileState(jnp.array(True), jnp.array(0), jnp.array(0))
final, locked_pure = jax.jit(lambda s, es: jax.lax.scan(turnstile_step, s, es))(
    init, jnp.array(events)
)
print("pure:    locked after each event", locked_pure.tolist())
print(f"         coins={int(final.coins)} passed={int(final.passed)}")
assert locked_pure.tolist() == locked_trace
assert (int(final.coins), int(final.passed)) == (gate.coins, gate.passed)
assert bool(init.locked) and int(init.coins) == 0  # the input state is untouched

# %% [markdown]
# Nothing was mutated: `init` is still the initial state, so the same run can
# be replayed, vectorised over many turnstiles with `vmap`, or differentiated.
#
# ## 2. Random keys are state too
#
# A random walk in PyTorch draws from the global generator
# (`pos += torch.randn(())`). In JAX the key is part of the state: each step
# splits it, uses one half and carries the other forward.


# %%
class WalkState(NamedTuple):
    key: jax.Array
    position: jax.Array


def walk_step(state: WalkState, _) -> tuple[WalkState, jax.Array]:
    key, step_key = jax.random.split(state.key)
    position = state.position + jax.random.normal(step_key)
    return WalkState(key, position), position


@jax.jit
def walk(state: WalkState):
    return jax.lax.scan(walk_step, state, length=100)  # 100 steps


start = WalkState(jax.random.key(42), jnp.array(0.0))
end_a, path_a = walk(start)
end_b, path_b = walk(start)  # same input state: the very same walk
end_c, path_c = walk(end_a)  # continue from where the first walk ended
print("walk ends at", float(path_a[-1]), "then continues to", float(path_c[-1]))
assert jnp.array_equal(path_a, path_b)
assert not jnp.array_equal(path_a, path_c)

# %% [markdown]
# `nnx.Rngs` is this pattern packaged as an object: it holds a key and a counter
# in Variables, and `rngs.dropout()` derives a new key from them and increments
# the counter. Under `nnx.jit` the counter is state like any other and is
# written back after the call.
#
# ## 3. Training state, three ways
#
# The data: `y = 3x + 1` plus a little noise. The optimizer: SGD with learning
# rate 0.1 and momentum 0.9, whose state is one *momentum* (trace) array per
# parameter. We start from `w = b = 0` in all three versions and take 150
# full-batch steps.

# %%
key_x, key_noise = jax.random.split(jax.random.key(0))
x = jax.random.uniform(key_x, (128,), minval=-1.0, maxval=1.0)
y = 3.0 * x + 1.0 + 0.05 * jax.random.normal(key_noise, (128,))
tx = optax.sgd(0.1, momentum=0.9)
STEPS = 150

# %% [markdown]
# ### 3a. By hand: `params` and `opt_state` in, new ones out
#
# This is plain JAX and optax: the step is a pure function of
# `(params, opt_state, x, y)`.

# %%
params = {"w": jnp.array(0.0), "b": jnp.array(0.0)}
opt_state = tx.init(params)


def mse(params, x, y):
    return jnp.mean((params["w"] * x + params["b"] - y) ** 2)


@jax.jit
def step_by_hand(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(mse)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


by_hand = {"loss": [], "w": [], "b": [], "mom_w": [], "mom_b": []}
for _ in range(STEPS):
    params, opt_state, loss = step_by_hand(params, opt_state, x, y)
    momentum = opt_state[0].trace  # optax.sgd = chain(trace, scale)
    for name, value in [
        ("loss", loss),
        ("w", params["w"]),
        ("b", params["b"]),
        ("mom_w", momentum["w"]),
        ("mom_b", momentum["b"]),
    ]:
        by_hand[name].append(float(value))
print(f"by hand:     w={by_hand['w'][-1]:.4f} b={by_hand['b'][-1]:.4f}")

# %% [markdown]
# ### 3b. An `nnx.TrainState`
#
# The bookkeeping of 3a (which arrays go where) grows with the model. A
# `TrainState` bundles the split model (`graphdef`, `params`, `other`), the
# optax transformation and its state into one immutable pytree, as in Flax
# Linen. The model here is an `nnx.Linear(1, 1)` with a zero-initialised
# kernel; `state.apply(params, x)` merges a model from the GraphDef and the
# params, calls it, and also returns the (here empty) `other` state.
# `apply_gradients` returns a new TrainState; nothing is changed in place.

# %%
linear = nnx.Linear(1, 1, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
state = nnx.TrainState.create(linear, tx, wrt=nnx.Param)
print("params:", jax.tree.map(jnp.shape, state.params.to_pure_dict()))
xs, ys = x[:, None], y[:, None]


@jax.jit
def step_train_state(state, x, y):
    def loss_fn(params):
        pred, _ = state.apply(params, x)
        return jnp.mean((pred - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), loss


with_state = {"loss": [], "w": [], "b": [], "mom_w": [], "mom_b": []}
for _ in range(STEPS):
    state, loss = step_train_state(state, xs, ys)
    momentum = state.opt_state[0].trace
    for name, value in [
        ("loss", loss),
        ("w", state.params["kernel"].value[0, 0]),
        ("b", state.params["bias"].value[0]),
        ("mom_w", momentum["kernel"][0, 0]),
        ("mom_b", momentum["bias"][0]),
    ]:
        with_state[name].append(float(value))
print(f"TrainState:  w={with_state['w'][-1]:.4f} b={with_state['b'][-1]:.4f}")
assert int(state.step) == STEPS

# %% [markdown]
# ### 3c. A Module and an `nnx.Optimizer`
#
# The PyTorch way: the model and the optimizer are objects that keep their own
# state, and `optimizer.update(model, grads)` changes both in place. `nnx.jit`
# does the work of 3a for us: it takes the arrays out of the objects, calls the
# compiled pure function, and writes the results back into the same objects.

# %%
model = nnx.Linear(1, 1, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def step_objects(model, optimizer, x, y):
    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


with_objects = {"loss": [], "w": [], "b": [], "mom_w": [], "mom_b": []}
for _ in range(STEPS):
    loss = step_objects(model, optimizer, xs, ys)
    momentum = optimizer.opt_state_tree()[0].trace
    for name, value in [
        ("loss", loss),
        ("w", model.kernel.value[0, 0]),
        ("b", model.bias.value[0]),
        ("mom_w", momentum["kernel"][0, 0]),
        ("mom_b", momentum["bias"][0]),
    ]:
        with_objects[name].append(float(value))
print(f"objects:     w={with_objects['w'][-1]:.4f} b={with_objects['b'][-1]:.4f}")
assert int(optimizer.step.value) == STEPS

# %% [markdown]
# ## 4. The three runs side by side
#
# The loss falls, `w` and `b` overshoot and oscillate (that is momentum at work)
# and settle near 3 and 1, and the momentum terms decay to zero. The three
# curves of each panel lie on top of each other: the three styles are the same
# computation.

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
steps = np.arange(1, STEPS + 1)
runs = [("by hand", by_hand, "-"), ("TrainState", with_state, "--")]
runs.append(("Module + Optimizer", with_objects, ":"))
panels = [
    ("loss", ["loss"], "log"),
    ("w (target 3)", ["w"], "linear"),
    ("b (target 1)", ["b"], "linear"),
    ("momentum", ["mom_w", "mom_b"], "linear"),
]
for ax, (title, keys, scale) in zip(axes, panels):
    for label, hist, style in runs:
        for k in keys:
            suffix = f" ({k[-1]})" if len(keys) > 1 else ""
            ax.plot(steps, hist[k], style, label=label + suffix)
    ax.set(title=title, xlabel="step", yscale=scale)
axes[0].legend()
axes[3].legend(fontsize=7)
fig.tight_layout()
plot_path = OUT / "linear_regression_momentum.png"
fig.savefig(plot_path, dpi=90)
if "ipykernel" in sys.modules:
    plt.show()  # inline in a notebook
plt.close(fig)
print("saved", plot_path)

# %%
for hist in (by_hand, with_state, with_objects):
    assert abs(hist["w"][-1] - 3.0) < 0.05, hist["w"][-1]
    assert abs(hist["b"][-1] - 1.0) < 0.05, hist["b"][-1]
    assert hist["loss"][-1] < 0.01
    assert abs(hist["mom_w"][-1]) < 1e-2
for k in by_hand:
    np.testing.assert_allclose(with_state[k], by_hand[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(with_objects[k], by_hand[k], rtol=1e-4, atol=1e-5)
assert plot_path.stat().st_size > 0
print("all checks passed")
