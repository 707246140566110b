"""``nnxlike.nn``: the layer library (also re-exported at the top level)."""

from nnxlike.nn import initializers as initializers
from nnxlike.nn.activations import *  # noqa: F403
from nnxlike.nn.linear import Linear as Linear
from nnxlike.nn.stochastic import Dropout as Dropout
