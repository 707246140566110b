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
# # From PyTorch to nnxlike: Titanic survival
#
# This tutorial trains the classic Kaggle Titanic classifier twice: once as you
# would write it in PyTorch (shown as text, PyTorch is not needed) and once with
# `nnxlike`, side by side. By the end you will have
#
# - loaded and preprocessed the data (statistics fitted on the training split
#   only) and held out a validation split,
# - written a `TitanicMLP(nnx.Module)` that reads like a `torch.nn.Module`,
# - trained it with a compiled `train_step` (`@nnx.jit` + `nnx.value_and_grad`)
#   and an `nnx.Optimizer`, with a progress bar,
# - measured how much `jit` buys (about two orders of magnitude here),
# - saved a plot and a Kaggle `submission.csv`,
# - and trained the same model again in the functional style
#   (`nnx.split`/`nnx.merge`, an `nnx.TrainState`, plain `jax.jit` + `jax.grad`) for
#   readers coming from Flax Linen.
#
# The only mental shift from PyTorch: the model is an ordinary mutable Python
# object, as in PyTorch, but the *training step* is compiled by JAX. `nnx.jit`
# takes care of moving the model's arrays into the compiled function and writing
# the new values back, so the loop looks like a PyTorch loop.
#
# It runs in well under two minutes on a 2-core CPU (`NNXLIKE_TUTORIAL_FAST=1`
# trains 40 epochs instead of 500, for smoke tests). Outputs go to
# `tutorials/outputs/` (on Kaggle to `/kaggle/working`, or `$NNXLIKE_TUTORIAL_OUT`).
# To run it on Kaggle, see the documentation's Kaggle page: the exported notebook
# starts with a cell that installs nnxlike.

# %%
import csv
import importlib.util
import os
import sys
import time
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a script or CI: draw into files only
    matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

# A widget bar where the notebook can draw one (Jupyter with ipywidgets, Kaggle),
# else the text bar: tqdm.auto would warn about the missing widgets instead.
notebook_bar = "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets")
if notebook_bar:
    from tqdm.notebook import tqdm
else:
    from tqdm import tqdm

import nnxlike as nnx
from nnxlike.datasets import load_titanic, preprocess_improved, train_val_split

try:  # next to this file; a notebook has no __file__: use the working directory
    _default_out = Path(__file__).resolve().parent / "outputs"
except NameError:
    _default_out = Path(
        "tutorials/outputs" if Path("tutorials").is_dir() else "outputs"
    )
# On Kaggle, data is mounted under /kaggle/input and the output folder (where
# "Submit" looks for submission.csv) is /kaggle/working. The two variables only
# exist so that the test suite can simulate Kaggle.
KAGGLE_INPUT = Path(os.environ.get("NNXLIKE_KAGGLE_INPUT", "/kaggle/input"))
KAGGLE_WORKING = Path(os.environ.get("NNXLIKE_KAGGLE_WORKING", "/kaggle/working"))
if KAGGLE_WORKING.is_dir():
    _default_out = KAGGLE_WORKING
OUT = Path(os.environ.get("NNXLIKE_TUTORIAL_OUT") or _default_out)
OUT.mkdir(parents=True, exist_ok=True)

SEED = 0
BATCH_SIZE = 64
EPOCHS = 40 if os.environ.get("NNXLIKE_TUTORIAL_FAST") == "1" else 500
print(f"jax {jax.__version__} on {jax.default_backend()} | files go to {OUT}")

# %% [markdown]
# ## 1. Data
#
# `load_titanic` looks for `train.csv`/`test.csv` in `$NNXLIKE_TITANIC_DIR`,
# Kaggle's `/kaggle/input/titanic`, then a user cache, and downloads a
# checksum-verified copy if none is found. On Kaggle the competition data may
# also be mounted one level deeper; `kaggle_titanic_dir` finds it there.
#
# `preprocess_improved` builds 19 features: standardised age, siblings, parents,
# log-fare and family size, an age-missing flag, and one-hot class, sex, port and
# title (Mr, Mrs, Miss, Master, Rare). Every statistic (medians, means, the most
# frequent port) is **fitted on the training split only** and then applied to the
# test split, so nothing leaks from test into training. We then hold out 20% of
# the labelled rows for validation.
#
# In PyTorch you would typically wrap the arrays in a `TensorDataset` and a
# `DataLoader`:
#
# ```python
# # PyTorch
# train_ds = TensorDataset(torch.tensor(x_train), torch.tensor(y_train))
# loader = DataLoader(train_ds, batch_size=64, shuffle=True)
# ```
#
# JAX has no data loader of its own; for data this small a five-line generator
# over numpy arrays does the same job (for big data, any loader that yields
# numpy arrays works: `torch.utils.data`, `tf.data`, `grain`).


# %%
def kaggle_titanic_dir(root=KAGGLE_INPUT):
    """A folder under Kaggle's input holding the Titanic train.csv and test.csv."""
    for pattern in ("titanic", "*", "*/*", "*/*/*"):
        for folder in sorted(root.glob(pattern)):
            train = folder / "train.csv"
            if train.is_file() and (folder / "test.csv").is_file():
                with open(train, encoding="utf-8-sig") as f:
                    if f.readline().startswith("PassengerId,Survived"):
                        return folder
    return None


data_dir = None if os.environ.get("NNXLIKE_TITANIC_DIR") else kaggle_titanic_dir()
train_csv = load_titanic("train", data_dir=data_dir)
test_csv = load_titanic("test", data_dir=data_dir)
x_all, y_all, x_test, feature_names = preprocess_improved(train_csv, test_csv)
x_train, y_train, x_val, y_val = train_val_split(x_all, y_all, 0.2, seed=SEED)
print(f"train {x_train.shape}, validation {x_val.shape}, test {x_test.shape}")
print("features:", ", ".join(feature_names))
print(f"survival rate in train: {y_train.mean():.3f}")


def batches(x, y, batch_size, rng):
    """Shuffled mini-batches, like ``DataLoader(..., shuffle=True)``."""
    perm = rng.permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        yield x[idx], y[idx]


# %% [markdown]
# ## 2. The model
#
# ```python
# # PyTorch
# class TitanicMLP(nn.Module):
#     def __init__(self, din):
#         super().__init__()
#         self.fc1 = nn.Linear(din, 32)
#         self.drop1 = nn.Dropout(0.01)
#         self.fc2 = nn.Linear(32, 16)
#         self.drop2 = nn.Dropout(0.01)
#         self.out = nn.Linear(16, 1)
#
#     def forward(self, x):
#         x = self.drop1(F.leaky_relu(self.fc1(x)))
#         x = self.drop2(F.leaky_relu(self.fc2(x)))
#         return self.out(x).squeeze(-1)
#
# torch.manual_seed(0)
# model = TitanicMLP(x_train.shape[1])
# ```
#
# The nnxlike version differs in three places:
#
# - `forward` is called `__call__`, and there is no `super().__init__()` to
#   remember;
# - layers take the input size explicitly (there is no lazy shape inference) and
#   a keyword-only `rngs`: randomness is never global. `nnx.Rngs(0)` replaces
#   `torch.manual_seed(0)`; its `params` stream initialises the weights and its
#   `dropout` stream feeds the dropout masks;
# - `nnx.Linear` stores its weight as `kernel` with shape `(in, out)`, the
#   transpose of PyTorch's `weight`, so the layer computes `x @ kernel + bias`.


# %%
class TitanicMLP(nnx.Module):
    def __init__(self, din: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(din, 32, rngs=rngs)
        self.drop1 = nnx.Dropout(0.01, rngs=rngs)
        self.fc2 = nnx.Linear(32, 16, rngs=rngs)
        self.drop2 = nnx.Dropout(0.01, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.drop1(nnx.leaky_relu(self.fc1(x)))
        x = self.drop2(nnx.leaky_relu(self.fc2(x)))
        return self.out(x).squeeze(-1)  # one logit per passenger


model = TitanicMLP(x_train.shape[1], rngs=nnx.Rngs(SEED))
print(model)

# %% [markdown]
# Printing a model shows every layer with its configuration and a summary of
# each array (shape, mean, spread), plus a parameter count on the first line.
# In a notebook, `nnx.display(model)` gives the same as an interactive tree.
#
# ## 3. Loss, optimizer and the two steps
#
# ```python
# # PyTorch
# loss_fn = nn.BCEWithLogitsLoss()
# optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
#
# def train_step(x, y):
#     optimizer.zero_grad()
#     loss = loss_fn(model(x), y)
#     loss.backward()
#     optimizer.step()
#     return loss.item()
#
# @torch.no_grad()
# def eval_step(x, y):
#     return ((model(x) > 0).float() == y).float().mean().item()
# ```
#
# In nnxlike:
#
# - `nnx.Optimizer(model, optax.adam(0.01), wrt=nnx.Param)` holds the optax
#   state for every `Param` of the model (`model.parameters()`);
# - `nnx.value_and_grad(loss_fn)(model, x, y)` returns the loss and the gradients
#   with respect to the model's `Param`s, as a `State` shaped like the model.
#   There is no `.grad` attribute to accumulate into, hence no `zero_grad()`;
# - `optimizer.update(model, grads)` is `optimizer.step()`: it changes the
#   model's parameters in place;
# - the eval step needs no `no_grad()`: gradients are only ever computed when you
#   ask for them with `nnx.grad`/`nnx.value_and_grad`;
# - `@nnx.jit` compiles the whole step, forward, backward and optimizer
#   update, into one XLA program. It is the counterpart of `torch.compile`, but
#   it is what you normally use, not an optional extra: without it, every JAX
#   operation is dispatched one by one from Python.

# %%
optimizer = nnx.Optimizer(model, optax.adam(0.01), wrt=nnx.Param)


def loss_fn(model, x, y):
    logits = model(x)
    return optax.sigmoid_binary_cross_entropy(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)  # in place, like optimizer.step()
    return loss


@nnx.jit
def eval_step(model, x, y):
    predicted = model(x) > 0  # logit > 0  <=>  probability > 0.5
    return jnp.mean(predicted == (y > 0.5))


# %% [markdown]
# ## 4. Training
#
# The loop is the PyTorch loop: `model.train()` switches dropout on,
# `model.eval()` switches it off (both set the `deterministic` flag of every
# `Dropout`, and would set `use_running_average` of a `BatchNorm`).
#
# ```python
# # PyTorch
# for epoch in range(500):
#     model.train()
#     for x, y in loader:
#         train_step(x, y)
#     model.eval()
#     val_acc = eval_step(x_val, y_val)
# ```
#
# A few details worth knowing:
#
# - `train_step` returns a JAX array; converting it with `float(...)` would wait
#   for the step to finish, so we keep the losses as arrays and convert them
#   once per epoch.
# - The first call traces and compiles the step (it takes a moment); every later
#   call with the same shapes reuses the compiled program. The last batch of each
#   epoch is smaller (713 = 11 × 64 + 9), so there are two compiled versions of
#   the step.
# - 500 epochs at learning rate 0.01 overfit a 713-row dataset: the validation
#   accuracy wanders by a few points from one epoch to the next. As PyTorch
#   users often do with `best = copy.deepcopy(model.state_dict())`, we keep the
#   parameters of the best validation epoch. `nnx.state(model, nnx.Param)` is a
#   `state_dict()`: like PyTorch's, it holds the model's own (live) Variables,
#   so it follows every later optimizer step. Keeping it needs a copy,
#   `nnx.clone(...)`, the `copy.deepcopy` of PyTorch (cheap: the new Variables
#   share the immutable JAX arrays). `nnx.update(model, best)` is
#   `load_state_dict`; given a live State instead of a copy it would restore
#   nothing, and nnxlike warns (`nnx.StaleStateWarning`).
#
# The progress bar is `tqdm`; in a log file (no terminal), or in a notebook
# without `ipywidgets`, it is replaced by a line every 100 epochs.

# %%
# A terminal, or a notebook that can draw widgets (Jupyter with ipywidgets, Kaggle)
interactive = sys.stderr.isatty() or bool(notebook_bar)
report_every = 100 if EPOCHS >= 100 else 10
data_rng = np.random.default_rng(SEED)
history = {"loss": [], "train_acc": [], "val_acc": []}
best_acc, best_epoch, best_params = -1.0, -1, None

start = time.perf_counter()
bar = tqdm(range(EPOCHS), desc="training", disable=not interactive)
for epoch in bar:
    model.train()
    losses = [
        train_step(model, optimizer, xb, yb)
        for xb, yb in batches(x_train, y_train, BATCH_SIZE, data_rng)
    ]
    model.eval()
    train_acc = float(eval_step(model, x_train, y_train))
    val_acc = float(eval_step(model, x_val, y_val))
    history["loss"].append(float(jnp.mean(jnp.stack(losses))))
    history["train_acc"].append(train_acc)
    history["val_acc"].append(val_acc)
    if val_acc > best_acc:
        best_acc, best_epoch = val_acc, epoch
        best_params = nnx.clone(nnx.state(model, nnx.Param))  # deepcopy(state_dict())
    bar.set_postfix(
        loss=f"{history['loss'][-1]:.3f}",
        train=f"{train_acc:.3f}",
        val=f"{val_acc:.3f}",
    )
    if not interactive and (epoch + 1) % report_every == 0:
        print(
            f"epoch {epoch + 1:3d}  loss {history['loss'][-1]:.4f}  "
            f"train acc {train_acc:.3f}  val acc {val_acc:.3f}",
            flush=True,
        )
bar.close()
jit_seconds = time.perf_counter() - start
steps = int(optimizer.step.value)
print(f"{steps} steps in {jit_seconds:.1f} s (including per-epoch evaluation)")

# %% [markdown]
# ## 5. Results
#
# We restore the best epoch's parameters with `nnx.update` and evaluate again.
# Picking the epoch on the validation split makes its accuracy a slightly
# optimistic estimate (the honest alternative is k-fold cross-validation, or a
# third split); the last epoch's accuracy is printed alongside.

# %%
final_val_acc = history["val_acc"][-1]
last_params = nnx.clone(nnx.state(model, nnx.Param))  # for section 9
nnx.update(model, best_params)  # load_state_dict(best)
model.eval()
eval_acc = float(eval_step(model, x_val, y_val))
majority = max(y_val.mean(), 1 - y_val.mean())
print(f"last epoch validation accuracy: {final_val_acc:.4f}")
print(f"eval accuracy: {eval_acc:.4f} (best epoch {best_epoch + 1} of {EPOCHS})")
print(f"always predicting the majority class would give {majority:.4f}")
assert eval_acc == best_acc
assert eval_acc >= 0.78, eval_acc
assert final_val_acc >= 0.70, final_val_acc

# %% [markdown]
# ## 6. How much does `jit` buy?
#
# `train_step.__wrapped__` is the undecorated Python function (as with
# `jax.jit` and `functools.wraps`). Run without compilation, nnxlike executes
# each JAX operation eagerly, like PyTorch does, but every operation is a
# separate dispatch from Python and one step is a few hundred of them (forward,
# backward, Adam for each parameter). That is roughly 100 times slower than the
# compiled step, so we time the eager version on **3 epochs only** and quote it
# per step and extrapolated to 500 epochs, instead of waiting for it.
#
# Both versions get one warm-up call first. In eager mode JAX compiles one small
# kernel per operation and shape, so the first eager call is slow. The jitted
# step was compiled in section 4 and is reused here even though the model and
# optimizer are new objects: `nnx.jit` compiles per *structure* (the GraphDef),
# not per object. (One catch: `optax.adam(0.01)` returns new functions at every
# call, and the optimizer's structure includes them, so we reuse
# `optimizer.tx` rather than building a second `optax.adam`, which would compile
# again.) The timing runs use full batches only, to keep a single shape.


# %%
def time_training(step_fn, epochs):
    m = TitanicMLP(x_train.shape[1], rngs=nnx.Rngs(SEED)).train()
    opt = nnx.Optimizer(m, optimizer.tx, wrt=nnx.Param)  # same tx: no recompile
    rng = np.random.default_rng(SEED)
    full = [(xb, yb) for xb, yb in batches(x_train, y_train, BATCH_SIZE, rng)]
    full = [(xb, yb) for xb, yb in full if len(xb) == BATCH_SIZE]
    start = time.perf_counter()
    jax.block_until_ready(step_fn(m, opt, *full[0]))  # warm-up: compiles
    first_call = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in full:
            loss = step_fn(m, opt, xb, yb)
    jax.block_until_ready(loss)
    return first_call, (time.perf_counter() - start) / (epochs * len(full))


jit_first, jit_per_step = time_training(train_step, epochs=10)
eager_first, eager_per_step = time_training(train_step.__wrapped__, epochs=3)
steps_per_epoch = -(-len(x_train) // BATCH_SIZE)
speedup = eager_per_step / jit_per_step
print(f"first call:  {jit_first:.3f} s with jit (compiled in section 4)")
print(f"             {eager_first:.3f} s without (compiles each operation)")
print(f"with jit:    {jit_per_step * 1e6:8.0f} us per step")
print(f"without jit: {eager_per_step * 1e6:8.0f} us per step (measured on 3 epochs)")
print(
    f"{EPOCHS} epochs: {jit_per_step * steps_per_epoch * EPOCHS:.1f} s with jit, "
    f"~{eager_per_step * steps_per_epoch * EPOCHS:.0f} s without (extrapolated); "
    f"jit is {speedup:.0f}x faster per step"
)
assert speedup > 5, speedup
assert jit_first < eager_first  # the compiled step was reused, not rebuilt

# %% [markdown]
# ## 7. Plot
#
# Training loss keeps going down and training accuracy keeps climbing, while
# validation accuracy reaches its level within the first epochs and then only
# wanders: the signature of overfitting on a small dataset.

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
epochs = np.arange(1, EPOCHS + 1)
ax_loss.plot(epochs, history["loss"])
ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", title="training loss")
ax_acc.plot(epochs, history["train_acc"], label="train")
ax_acc.plot(epochs, history["val_acc"], label="validation")
ax_acc.axvline(best_epoch + 1, color="gray", linestyle=":", label="best epoch")
ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.6, 1.0))
ax_acc.legend()
fig.tight_layout()
plot_path = OUT / "titanic_training.png"
fig.savefig(plot_path, dpi=100)
if "ipykernel" in sys.modules:
    plt.show()  # inline in a notebook
plt.close(fig)
print("saved", plot_path)

# %% [markdown]
# ## 8. Kaggle submission
#
# Predict on `test.csv` (preprocessed with the training statistics) and write
# `PassengerId,Survived` rows. On Kaggle, `submission.csv` in the output folder
# is what you submit.


# %%
@nnx.jit
def predict(model, x):
    return (model(x) > 0).astype(jnp.int32)


model.eval()
survived = np.asarray(predict(model, x_test))
submission_path = OUT / "submission.csv"
with open(submission_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["PassengerId", "Survived"])
    writer.writerows(zip(test_csv["PassengerId"].tolist(), survived.tolist()))

with open(submission_path) as f:
    rows = list(csv.reader(f))
print(f"wrote {submission_path}: {len(rows) - 1} rows, e.g. {rows[1:4]}")
print(f"predicted survival rate on test: {survived.mean():.3f}")
assert rows[0] == ["PassengerId", "Survived"]
assert len(rows) - 1 == 418
assert {r[1] for r in rows[1:]} <= {"0", "1"}

# %% [markdown]
# ## 9. The functional style, for Flax Linen readers
#
# Everything above mutates objects in place, and `nnx.jit` hides the boundary
# between Python objects and JAX's pure functions. That boundary can also be
# crossed by hand, which is what `nnx.jit` does internally:
#
# - `nnx.split(model, nnx.Param, ...)` returns the model's **GraphDef** (the
#   static structure: layer types, sizes, the dropout flags) and two **States**
#   (pytrees of arrays): the parameters and everything else (here, the dropout
#   RNG key and counter).
# - `nnx.merge(graphdef, params, other)` builds a new Module from them.
#
# An `nnx.TrainState` bundles `graphdef`, `params`, `other`, the optax transformation
# and its state into one immutable pytree, like `flax.training.train_state` does
# for Linen. Its `apply(params, x)` merges a model, calls it and returns the
# output together with the new `other` (the dropout RNG counter advances on every
# call, and that change must be carried forward explicitly). With it, the step
# is a pure function for plain `jax.jit` and `jax.grad`; the new state is
# returned, not written in place.

# %%
f_model = TitanicMLP(x_train.shape[1], rngs=nnx.Rngs(SEED)).train()
state = nnx.TrainState.create(f_model, optax.adam(0.01), wrt=nnx.Param)
print("GraphDef root:", state.graphdef.root_type.__name__)
print("params:", jax.tree.map(jnp.shape, state.params.to_pure_dict()))
print("other: ", [".".join(map(str, p)) for p, _ in state.other.flat_state()])


@jax.jit
def functional_train_step(state, x, y):
    def loss(params):
        logits, new_other = state.apply(params, x)
        return optax.sigmoid_binary_cross_entropy(logits, y).mean(), new_other

    grads, new_other = jax.grad(loss, has_aux=True)(state.params)
    return state.apply_gradients(grads, other=new_other)


@jax.jit
def functional_accuracy(state, x, y):
    model = state.model  # nnx.merge(state.graphdef, state.params, state.other)
    model.eval()  # a fresh Module: switching dropout off is local to this call
    return jnp.mean((model(x) > 0) == (y > 0.5))


rng = np.random.default_rng(SEED)
start = time.perf_counter()
for _ in range(EPOCHS):
    for xb, yb in batches(x_train, y_train, BATCH_SIZE, rng):
        state = functional_train_step(state, xb, yb)
functional_acc = float(functional_accuracy(state, x_val, y_val))
functional_seconds = time.perf_counter() - start
print(
    f"functional style: {int(state.step)} steps in {functional_seconds:.1f} s, "
    f"validation accuracy {functional_acc:.4f}"
)
assert int(state.step) == EPOCHS * steps_per_epoch
assert functional_acc >= 0.75, functional_acc

# %% [markdown]
# Same seed, same batches, same dropout streams: the functional run performs the
# very same computation as the object-oriented one of section 4, so it ends at
# the same parameters as that run's last epoch, and at the same accuracy. (On a
# CPU they agree exactly; on a GPU, rounding differences between the two compiled
# programs can grow over 6,000 steps, so the check below is made on CPU only.)

# %%
diff = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))),
    state.params.to_pure_dict(),
    last_params.to_pure_dict(),
)
max_diff = max(jax.tree.leaves(diff))
print(f"largest difference from the nnx.jit run's last epoch: {max_diff:.2e}")
print(f"last epoch accuracy: {final_val_acc:.4f} (nnx.jit) vs {functional_acc:.4f}")
if jax.default_backend() == "cpu":
    assert max_diff < 1e-3, max_diff

# %% [markdown]
# `state.model` merges a regular Module back, to use with everything above:

# %%
trained = state.model.eval()
assert isinstance(trained, TitanicMLP)
assert float(eval_step(trained, x_val, y_val)) == functional_acc

# %% [markdown]
# ## Summary
#
# | PyTorch | nnxlike |
# | --- | --- |
# | `class M(nn.Module)`, `forward` | `class M(nnx.Module)`, `__call__` |
# | `torch.manual_seed(0)` | `rngs=nnx.Rngs(0)` passed to layers |
# | `optim.Adam(model.parameters(), lr)` | `nnx.Optimizer(model, optax.adam(lr))` |
# | `zero_grad()`, `loss.backward()` | `nnx.value_and_grad(loss_fn)(model, x, y)` |
# | `optimizer.step()` | `optimizer.update(model, grads)` |
# | `torch.compile` (optional) | `@nnx.jit` (the normal way) |
# | `model.train()` / `model.eval()` | the same |
# | `state_dict()` / `load_state_dict(s)`| `nnx.state(model)` / `nnx.update(model, s)` |
#
# The checks below restate what this tutorial showed.

# %%
assert eval_acc >= 0.78  # the MLP beats the majority class by a wide margin
assert eval_acc > majority + 0.1
assert speedup > 5  # compiling the step is what makes JAX fast
assert (OUT / "titanic_training.png").stat().st_size > 0
assert len(rows) == 419  # header + 418 test passengers
assert functional_acc >= 0.75  # the functional version learns too
print("all checks passed")
