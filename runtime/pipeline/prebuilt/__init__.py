"""Prebuilt pieces: a compiled piece run from its saved Inductor wrapper and
built kernels, without Inductor (NOTE: [prebuilt pieces] in ``load.py``)."""
