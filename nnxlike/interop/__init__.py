"""``nnxlike.interop``: weights to and from other frameworks.

``nnxlike.interop.torch`` reads and writes PyTorch state dicts (and the
``.safetensors`` format) without importing PyTorch. Its two main functions are
also ``nnx.load_torch_state_dict`` and ``nnx.to_torch_state_dict``.
"""
