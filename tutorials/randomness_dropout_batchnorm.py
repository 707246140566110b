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
# # Randomness, dropout and BatchNorm
#
# PyTorch keeps one global random generator (`torch.manual_seed`) and flips layers
# between training and evaluation with `model.train()` / `model.eval()`. nnxlike keeps
# the second habit and replaces the first with something explicit:
#
# - **named random streams** in an `nnx.Rngs` object (`rngs.params()`,
#   `rngs.dropout()`), each a key plus a counter held in Variables;
# - **train/eval** flags on the layers that behave differently (`Dropout.deterministic`,
#   `BatchNorm.use_running_average`), flipped by `model.train()` / `model.eval()`;
# - **views**: a second set of module objects sharing every Variable, with other flags;
# - **reseeding** a whole model's streams, and **ensembles** built with `nnx.vmap`.

# %%
import jax
import jax.numpy as jnp
import numpy as np

import nnxlike as nnx

# %% [markdown]
# ## Named streams
#
# `nnx.Rngs(params=0, dropout=1)` holds two independent streams. Each call draws a
# fresh key and advances that stream's counter; a stream that does not exist falls
# back to `default` if there is one.

# %%
rngs = nnx.Rngs(params=0, dropout=1)
k1, k2 = rngs.params(), rngs.params()
print(
    "two draws differ:",
    bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any()),
)
print(
    "params counter:",
    int(rngs.params.count.value),
    "dropout counter:",
    int(rngs.dropout.count.value),
)
assert int(rngs.params.count.value) == 2 and int(rngs.dropout.count.value) == 0

only_default = nnx.Rngs(0)
only_default.dropout()  # no 'dropout' stream: falls back to 'default'
assert int(only_default.default.count.value) == 1

# %% [markdown]
# Because the counter is a Variable, drawing inside a compiled function does not
# recompile and the caller's counter advances: the next call gets new numbers.


# %%
@nnx.jit
def noise(rngs, shape_like):
    return jax.random.normal(rngs.dropout(), shape_like.shape)


a = noise(rngs, jnp.zeros(3))
b = noise(rngs, jnp.zeros(3))
print(
    "jitted draws differ:",
    bool((a != b).any()),
    "counter:",
    int(rngs.dropout.count.value),
)
assert bool((a != b).any()) and int(rngs.dropout.count.value) == 2

# %% [markdown]
# ## Dropout and BatchNorm, train and eval


# %%
class Net(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.linear(x)))))


model = Net(rngs=nnx.Rngs(0))
x = jax.random.normal(jax.random.key(42), (16, 4))

model.train()
y1, y2 = model(x), model(x)
print("train mode, two calls differ (dropout):", bool((y1 != y2).any()))
assert bool((y1 != y2).any())
print("BatchNorm running mean moved:", np.round(np.asarray(model.bn.mean.value[:3]), 3))
assert float(jnp.abs(model.bn.mean.value).sum()) > 0

model.eval()
e1, e2 = model(x), model(x)
print("eval mode, two calls equal:", bool((e1 == e2).all()))
assert bool((e1 == e2).all())
model.train()

# %% [markdown]
# ## Views: evaluate while training, without flipping the model
#
# `nnx.view(model, deterministic=True, use_running_average=True)` builds new module
# objects that share every Variable with `model`. Training `model` changes what the
# view computes; the view's flags stay as set.

# %%
eval_view = nnx.view(model, deterministic=True, use_running_average=True)
assert eval_view.linear.kernel is model.linear.kernel
before = eval_view(x)
model.linear.kernel.value = model.linear.kernel.value * 2.0
after = eval_view(x)
print("view sees the training model's new weights:", bool((before != after).any()))
assert bool((before != after).any()) and model.drop.deterministic is False

# %% [markdown]
# ## Reseeding
#
# `nnx.reseed(model, dropout=7)` restarts every `dropout` stream in the model, so a
# run can be replayed exactly.

# %%
nnx.reseed(model, dropout=7)
r1 = model(x)
nnx.reseed(model, dropout=7)
r2 = model(x)
print("same seed, same dropout masks:", bool((r1 == r2).all()))
# (In training mode BatchNorm normalises with the batch's own statistics, so the
# running averages it updated in between do not change the output.)
assert bool((r1 == r2).all())
mask1 = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=7))(jnp.ones(8))
mask2 = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=7))(jnp.ones(8))
assert bool((mask1 == mask2).all())

# %% [markdown]
# ## Ensembles with `vmap`
#
# Under `nnx.vmap`, a random stream that is broadcast to every lane is split per lane
# by default, so an ensemble built in one call has different members. (flax.nnx's
# default is the opposite; pass `split_rngs=False` for identical members.)


# %%
@nnx.vmap(in_axes=None, out_axes=0, axis_size=5)
def make_ensemble(rngs):
    return nnx.Linear(4, 1, rngs=rngs)


ensemble = make_ensemble(nnx.Rngs(0))
print("ensemble kernels:", ensemble.kernel.shape)
assert ensemble.kernel.shape == (5, 4, 1)
assert bool((ensemble.kernel.value[0] != ensemble.kernel.value[1]).any())


@nnx.vmap(in_axes=(0, None), out_axes=0)
def ensemble_predict(member, x):
    return member(x)


preds = ensemble_predict(ensemble, x)
print(
    "predictions per member:", preds.shape, "spread:", float(preds.std(axis=0).mean())
)
assert preds.shape == (5, 16, 1)

same = nnx.vmap(in_axes=None, out_axes=0, axis_size=3, split_rngs=False)(
    lambda rngs: nnx.Linear(4, 1, rngs=rngs)
)(nnx.Rngs(0))
assert bool((same.kernel.value[0] == same.kernel.value[1]).all())
print("split_rngs=False gives identical members")
