"""The one place the version number is written.

``pyproject.toml`` reads it for the package metadata (setuptools' dynamic
``version = {attr = ...}``, evaluated without importing nnxlike), and
``nnxlike.__version__`` re-exports it. Bump it here, together with a new
section in ``CHANGELOG.md``.
"""

__version__ = "0.1.0"
