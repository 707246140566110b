"""Test configuration: strict JAX semantics and the location of shared data."""

from __future__ import annotations

import os
from pathlib import Path

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

_TITANIC_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "titanic"
)
if _TITANIC_DIR.is_dir():
    os.environ.setdefault("NNXLIKE_TITANIC_DIR", str(_TITANIC_DIR))

# Fixture generators import torch (not a dependency); never collect them.
collect_ignore_glob = ["fixtures/*"]
