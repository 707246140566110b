"""flax's ``flax.nnx.transforms`` package path, for code that imports from it.

Only ``general`` (``split_inputs`` / ``merge_inputs``) lives here; every lifted
transform is ``nnx.jit``, ``nnx.vmap``, ... on the top-level package.

>>> from nnxlike.transforms import general
>>> callable(general.split_inputs), callable(general.merge_inputs)
(True, True)
"""
