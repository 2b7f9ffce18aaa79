"""Custom Inductor passes run on every compiled piece (``CompilationConfig.inductor_passes``).

- ``base``: the pass interface (:class:`InductorPass`) and how a pass is named and hashed;
- ``manager``: the one post-grad pass Inductor runs, which runs the configured passes in order;
- ``rms_norm``: a real pass, fusing an RMSNorm's ATen ops into ``stitch::rms_norm``.

Importing this package registers no op: ``rms_norm`` registers its op when it is imported.
"""

from .base import InductorPass, pass_name, pass_uuid

__all__ = ["InductorPass", "pass_name", "pass_uuid"]
