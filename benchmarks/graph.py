"""Cost of split / merge / update per Variable, against flax.nnx when installed.

Run:  python benchmarks/graph.py [--repeats 7]

Models are chains of small Linear layers with 10, 100 and 1,000 Variables (two per
layer). Each figure is the median over repeats of the mean time per operation,
divided by the number of Variables; nnxlike and flax.nnx are measured in the same
process, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax  # noqa: E402

import nnxlike as nnx  # noqa: E402

try:
    from flax import nnx as fnnx  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - optional
    fnnx = None


def chain(ns, n_layers):
    class Chain(ns.Module):
        def __init__(self, rngs):
            self.layers = ns.List([ns.Linear(2, 2, rngs=rngs) for _ in range(n_layers)])

    return Chain(ns.Rngs(0))


def bench(fn, inner):
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    libs = [("nnxlike", nnx)] + ([("flax.nnx", fnnx)] if fnnx is not None else [])
    print(
        f"{'variables':>9} {'library':10} {'split us/var':>13} {'merge us/var':>13} "
        f"{'update us/var':>14}"
    )
    for n_vars in (10, 100, 1000):
        models = {name: chain(ns, n_vars // 2) for name, ns in libs}
        inner = max(5, 20000 // n_vars)
        times = {name: {"split": [], "merge": [], "update": []} for name, _ in libs}
        for _ in range(args.repeats):
            for name, ns in libs:
                m = models[name]
                gd, st = ns.split(m)
                # update from a copy: the State's leaves are the model's own
                # Variables (as in flax.nnx), so updating from them writes nothing
                st_copy = jax.tree.map(lambda x: x, st)
                ops = {
                    "split": lambda ns=ns, m=m: ns.split(m),
                    "merge": lambda ns=ns, gd=gd, st=st: ns.merge(gd, st),
                    "update": lambda ns=ns, m=m, st=st_copy: ns.update(m, st),
                }
                for op, fn in ops.items():
                    times[name][op].append(bench(fn, inner))
        for name, _ in libs:
            row = {
                k: statistics.median(v) / n_vars * 1e6 for k, v in times[name].items()
            }
            print(
                f"{n_vars:>9} {name:10} {row['split']:13.3f} {row['merge']:13.3f} "
                f"{row['update']:14.3f}"
            )


if __name__ == "__main__":
    main()
