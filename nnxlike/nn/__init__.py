"""``nnxlike.nn``: the layer library (also re-exported at the top level)."""

from nnxlike.nn import dtypes as dtypes
from nnxlike.nn import initializers as initializers
from nnxlike.nn.activations import *  # noqa: F403
from nnxlike.nn.attention import MultiHeadAttention as MultiHeadAttention
from nnxlike.nn.attention import combine_masks as combine_masks
from nnxlike.nn.attention import dot_product_attention as dot_product_attention
from nnxlike.nn.attention import (
    dot_product_attention_weights as dot_product_attention_weights,
)
from nnxlike.nn.attention import make_attention_mask as make_attention_mask
from nnxlike.nn.attention import make_causal_mask as make_causal_mask
from nnxlike.nn.conv import Conv as Conv
from nnxlike.nn.conv import ConvDimensionWarning as ConvDimensionWarning
from nnxlike.nn.conv import ConvTranspose as ConvTranspose
from nnxlike.nn.initializers import Initializer as Initializer
from nnxlike.nn.linear import Einsum as Einsum
from nnxlike.nn.linear import Embed as Embed
from nnxlike.nn.linear import Linear as Linear
from nnxlike.nn.linear import LinearGeneral as LinearGeneral
from nnxlike.nn.lora import LoRA as LoRA
from nnxlike.nn.lora import LoRALinear as LoRALinear
from nnxlike.nn.lora import LoRAParam as LoRAParam
from nnxlike.nn.normalization import BatchNorm as BatchNorm
from nnxlike.nn.normalization import GroupNorm as GroupNorm
from nnxlike.nn.normalization import InstanceNorm as InstanceNorm
from nnxlike.nn.normalization import LayerNorm as LayerNorm
from nnxlike.nn.normalization import RMSNorm as RMSNorm
from nnxlike.nn.normalization import SpectralNorm as SpectralNorm
from nnxlike.nn.normalization import WeightNorm as WeightNorm
from nnxlike.nn.pooling import avg_pool as avg_pool
from nnxlike.nn.pooling import max_pool as max_pool
from nnxlike.nn.pooling import min_pool as min_pool
from nnxlike.nn.pooling import pool as pool
from nnxlike.nn.recurrent import RNN as RNN
from nnxlike.nn.recurrent import Bidirectional as Bidirectional
from nnxlike.nn.recurrent import GRUCell as GRUCell
from nnxlike.nn.recurrent import LSTMCell as LSTMCell
from nnxlike.nn.recurrent import OptimizedLSTMCell as OptimizedLSTMCell
from nnxlike.nn.recurrent import RNNCellBase as RNNCellBase
from nnxlike.nn.recurrent import SimpleCell as SimpleCell
from nnxlike.nn.stochastic import Dropout as Dropout
