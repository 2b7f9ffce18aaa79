"""``stitch check``: name the compiled piece that changed the numbers.

The check compiles a model as serving does, then runs each forward three
ways through the same stitching source (NOTE: [three runs of one forward],
recorder.py): on uncompiled pieces, on compiled pieces each beside its
uncompiled GraphModule, and, with CUDA graphs, on replayed graphs each beside
a direct call.  Its report (report.py) has a row per piece and names the
first piece beyond tolerance, its lines in the emitted source, whether the
difference arose inside it or came from earlier, and, with
``inductor_passes``, the pass that makes it (passes.py).
"""

from .compare import Difference
from .report import CheckReport, ForwardResult, PieceResult
from .run import Checker, Forward, check_model

__all__ = [
    "CheckReport",
    "Checker",
    "Difference",
    "Forward",
    "ForwardResult",
    "PieceResult",
    "check_model",
]
