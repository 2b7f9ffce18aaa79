"""Compile-worker processes, below the pipeline: how they start (a fork
server, NOTE: [a fork server for compile workers]) and how they share the
cores with the serving process (serving first, the compile's share, the
cores a worker runs on, a worker's family of processes).

It knows nothing of tiers, pieces or caches; the tiered start
(``pipeline/tiered/``) uses it, and the architecture test keeps every
import from here to the pipeline out.
"""
