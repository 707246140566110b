"""Lifted JAX transforms (see README.md in this folder for the design)."""
