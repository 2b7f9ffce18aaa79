"""Custom Inductor passes run on every compiled piece (``CompilationConfig.inductor_passes``).

- ``base``: the pass interface (:class:`InductorPass`) and how a pass is named and hashed;
- ``post_grad_hook``: the one post-grad pass Inductor runs, which runs Stitch's own passes, then the configured ones;
- ``own``: Stitch's own passes, run on every piece, and the part of every compile key they make;
- ``residual_addmm``: one of Stitch's own, keeping a piece's residual adds out of its GEMMs on CUDA;
- ``rms_norm``: a real pass, fusing an RMSNorm's ATen ops into ``stitch::rms_norm``.

Importing this package registers no op: ``rms_norm`` registers its op when it is imported.
"""

from .base import InductorPass, pass_name, pass_uuid

__all__ = ["InductorPass", "pass_name", "pass_uuid"]
