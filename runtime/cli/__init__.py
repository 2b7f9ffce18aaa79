"""The ``stitch`` command: ``emit``, ``run`` and ``inspect`` (``main``)."""

from .main import main

__all__ = ["main"]
