"""Multi-device checks for ``tests/test_pmap.py``, run in a subprocess.

Usage: ``python tests/pmap_worker.py pmap``. The case prints one line
``PMAP {json}`` of measured facts; the test asserts on them. ``main`` sets up 8
simulated CPU devices before it imports JAX, so importing this module (as
pytest's ``--doctest-modules`` does) has no side effects.
"""

from __future__ import annotations

import sys

from multidevice import DEVICES, worker_main


def case_pmap() -> dict:
    """An ensemble of Linear layers, one per device, against plain jax.pmap."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import nnxlike as nnx

    axes = nnx.StateAxes({(nnx.Param, nnx.RngState): 0, ...: None})

    @nnx.split_rngs(splits=DEVICES)
    @nnx.pmap(in_axes=(axes,), out_axes=axes, axis_size=DEVICES)
    def create(rngs):
        return nnx.Linear(3, 4, rngs=rngs)

    model = create(nnx.Rngs(0))
    kernels = np.asarray(model.kernel[...])
    x = jnp.arange(DEVICES * 2 * 3, dtype=jnp.float32).reshape(DEVICES, 2, 3)

    total = nnx.Variable(jnp.zeros(()))  # broadcast in, the same on every device

    @nnx.pmap(in_axes=(axes, None, 0), axis_name="d")
    def forward(model, total, x):
        y = model(x)
        total[...] = total[...] + jax.lax.psum(y.sum(), "d")
        return y

    y = forward(model, total, x)
    want = jax.pmap(lambda k, b, x: x @ k + b[None])(
        model.kernel[...], model.bias[...], x
    )
    return {
        "kernel_shape": list(kernels.shape),
        "distinct_kernels": len({kernels[i].tobytes() for i in range(DEVICES)}),
        "max_abs_diff": float(np.max(np.abs(np.asarray(y) - np.asarray(want)))),
        "total": float(total[...]),
        "want_total": float(np.asarray(want).sum()),
        "y_devices": len(y.sharding.device_set),
    }


def main(argv: list[str]) -> int:
    return worker_main(argv, {"pmap": case_pmap}, "PMAP")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
