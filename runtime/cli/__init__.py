"""The ``stitch`` command (``main``): ``emit``, ``run``, ``inspect``, ``profile``,
``compile`` and ``cache``."""

from .main import main

__all__ = ["main"]
