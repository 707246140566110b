"""PyTorch weights in and out: state dicts, ``.safetensors`` and ``.npz`` files.

PyTorch is never imported: a state dict is a mapping of names to arrays (numpy,
JAX, or torch tensors, converted with ``.detach().cpu().numpy()``) or a path to a
``.safetensors`` or ``.npz`` file. A model built like its PyTorch twin, with the
same attribute names, loads with no configuration:

>>> import jax.numpy as jnp
>>> import nnxlike as nnx
>>> from nnxlike.interop.torch import load_torch_state_dict, to_torch_state_dict
>>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.relu,
...                        nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
>>> sd = to_torch_state_dict(model)  # names and layouts of torch's nn.Sequential
>>> {name: a.shape for name, a in sd.items()}
{'0.weight': (4, 3), '0.bias': (4,), '2.weight': (2, 4), '2.bias': (2,)}
>>> twin = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(7)), nnx.relu,
...                       nnx.Linear(4, 2, rngs=nnx.Rngs(8)))
>>> load_torch_state_dict(twin, sd)
LoadReport(missing_keys=[], unexpected_keys=[])
>>> bool(jnp.all(twin(jnp.ones((1, 3))) == model(jnp.ones((1, 3)))))
True

Layouts, torch -> ours (export applies the exact inverse):

| PyTorch | nnxlike |
| --- | --- |
| `Linear.weight` `(out, in)` | `Linear.kernel` `(in, out)`: transposed |
| `Conv{1,2,3}d.weight` `(out, in/G, *k)` | `Conv.kernel` `(*k, in/G, out)` |
| `ConvTranspose*d.weight` `(in, out/G, *k)` | `ConvTranspose.kernel` (below) |
| `BatchNorm*d`: weight, bias, running_mean/var | scale, bias, mean, var |
| `LayerNorm`, `GroupNorm`, `InstanceNorm`, `RMSNorm` | scale, bias |
| `Embedding.weight` | `Embed.embedding` (unchanged) |
| `PReLU.weight` `(1,)` | `PReLU.negative_slope` `()` |
| `LSTMCell`; `LSTM` (one layer, `_l0`) | `LSTMCell`, `OptimizedLSTMCell`; `RNN` |
| `GRUCell`; `GRU` (one layer, `_l0`) | `GRUCell`; `RNN(GRUCell)` |
| `RNNCell`; `RNN` (one layer, `_l0`) | `SimpleCell`; `RNN(SimpleCell)` |
| `LSTM(bidirectional=True)` (`_l0_reverse`) | `Bidirectional(RNN, RNN)` |
| `MultiheadAttention` | `MultiHeadAttention` |

Details:

- ConvTranspose: with `transpose_kernel=True` our kernel is `(*k, out/G, in)`,
  the permutation Conv uses; by default it is `(*k, in/G, out)`, applied
  unflipped, so the weight is regrouped and flipped in space.
- BatchNorm: `num_batches_tracked` is accepted and ignored (exported as 0).
  A `LayerNorm((3, 5))` weight loads into our flat `(15,)` scale.
- LSTM gates `i, f, g, o` become `ii, if_, ig, io` (input side) and `hi, hf, hg,
  ho` (recurrent side, with the bias); GRU gates are `r, z, n`. Torch's two
  biases are only ever summed, so our one bias is `bias_ih + bias_hh`. A GRU's
  `b_hn` sits inside the reset product and our `GRUCell` (as flax.nnx's) has no
  recurrent bias: it must be zero, else the load reports it.
- MultiheadAttention: `in_proj_weight` `[W_q; W_k; W_v]` becomes the query, key
  and value kernels `(E, H, D)` (or `q/k/v_proj_weight` when `kdim != E`),
  `out_proj` the `out` kernel `(H, D, E)`. Needs `qkv_features == out_features
  == in_features` and no grouped-query heads.

A Param the table does not cover (a custom `nn.Parameter`) converts as itself
under its attribute name. RNG state, caches and conv masks are not torch state
and are left alone.

Names: our attribute path joined with dots, as torch builds state-dict keys;
``nnx.Sequential``'s ``layers`` level is skipped because torch's ``Sequential``
holds its layers directly (``model.0.weight`` is our ``model.layers[0].kernel``),
while an ``nnx.List`` matches a ``ModuleList`` (``blocks.0.weight``). ``mapping``
overrides: a dict from a torch prefix to our module path (``{"module": ""}``
strips DataParallel's ``module.``, ``{"encoder.layer": "blocks"}`` renames, a value
of ``None`` drops the entries), or a callable from a torch name to our default
name (``None`` drops it). A two-layer torch LSTM loads into a list of two
``nnx.RNN`` with a callable that renames ``lstm.weight_ih_l1`` to
``lstms.1.weight_ih_l0``.

Not weights, so not converted (set them when building the model): BatchNorm
momentum (torch's ``m`` is our ``1 - m``), eps (torch ``1e-5``, flax ``1e-6``),
convolution padding (see ``tests/fixtures/make_torch_fixtures.py``), channel
order (torch is channels-first, we are channels-last), ``batch_first``.

Dtypes: values are cast to the dtype of the Variable they fill (the model's
``param_dtype``; BatchNorm statistics are float32). A float32 tensor loaded into
a bfloat16 model is rounded; floating data for an integer Variable (or the
reverse) is an error. Export keeps each Variable's dtype (bfloat16 as
``ml_dtypes.bfloat16``, which ``.safetensors`` stores as ``BF16``).

Exactness: import then export returns the torch arrays bit for bit, except where
our layout holds less than torch's: the two RNN biases come back as ``(sum,
zeros)`` (the same function), a ``(3, 5)`` norm weight comes back flat, and
``num_batches_tracked`` as 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnxlike.interop import _torch_io
from nnxlike.interop._safetensors import SafetensorsError as SafetensorsError
from nnxlike.interop._safetensors import load_safetensors as load_safetensors
from nnxlike.interop._safetensors import save_safetensors as save_safetensors
from nnxlike.interop._torch_io import LoadReport as LoadReport
from nnxlike.interop._torch_io import MappingLike
from nnxlike.interop._torch_io import TorchStateDictError as TorchStateDictError

__all__ = [
    "LoadReport",
    "SafetensorsError",
    "TorchStateDictError",
    "load_safetensors",
    "load_torch_state_dict",
    "save_safetensors",
    "to_torch_state_dict",
]


def load_torch_state_dict(
    model: Any,
    state_dict: Any,
    *,
    mapping: MappingLike = None,
    strict: bool = True,
) -> LoadReport:
    """Load PyTorch weights into ``model`` in place (``model.load_state_dict(sd)``).

    Every entry is checked before anything is written. With ``strict=True`` any
    unexpected entry, any parameter left without an entry, any entry of the wrong
    shape and any unconvertible value is listed, by name, in one
    ``TorchStateDictError``, and the model is left unchanged. With
    ``strict=False`` the entries that fit are loaded and the rest reported in the
    returned ``LoadReport``; wrong shapes and unconvertible values still raise
    (as torch's ``load_state_dict(strict=False)`` raises on size mismatches).

    >>> import numpy as np
    >>> import nnxlike as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> sd = {"weight": np.ones((3, 2), np.float32), "extra": np.zeros(1)}
    >>> load_torch_state_dict(model, sd, strict=False)
    LoadReport(missing_keys=['bias'], unexpected_keys=['extra'])
    >>> model.kernel.shape
    (2, 3)

    Args:
        model: the Module (or any nnxlike object graph) to fill.
        state_dict: a mapping of names to arrays (numpy, JAX, torch tensors), or
            the path of a ``.safetensors`` or ``.npz`` file.
        mapping: renames torch entries before matching: a dict from a torch
            name prefix to our module path (``"blocks/0"`` or ``"blocks.0"``;
            ``None`` drops the entries), or a callable from a torch name to the
            name the default naming gives our parameter (``None`` drops it).
        strict: require an exact match of names (see above).

    Returns:
        ``LoadReport(missing_keys, unexpected_keys)`` (both empty when strict).

    Raises:
        TorchStateDictError: the state dict does not fit; the message lists every
            problem and how to fix it.
        SafetensorsError: a ``.safetensors`` file is malformed.
    """
    return _torch_io.load(model, state_dict, mapping=mapping, strict=strict)


def to_torch_state_dict(
    model: Any, *, mapping: MappingLike = None
) -> dict[str, np.ndarray]:
    """The model's weights as a PyTorch state dict of numpy arrays.

    Names and layouts are those ``load_torch_state_dict`` reads, so
    ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``
    loads them into the PyTorch twin, and ``save_safetensors(path, sd)`` writes a
    file that ``safetensors.torch.load_file`` reads. Arrays are fresh, writable,
    C-contiguous copies in each Variable's dtype.

    >>> import nnxlike as nnx
    >>> conv = nnx.Conv(3, 8, kernel_size=(5, 5), rngs=nnx.Rngs(0))
    >>> {k: v.shape for k, v in to_torch_state_dict(conv).items()}
    {'weight': (8, 3, 5, 5), 'bias': (8,)}

    Args:
        model: the Module (or object graph) to export.
        mapping: a dict as for ``load_torch_state_dict`` (applied in reverse),
            or a callable from our default name to the torch name (``None``
            leaves the entry out).

    Raises:
        TorchStateDictError: a layer has no PyTorch counterpart (for example
            grouped-query ``MultiHeadAttention``), or two names collide.
    """
    return _torch_io.export(model, mapping=mapping)
