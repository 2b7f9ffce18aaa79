"""Compile-worker processes, below the pipeline: how they are started.

It knows nothing of tiers, pieces or caches; the tiered start's pool
(``pipeline/tiered/spawned_pool.py``) uses it.
"""
