"""Train-step overhead of ``nnx.jit`` against plain ``jax.jit`` + optax (and flax.nnx).

Run:  python benchmarks/step.py [--repeats 7] [--calls 500] [--json out.json]
      [--cases titanic/train,deep/empty,deep/train]

Every variant runs in this one process, interleaved round by round; the figure
per variant is the median over rounds of the mean time per call, and each ratio
is against the plain-JAX variant of the same model measured in the same rounds.
flax.nnx variants run only when flax is importable (its fastest path,
``nnx.cached_partial``, included). Never timed in tests.

Models:
  titanic   8->32->16->1 MLP, dropout 0.01, leaky ReLU, sigmoid cross-entropy,
            Adam(0.01), batch 64 (the tutorial's step)
  deep      50 blocks of Linear(16,16)+BatchNorm (300 Variables): an "empty" step
            (no math, pure framework overhead) and a real train step
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnxlike as nnx  # noqa: E402

try:
    from flax import nnx as fnnx  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - optional
    fnnx = None


# -- models, written once against a module namespace (nnxlike or flax.nnx) -------


def titanic_model(ns, seed=0):
    class TitanicMLP(ns.Module):
        def __init__(self, rngs):
            self.l1 = ns.Linear(8, 32, rngs=rngs)
            self.l2 = ns.Linear(32, 16, rngs=rngs)
            self.l3 = ns.Linear(16, 1, rngs=rngs)
            self.drop = ns.Dropout(0.01, rngs=rngs)

        def __call__(self, x):
            x = self.drop(ns.leaky_relu(self.l1(x)))
            x = self.drop(ns.leaky_relu(self.l2(x)))
            return self.l3(x)

    return TitanicMLP(ns.Rngs(seed))


def deep_model(ns, seed=0, blocks=50, width=16):
    class Block(ns.Module):
        def __init__(self, rngs):
            self.linear = ns.Linear(width, width, rngs=rngs)
            self.bn = ns.BatchNorm(width, rngs=rngs)

        def __call__(self, x):
            return ns.relu(self.bn(self.linear(x)))

    class Deep(ns.Module):
        def __init__(self, rngs):
            self.blocks = ns.List([Block(rngs) for _ in range(blocks)])

        def __call__(self, x):
            for b in self.blocks:
                x = b(x)
            return x.mean(axis=-1)

    return Deep(ns.Rngs(seed))


def bce(logits, y):
    return optax.sigmoid_binary_cross_entropy(logits, y).mean()


# -- nnx-style steps (nnxlike and flax.nnx share the source) ----------------------


def make_nnx_steps(ns, kind):
    def train(model, optimizer, x, y):
        def loss_fn(model):
            out = model(x)
            return bce(out[:, 0] if out.ndim == 2 else out, y)

        loss, grads = ns.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def empty(model, optimizer, x, y):
        return None

    return ns.jit(train if kind == "train" else empty)


# -- plain JAX reference steps -----------------------------------------------------


def plain_titanic(params, key, tx):
    def fwd(p, x, keys):
        k1, k2 = keys

        def drop(h, k):
            mask = jax.random.bernoulli(k, 0.99, h.shape)
            return jnp.where(mask, h / 0.99, 0.0)

        h = drop(jax.nn.leaky_relu(x @ p["l1"]["kernel"] + p["l1"]["bias"]), k1)
        h = drop(jax.nn.leaky_relu(h @ p["l2"]["kernel"] + p["l2"]["bias"]), k2)
        return h @ p["l3"]["kernel"] + p["l3"]["bias"]

    @jax.jit
    def step(p, opt_state, key, count, x, y):
        # Two dropout keys drawn as an nnx Rngs stream draws them (fold_in of a
        # counter that advances by one per draw): the same computation as the
        # nnx step, not a cheaper one.
        keys = (jax.random.fold_in(key, count), jax.random.fold_in(key, count + 1))
        loss, g = jax.value_and_grad(lambda p: bce(fwd(p, x, keys)[:, 0], y))(p)
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, count + 2, loss

    return step


def plain_deep(tx, kind):
    def fwd(p, stats, x):
        new_stats = []
        for blk, st in zip(p, stats):
            h = x @ blk["kernel"] + blk["bias"]
            mean = h.mean(0)
            var = h.var(0)
            new_stats.append(
                {
                    "mean": 0.99 * st["mean"] + 0.01 * mean,
                    "var": 0.99 * st["var"] + 0.01 * var,
                }
            )
            h = (h - mean) / jnp.sqrt(var + 1e-5) * blk["scale"] + blk["bn_bias"]
            x = jax.nn.relu(h)
        return x.mean(-1), new_stats

    @jax.jit
    def train(p, stats, opt_state, x, y):
        def loss_fn(p):
            out, new_stats = fwd(p, stats, x)
            return bce(out, y), new_stats

        (loss, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), new_stats, opt_state, loss

    @jax.jit
    def empty(p, stats, opt_state, x, y):
        return p, stats, opt_state, None

    return train if kind == "train" else empty


# -- timing ---------------------------------------------------------------------


def time_calls(fn, calls):
    fn()  # warm (compiled already; keeps caches hot)
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def build_variants(model_name, kind):
    """Return {name: (call, first_call_seconds)} for one model/kind."""
    variants = {}
    x = jax.random.normal(jax.random.key(0), (64, 8 if model_name == "titanic" else 16))
    y = (x[:, 0] > 0).astype(jnp.float32)
    tx = optax.adam(0.01)

    # plain JAX
    ref_model = (titanic_model if model_name == "titanic" else deep_model)(nnx)
    if model_name == "titanic":
        params = nnx.state(ref_model, nnx.Param).to_pure_dict()
        step = plain_titanic(params, jax.random.key(1), tx)
        st = {"p": params, "o": tx.init(params), "c": jnp.uint32(0)}
        key = jax.random.key(1)

        def plain():
            st["p"], st["o"], st["c"], loss = step(st["p"], st["o"], key, st["c"], x, y)
            return loss

        lowered = step.lower(st["p"], st["o"], key, st["c"], x, y)
    else:
        p = []
        stats = []
        for b in ref_model.blocks:
            p.append(
                {
                    "kernel": b.linear.kernel.value,
                    "bias": b.linear.bias.value,
                    "scale": b.bn.scale.value,
                    "bn_bias": b.bn.bias.value,
                }
            )
            stats.append({"mean": b.bn.mean.value, "var": b.bn.var.value})
        step = plain_deep(tx, kind)
        st = {"p": p, "s": stats, "o": tx.init(p)}

        def plain():
            st["p"], st["s"], st["o"], loss = step(st["p"], st["s"], st["o"], x, y)
            return loss if loss is not None else st["p"][0]["kernel"]

        lowered = step.lower(st["p"], st["s"], st["o"], x, y)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    variants["plain jax.jit"] = {
        "call": plain,
        "first_call_s": time.perf_counter() - t0,
        "temp_bytes": _temp_bytes(compiled),
    }

    # nnxlike and flax.nnx, same source
    namespaces = [("nnxlike nnx.jit", nnx)]
    if fnnx is not None:
        namespaces.append(("flax.nnx nnx.jit", fnnx))
    for name, ns in namespaces:
        model = (titanic_model if model_name == "titanic" else deep_model)(ns)
        optimizer = ns.Optimizer(model, tx, wrt=ns.Param)
        fn = make_nnx_steps(ns, kind)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(model, optimizer, x, y))
        first = time.perf_counter() - t0
        temp = None
        if ns is nnx:
            temp = _temp_bytes(fn.lower(model, optimizer, x, y).compile())

        def call(fn=fn, model=model, optimizer=optimizer):
            out = fn(model, optimizer, x, y)
            return out if out is not None else 0

        variants[name] = {"call": call, "first_call_s": first, "temp_bytes": temp}
        if ns is fnnx and hasattr(fnnx, "cached_partial"):
            model2 = (titanic_model if model_name == "titanic" else deep_model)(ns)
            opt2 = ns.Optimizer(model2, tx, wrt=ns.Param)
            cached = fnnx.cached_partial(fn, model2, opt2)
            jax.block_until_ready(cached(x, y))

            def call_cached(cached=cached):
                out = cached(x, y)
                return out if out is not None else 0

            variants["flax.nnx cached_partial"] = {
                "call": call_cached,
                "first_call_s": None,
                "temp_bytes": None,
            }
    return variants


def _temp_bytes(compiled):
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # backends without memory analysis
        return None


CASES = ("titanic/train", "deep/empty", "deep/train")


def run(repeats, calls, cases=CASES):
    results = {}
    for case in cases:
        model_name, kind = case.split("/")
        variants = build_variants(model_name, kind)
        times = {name: [] for name in variants}
        for _ in range(repeats):
            for name, v in variants.items():
                times[name].append(time_calls(v["call"], calls))
        base = statistics.median(times["plain jax.jit"])
        rows = {}
        for name, v in variants.items():
            med = statistics.median(times[name])
            rows[name] = {
                "us_per_call": med * 1e6,
                "ratio": med / base,
                "first_call_s": v["first_call_s"],
                "temp_bytes": v["temp_bytes"],
            }
        results[f"{model_name}/{kind}"] = rows
    return results


def print_table(results):
    print(f"backend: {jax.default_backend()}  devices: {jax.devices()}")
    print(
        f"{'case':16} {'variant':26} {'us/call':>9} {'ratio':>7} "
        f"{'first call s':>12} {'temp bytes':>11}"
    )
    for case, rows in results.items():
        for name, r in rows.items():
            first = "" if r["first_call_s"] is None else f"{r['first_call_s']:.2f}"
            temp = "" if r["temp_bytes"] is None else str(r["temp_bytes"])
            print(
                f"{case:16} {name:26} {r['us_per_call']:9.1f} {r['ratio']:7.3f} "
                f"{first:>12} {temp:>11}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument(
        "--cases", type=str, default=",".join(CASES), help="comma-separated subset"
    )
    args = parser.parse_args()
    cases = tuple(c for c in args.cases.split(",") if c)
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {CASES}")
    results = run(args.repeats, args.calls, cases)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
